"""Few-shot classification (evaluation/fewshot.py): report counts on real SMS messages, the exact prompt,
shots drawn from the pool only, duplicates removed before the split, predictions that follow the logits;
the split and de-duplication are the classify recipe's (identical test texts on the whole SMS file); a
task object's round trip; and bad input as one-line errors raised before any model loads."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from scratchllm.core.options import from_mapping
from scratchllm.data.labelled import Examples, stratified_split
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.lm import evaluate, evaluate_fewshot
from scratchllm.evaluation.report import format_report
from scratchllm.evaluation.tasks import FewshotTask
from scratchllm.recipes.classify import prepare_splits
from scratchllm.recipes.config import ClassifyConfig
from tests.helpers import constant_logit_gpt, run_cli, tiny_gpt


@pytest.mark.parametrize("shots", [0, 1, 3, 5])
def test_fewshot_on_sms_reports_consistent_counts(tmp_path, capsys, sms_slice, gpt2_model_dir, shots):
    out = tmp_path / "fewshot.json"
    rc, stdout, _ = run_cli(capsys, "evaluate", "fewshot", "--model", gpt2_model_dir, "--data", sms_slice,
                            "--shots", shots, "--seed", 1, "--device", "cpu", "--out", out)
    assert rc == 0
    r = json.loads(out.read_text())
    rows = [line.split("\t") for line in sms_slice.read_text().splitlines()]
    matrix = r["confusion_matrix"]
    assert r["labels"] == ["ham", "spam"] and r["candidates"] == [" ham", " spam"]
    assert r["n"] + r["train_examples"] == len(rows) == 90
    assert sum(map(sum, matrix)) == r["n"] == len(r["predictions"])
    assert r["accuracy"] == (matrix[0][0] + matrix[1][1]) / r["n"] == r["correct"] / r["n"]
    assert [r["per_class"][c]["support"] for c in r["labels"]] == [sum(matrix[0]), sum(matrix[1])]
    n_spam = sum(1 for label, _ in rows if label == "spam")
    assert r["per_class"]["spam"]["support"] == n_spam - round(n_spam * 0.7)  # the stratified split
    assert r["truncated"] == sum(p["truncated"] for p in r["predictions"])
    assert sum(p["predicted"] == p["label"] for p in r["predictions"]) == r["correct"]
    first = r["first_example"]
    assert len(first["shots"]) == shots and first["prompt"].endswith(f"Message: {first['text']}\nLabel:")
    if shots == 0:
        assert r["truncated"] == 0 and first["prompt"] == f"Message: {first['text']}\nLabel:"
    if shots == 5:
        assert r["truncated"] > 0  # five SMS messages rarely fit a 64-token context
    assert stdout.startswith("fewshot: ") and "confusion (rows true, columns predicted)" in stdout


def test_fewshot_prompt_is_exact_and_shots_come_from_train(tmp_path, capsys, gpt2_tok):
    hours = ["one", "two", "three", "four", "five", "six", "seven", "eight"]  # words: "1" and "2" would be copies
    rows = [("ham", f"see you at {h} o'clock") for h in hours] + [("spam", f"WIN {k} hundred pounds") for k in hours[:6]]
    data = tmp_path / "small.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    model = tiny_gpt(gpt2_tok.vocab_size, context_length=128)
    r = evaluate_fewshot(model, data, 3, tokenizer=gpt2_tok, seed=7, template="SMS: {text}\nClass:")
    first = r["first_example"]
    expected = "".join(f"SMS: {s['text']}\nClass: {s['label']}\n\n" for s in first["shots"]) + \
        f"SMS: {first['text']}\nClass:"
    assert first["prompt"] == expected and not first["truncated"]
    assert first["prompt_tokens"] == len(gpt2_tok.encode(expected))
    train, test = stratified_split(Examples([t for _, t in rows], [label for label, _ in rows]), (0.7, 0.3), 7)
    train_texts = set(train.texts)
    assert all(s["text"] in train_texts for s in first["shots"]) and first["text"] not in train_texts
    assert first["text"] == test.texts[0]
    again = evaluate_fewshot(model, data, 3, tokenizer=gpt2_tok, seed=7, template="SMS: {text}\nClass:")
    assert again["predictions"] == r["predictions"]  # seeded: the same shots, the same scores


@pytest.mark.parametrize("keep", [False, True])
def test_fewshot_removes_duplicates_before_splitting(tmp_path, gpt2_tok, keep):
    places = ["station", "pub", "gym", "office", "library", "park", "cinema", "shop"]
    rows = [("ham", f"see you at the {p}") for p in places]
    rows += [("spam", f"WIN {n} hundred pounds") for n in ["one", "two", "three", "four", "five", "six"]]
    rows += [("spam", "WIN 500 pounds"), ("spam", "win 600 POUNDS!")]  # copies once numbers are masked
    rows += [("ham", "See you at the station!"), ("ham", "SEE YOU AT THE PUB"), ("spam", "see you at the station")]
    data = tmp_path / "d.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    model = tiny_gpt(gpt2_tok.vocab_size)
    r = evaluate_fewshot(model, data, 1, tokenizer=gpt2_tok, keep_duplicates=keep)
    assert r["n"] + r["train_examples"] == (19 if keep else 14)  # "see you at the station" is ham and spam: all 3 go
    assert r["duplicates"] == ({"kept": True} if keep else {"kept": False, "repeated": 2, "conflicting": 3,
                                                            "conflicting_texts": 1, "held_out": 0, "near": 0, "removed": 5})
    assert ("duplicates removed  none (kept)" if keep else "duplicates removed  5") in format_report(r)
    # with a separate pool of shots, the pool loses what is in the test data
    pool = tmp_path / "pool.tsv"
    pool.write_text("ham\tsee you at the gym\nham\tsomething else\nspam\tWIN five hundred POUNDS!\nspam\tcall now\n",
                    encoding="utf-8")
    r = evaluate_fewshot(model, data, 1, tokenizer=gpt2_tok, train_data=pool, keep_duplicates=keep)
    assert r["train_examples"] == (4 if keep else 2) and r["n"] == 19


def test_fewshot_predicts_the_label_the_logits_favour(tmp_path, gpt2_tok, sms_slice):
    logits = torch.zeros(gpt2_tok.vocab_size)
    logits[gpt2_tok.encode(" spam")] = 4.0  # " spam" is one token; the context cannot change it
    model = constant_logit_gpt(gpt2_tok.vocab_size, logits, context_length=64)
    r = evaluate_fewshot(model, sms_slice, 1, tokenizer=gpt2_tok, labels=["ham", "spam"])
    spam = r["per_class"]["spam"]
    assert all(p["predicted"] == "spam" for p in r["predictions"])
    assert spam["recall"] == 1.0 and r["accuracy"] == spam["support"] / r["n"] == spam["precision"]
    assert r["per_class"]["ham"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": r["n"] - spam["support"]}
    assert r["predictions"][0]["logprobs"]["spam"] == pytest.approx(
        float(torch.log_softmax(logits, -1)[gpt2_tok.encode(" spam")[0]]), abs=1e-4)


# --------------------------------------------------------------------------------------------------
# The classify recipe's cut: the same settings test on the same texts


@pytest.mark.parametrize("keep", [False, True])
def test_fewshot_tests_on_the_texts_finetune_classify_tests_on(shared_data, gpt2_model_dir, keep):
    sms = str(shared_data / "sms_spam_collection.tsv")
    splits = prepare_splits(ClassifyConfig(data=sms, keep_duplicates=keep, progress=False))  # 70/10/20, undersampled, seed 123
    task = FewshotTask(data=sms, shots=1, seed=123, train_fraction=0.7, val_fraction=0.1, balance="undersample",
                       keep_duplicates=keep)
    r = evaluate(task, gpt2_model_dir, device="cpu", batch_size=16)
    assert [p["text"] for p in r["predictions"]] == splits.test.texts  # the same held-out texts, in the same order
    assert [p["label"] for p in r["predictions"]] == splits.test.labels
    assert r["n"] == len(splits.test) == (298 if keep else 196) and r["train_examples"] == len(splits.train)
    assert {s["text"] for s in r["first_example"]["shots"]} <= set(splits.train.texts)
    if keep:
        assert r["duplicates"] == {"kept": True}
    else:
        assert r["duplicates"]["removed"] == splits.duplicates["removed"] == 602
        assert r["duplicates"]["repeated"] == splits.duplicates["repeated"] == 488
    assert r["split"] == "stratified 0.7/0.1/0.2 (seed 123), undersampled"


# --------------------------------------------------------------------------------------------------
# The task as an object


def test_a_task_object_round_trips_and_runs_as_the_keyword_form(tmp_path, sms_slice, gpt2_tok):
    task = FewshotTask(data=sms_slice, shots=2, seed=3, labels=("ham", "spam"), limit=12, template="SMS: {text}\\nIs:")
    assert task.data == str(sms_slice) and task.labels == ["ham", "spam"] and task.template == "SMS: {text}\nIs:"
    # as JSON (a run file, a saved report) and back: the same task
    again = from_mapping(FewshotTask, json.loads(json.dumps(asdict(task))), "task.json", "fewshot task")
    assert again == task
    assert FewshotTask(data=str(sms_slice), shots=2, seed=3, labels="ham, spam", limit=12,
                       template="SMS: {text}\nIs:") == task  # the command line's comma-separated labels
    model = tiny_gpt(gpt2_tok.vocab_size, seed=1)
    r = evaluate(task, model, tokenizer=gpt2_tok, batch_size=5)
    keyword = evaluate_fewshot(model, sms_slice, 2, tokenizer=gpt2_tok, seed=3, labels=["ham", "spam"], limit=12,
                               template="SMS: {text}\nIs:")
    assert r["predictions"] == keyword["predictions"] and r["accuracy"] == keyword["accuracy"]
    assert (r["task"], r["shots"], r["seed"], r["n"], r["labels"], r["template"]) == \
        ("fewshot", 2, 3, 12, ["ham", "spam"], "SMS: {text}\nIs:")
    assert r["first_example"]["prompt"].endswith(f"SMS: {r['first_example']['text']}\nIs:")
    # batching changes no score
    one = evaluate(task, model, tokenizer=gpt2_tok, batch_size=1)
    for a, b in zip(r["predictions"], one["predictions"]):
        assert a["predicted"] == b["predicted"] and a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and what was expected, before a model is loaded


@pytest.mark.parametrize("content, fields, message", [
    ("ham\thi\nspam\tyo\nham\tok\n", {"labels": "ham,eggs"}, "{path} example 2: label 'spam' is not one of the labels ham, eggs"),
    ("", {}, "{path}: empty file (expected rows with a text and a label)"),
    ("ham\thi\nham\tyo\n", {}, "{path}: only one class ('ham') in the labels; classification needs at least two"),
    ("ham\thi\nspam\tyo\nham\tok\n", {"shots": 3}, "shots 3: the train split has only 2 examples"),
    ("ham\thi\nspam\tyo\nham\tok\n", {"labels": "ham,ham"}, "labels ['ham', 'ham']: expected at least two distinct non-empty labels"),
])
def test_bad_data_is_one_line_before_the_model_loads(tmp_path, content, fields, message):
    path = tmp_path / "d.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ScratchLLMError) as info:
        evaluate(FewshotTask(data=path, **fields), tmp_path / "no-such-model")  # the data fails first
    assert str(info.value) == message.format(path=path)


def test_a_test_label_the_pool_lacks_is_named(tmp_path):
    data, pool = tmp_path / "test.tsv", tmp_path / "pool.tsv"
    data.write_text("ham\thi\neggs\tyo\n", encoding="utf-8")
    pool.write_text("ham\tok\nspam\twin\n", encoding="utf-8")
    with pytest.raises(ScratchLLMError) as info:
        evaluate(FewshotTask(data=data, train_data=pool), tmp_path / "no-such-model")
    assert str(info.value) == f"{data}: label 'eggs' (example 2) does not occur in the training data (labels: ham, spam)"


@pytest.mark.parametrize("fields, message", [
    ({"template": "no slot"}, "template 'no slot': must contain {text} where the example text goes"),
    ({"shots": -1}, "shots -1: expected an integer >= 0"),
    ({"limit": 0}, "limit 0: expected at least 1"),
    ({"train_fraction": 0.7, "val_fraction": 0.3}, "train_fraction 0.7, val_fraction 0.3: expected train_fraction in "
     "(0, 1), val_fraction >= 0, and a sum below 1 (the rest is the test split)"),
    ({"balance": "weights"}, "fewshot task field 'balance' must be one of 'none', 'undersample', got 'weights'"),
    ({"shots": "3"}, "fewshot task field 'shots' must be int, got '3'"),
])
def test_bad_task_fields_are_one_line(fields, message):
    with pytest.raises(ScratchLLMError) as info:
        FewshotTask(data="sms.tsv", **fields)
    assert str(info.value) == message
