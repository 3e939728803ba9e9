"""Classification fine-tuning: data loading and splits (duplicates removed before splitting),
last-real-token pooling, early stopping, the recipe end to end through the CLI, save/load, resume, and
the one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.checkpoint.kinds import HEAD_FILE
from scratchllm.checkpoint.loader import load
from scratchllm.data.duplicates import copies_of, copy_groups
from scratchllm.data.labelled import label_names, load_labelled, load_sms_spam, stratified_split, undersample
from scratchllm.evaluation.metrics import classification_report
from scratchllm.models.classifier import Classifier, encode_texts, pad_batch
from scratchllm.recipes import classify as classify_recipe
from scratchllm.recipes.classify import (ClassificationTask, default_lr, default_min_lr, default_trainable,
                                         prepare_splits)
from scratchllm.recipes.config import ClassifyConfig
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import fit
from scratchllm.training.run_dir import RunDir
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sms(shared_data):
    return load_sms_spam(shared_data / "sms_spam_collection.tsv")


@pytest.fixture(scope="module")
def tokenizer(sms):
    return Tokenizer.train(sms.texts[:1500], 512)


def tiny_gpt(tokenizer, seed=0, context_length=64, emb_dim=32, n_layers=2) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=context_length, emb_dim=emb_dim, n_layers=n_layers,
                    n_heads=2)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_model(tiny_gpt(tokenizer), d, tokenizer)
    return d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread buys nothing and, on a busy machine, costs several x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# data


def test_sms_file_loads_headerless_as_label_text(sms, shared_data):
    assert len(sms) == 5574 and sms.counts() == {"ham": 4827, "spam": 747}
    assert (sms.labels[0], sms.texts[0][:20]) == ("ham", "Go until jurong poin")
    # The generic loader detects that the file has no header (the first field recurs as a label).
    auto = load_labelled(shared_data / "sms_spam_collection.tsv")
    assert auto.texts == sms.texts and auto.labels == sms.labels


def test_csv_with_header_quotes_and_jsonl_with_integer_labels(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('message,category\n"Hello, world",a\n"He said ""hi""\nthen left",b\nlast,a\n', encoding="utf-8")
    d = load_labelled(csv_file, text_column="message", label_column="category")
    assert d.texts == ["Hello, world", 'He said "hi"\nthen left', "last"] and d.labels == ["a", "b", "a"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,a\n\nbye,b,extra\n", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=r"bad.csv line 4: 3 comma-separated fields, expected 2$"):
        load_labelled(bad)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x", "label": 10}\n\n{"text": "y", "label": 2}\n', encoding="utf-8")
    d = load_labelled(jsonl)
    assert d.labels == ["10", "2"] and label_names(d.labels) == ["2", "10"]  # numeric order


def test_undersample_balances_with_a_seed(sms):
    b = undersample(sms, seed=123)
    assert b.counts() == {"ham": 747, "spam": 747}
    spam = [t for t, y in zip(sms.texts, sms.labels) if y == "spam"]
    assert [t for t, y in zip(b.texts, b.labels) if y == "spam"] == spam  # the minority class is kept whole
    assert undersample(sms, seed=123).texts == b.texts
    assert undersample(sms, seed=7).texts != b.texts


def test_stratified_split_proportions_and_seeding(sms):
    train, val, test = stratified_split(sms, (0.7, 0.1, 0.2), seed=123)
    # per class: round(0.7 n) / round(0.8 n) - round(0.7 n) / the rest
    assert train.counts() == {"ham": 3379, "spam": 523}
    assert val.counts() == {"ham": 483, "spam": 75}
    assert test.counts() == {"ham": 965, "spam": 149}
    pairs = lambda d: sorted(zip(d.texts, d.labels))
    assert sorted(pairs(train) + pairs(val) + pairs(test)) == pairs(sms)
    again = stratified_split(sms, (0.7, 0.1, 0.2), seed=123)
    assert [p.texts for p in again] == [train.texts, val.texts, test.texts]
    assert stratified_split(sms, (0.7, 0.1, 0.2), seed=124)[2].texts != test.texts


@pytest.mark.parametrize("keep, counts, overlaps", [
    # one example per group of copies (4,972: 488 spam), balanced, 70/10/20: nothing on two sides
    (False, (342, 48, 98), {"validation_in_train": 0, "test_in_train": 0, "test_in_validation": 0}),
    # the book's split of all 5,574 (747 spam): 41 of 150 validation and 64 of 298 test texts copy a training text
    (True, (523, 75, 149), {"validation_in_train": 41, "test_in_train": 64, "test_in_validation": 18}),
])
def test_prepare_splits_removes_duplicates_before_splitting(shared_data, keep, counts, overlaps, capsys):
    cfg = ClassifyConfig(data=str(shared_data / "sms_spam_collection.tsv"), keep_duplicates=keep, progress=False)
    train, val, test, duplicates = prepare_splits(cfg)
    assert [part.counts() for part in (train, val, test)] == [{"ham": n, "spam": n} for n in counts]
    assert sum(copies_of(val.texts + test.texts, train.texts)) == overlaps["validation_in_train"] + overlaps["test_in_train"]
    assert duplicates["overlap"] == overlaps and duplicates["kept"] is keep
    err = capsys.readouterr().err
    if keep:
        assert "duplicates: kept (--keep-duplicates); 602 of 5574 examples copy or nearly copy an earlier text" in err
        assert duplicates["repeats"] == 602
        assert ("warning: texts on two sides of the split (copies or near-copies): 41 of 150 validation and 64 of "
                "298 test") in err
    else:
        assert duplicates["removed"] == 602 and duplicates["repeated"] == 488 and duplicates["near"] == 114
        assert duplicates["conflicting"] == 0
        assert ("duplicates: removed 602 of 5574 examples (488 repeats and 114 near-copies of an earlier text: "
                "numbers, codes and web addresses masked, near-copies 90% alike word for word; 0 copies") in err


def test_training_texts_in_a_given_test_file_are_dropped(tmp_path, capsys):
    data = tmp_path / "d.tsv"
    words = "one two three four five six seven eight nine ten".split()  # not numbers: "text 1" and "text 2" are copies
    rows = [("a", f"text {w}") for w in words] + [("b", f"other {w}") for w in words]
    rows += [("a", "Text three!"), ("b", "x"), ("a", "x")]  # a repeat; a text with two labels
    data.write_text("".join(f"{y}\t{t}\n" for y, t in rows), encoding="utf-8")
    test = tmp_path / "t.tsv"
    test.write_text("a\ttext two\nb\tOTHER three\nb\tnew\n", encoding="utf-8")
    train, val, given, duplicates = prepare_splits(ClassifyConfig(data=str(data), test=str(test), split=(0.8, 0.2, 0.0),
                                                                  balance="none", header=False, progress=False))
    assert given.texts == ["text two", "OTHER three", "new"]  # a given file stays as it is
    assert sorted(train.texts + val.texts) == sorted({f"text {w}" for w in words} - {"text two"}
                                                     | {f"other {w}" for w in words} - {"other three"})
    assert {k: duplicates[k] for k in ("repeated", "conflicting", "conflicting_texts", "held_out", "removed")} == \
        {"repeated": 1, "conflicting": 2, "conflicting_texts": 1, "held_out": 2, "removed": 5}
    assert "duplicates: removed 5 of 23 examples (1 repeats and 0 near-copies of an earlier text: numbers, codes and web " \
        "addresses masked, near-copies 90% alike word for word; 2 copies of 1 texts with conflicting labels, 2 whose " \
        "text is in --val/--test); 18 left" in capsys.readouterr().err


def test_sms_download_extracts_and_checks_sha256(tmp_path, monkeypatch):
    content = b"ham\tsee you soon\nspam\tWIN a prize now\nham\tok\n"
    archive = tmp_path / "sms.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SMSSpamCollection", content)
        zf.writestr("readme", "about")
    zip_sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    url = archive.as_uri()
    with pytest.raises(ScratchLLMError, match="SHA-256 is"):
        load_sms_spam(url=url, zip_sha256="0" * 64, sha256=hashlib.sha256(content).hexdigest(), progress=False)
    assert not (tmp_path / "cache" / "sms_spam" / "SMSSpamCollection").exists()
    with pytest.raises(ScratchLLMError, match="SMSSpamCollection has SHA-256"):
        load_sms_spam(url=url, zip_sha256=zip_sha, sha256="0" * 64, progress=False)
    assert not (tmp_path / "cache" / "sms_spam" / "SMSSpamCollection").exists()
    d = load_sms_spam(url=url, zip_sha256=zip_sha, sha256=hashlib.sha256(content).hexdigest(), progress=False)
    assert d.labels == ["ham", "spam", "ham"] and d.texts[1] == "WIN a prize now"
    archive.unlink()  # cached now: no second download
    assert load_sms_spam(url=url, zip_sha256=zip_sha, progress=False).texts == d.texts


def test_long_texts_are_truncated_with_a_count(tokenizer, capsys):
    texts = ["a " * 100, "short", "b " * 30, ""]
    ids = encode_texts(tokenizer, texts, 16, "train split")
    full = tokenizer.encode_batch(texts)
    n_long = sum(len(x) > 16 for x in full)
    assert n_long == 2
    assert [len(x) for x in ids] == [16, len(full[1]), 16, 1]  # an empty text is <|endoftext|> alone
    assert ids[3] == [tokenizer.eot_id]
    assert f"warning: train split: truncated 2 of 4 texts to 16 tokens (longest had {max(map(len, full))})" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# pooling and padding


def test_last_pooling_reads_the_last_real_token():
    body = GPT(GPTConfig(vocab_size=10, context_length=8, emb_dim=4, n_layers=1, n_heads=1))
    clf = Classifier(body, ["a", "b"])
    h = torch.arange(2 * 5 * 4, dtype=torch.float32).view(2, 5, 4)  # (B, T, C)
    lengths = torch.tensor([3, 5])
    assert torch.equal(clf.pool(h, lengths), torch.stack([h[0, 2], h[1, 4]]))
    clf.pooling = "mean"
    assert torch.allclose(clf.pool(h, lengths), torch.stack([h[0, :3].mean(0), h[1].mean(0)]))
    clf.pooling = "first"
    assert torch.equal(clf.pool(h, lengths), h[:, 0])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_prediction_is_the_same_whatever_the_padding(tokenizer, pooling):
    clf = Classifier(tiny_gpt(tokenizer), ["ham", "spam"], pooling, tokenizer).eval()
    torch.nn.init.normal_(clf.head.weight, std=1.0)  # a head that reacts strongly to the hidden state
    text = "Are you free for lunch tomorrow?"
    ids = tokenizer.encode(text)
    alone = clf(*pad_batch([ids], tokenizer.eot_id))
    long = tokenizer.encode("URGENT! You have won a 1 week FREE membership in our prize jackpot, txt now")
    assert len(long) > len(ids) + 10
    batched = clf(*pad_batch([ids, long], tokenizer.eot_id))[0]
    torch.testing.assert_close(batched, alone[0], atol=1e-5, rtol=0)
    # whatever the padding tokens are: the head never reads them
    idx, lengths = pad_batch([ids, long], tokenizer.eot_id)
    idx[0, len(ids):] = torch.randint(0, tokenizer.vocab_size, (idx.shape[1] - len(ids),))
    torch.testing.assert_close(clf(idx, lengths)[0], alone[0], atol=1e-5, rtol=0)
    # predict() batches by length; the result for a text does not depend on its batch mates
    p_alone = clf.predict([text])[0]
    p_mixed = clf.predict(["hi", text, "x " * 50, "Free entry in 2 a wkly comp"], batch_size=4)[1]
    assert p_mixed.label == p_alone.label
    assert abs(p_mixed.probability - p_alone.probability) < 1e-5


def test_the_book_pooling_would_read_padding(tokenizer):
    """Why last-real-token pooling matters: reading position -1 (the book's choice with padded
    batches) gives a different answer for a padded text."""
    clf = Classifier(tiny_gpt(tokenizer), ["ham", "spam"], "last", tokenizer).eval()
    ids = tokenizer.encode("see you later")
    idx, lengths = pad_batch([ids, ids + [1] * 10], tokenizer.eot_id)
    h = clf.body.hidden_states(idx)
    assert not torch.allclose(h[0, -1], h[0, len(ids) - 1], atol=1e-3)
    torch.testing.assert_close(clf.pool(h, lengths)[0], h[0, len(ids) - 1])


def test_auxiliary_lm_loss_counts_real_next_tokens_only(tokenizer):
    clf = Classifier(tiny_gpt(tokenizer), ["ham", "spam"], "last", tokenizer).eval()
    a, b = tokenizer.encode("see you at five then"), tokenizer.encode("FREE entry: win a prize, txt WIN to 80086 now")
    idx, lengths = pad_batch([a, b], tokenizer.eot_id)
    logits, lm = clf(idx, lengths, lm_loss=True)
    torch.testing.assert_close(logits, clf(idx, lengths))
    # the mean over the (len - 1) real next-token targets of both texts, each scored alone
    sums = [clf.body.loss(torch.tensor([x[:-1]]), torch.tensor([x[1:]])) * (len(x) - 1) for x in (a, b)]
    torch.testing.assert_close(lm, sum(sums) / (len(a) + len(b) - 2), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# model files


@pytest.mark.parametrize("trainable", ["last-block", "lora"])
def test_save_load_round_trip_predicts_identically(tokenizer, tmp_path, trainable):
    clf = Classifier(tiny_gpt(tokenizer), ["ham", "spam", "other"], "last", tokenizer, max_length=16)
    n_train, n_total = clf.set_trainable(trainable)
    with torch.no_grad():  # move away from the initial weights, as training would
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    texts = ["Call now to claim your prize", "where are you?", "ok", "a much longer text " * 5]
    before = clf.eval().predict(texts)
    save_model(clf, tmp_path / "clf")
    back = load(tmp_path / "clf", kind="classifier")[0]
    after = back.predict(texts)
    assert [p.label for p in after] == [p.label for p in before]
    for a, b in zip(after, before):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert (back.labels, back.pooling, back.max_length) == (["ham", "spam", "other"], "last", 16)
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["kind"] == "classifier" and config["labels"] == ["ham", "spam", "other"]
    from safetensors.torch import load_file

    body = load_file(tmp_path / "clf" / "model.safetensors")
    own = load_file(tmp_path / "clf" / HEAD_FILE)
    assert not any(".lora_" in k for k in body)  # the body on disk is a plain GPT (adapters merged)
    if trainable == "last-block":
        # last block (2 norms + qkv + proj + fc + mlp.proj), final norm, head (3 x 32 + 3)
        assert n_train == 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32) + 64 + 99
        assert sorted(own) == ["head.bias", "head.weight"]
    else:
        # LoRA r=8 on the 4 linear layers of 2 blocks, r * (in + out) each, plus the head
        assert n_train == 2 * 8 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)) + 99
        assert len(own) == 2 + 2 * 4 * 2  # head + unmerged A and B of 8 layers, for exact resume
    adapters = n_train - 99 if trainable == "lora" else 0
    assert n_total == sum(p.numel() for p in back.parameters()) + adapters


def test_metrics_per_class_and_confusion_matrix():
    m = classification_report(list("aaabbc"), list("aabbcc"), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6) and m["correct"] == 4 and m["n"] == 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["c"]["precision"] == 0.5


def test_task_resumes_its_batch_order(tokenizer):
    ids = [[i + 1] * (1 + i % 5) for i in range(10)]
    task = ClassificationTask(ids, [i % 2 for i in range(10)], ids[:2], [0, 1], batch_size=4, pad_id=0, seed=3)
    assert task.steps_per_epoch == 3
    first = [task.next_batch() for _ in range(4)]
    seen = sorted(int(x[0, 0]) for b in first[:3] for x in b[0].split(1))
    assert seen == list(range(1, 11))  # one epoch = every example once
    state = json.loads(json.dumps(task.state_dict()))
    fresh = ClassificationTask(ids, [i % 2 for i in range(10)], ids[:2], [0, 1], batch_size=4, pad_id=0, seed=3)
    fresh.load_state_dict(state)
    for _ in range(4):
        a, b = task.next_batch(), fresh.next_batch()
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# early stopping and the default learning rate


class ScriptedTask(ClassificationTask):
    """A classification task whose validation loss per evaluation (epoch 0, 1, ...) is given."""

    def __init__(self, losses, **kwargs):
        super().__init__(**kwargs)
        self.losses = losses

    def evaluate(self, model):
        row = super().evaluate(model)
        row["val_loss"] = self.history[-1]["val_loss"] = self.losses[len(self.history) - 1]
        return row


VAL_LOSSES = [0.7, 0.5, 0.4, 0.45, 0.42, 0.38, 0.5, 0.6, 0.7]  # epochs 0-8: lowest at 2, then at 5


@pytest.mark.parametrize("patience, last_epoch, kept_epoch, stopped", [
    (1, 3, 2, "patience"),  # epoch 3 is no lower than epoch 2's 0.4
    (2, 4, 2, "patience"),  # epochs 3 and 4 are not
    (3, 8, 5, "max_steps"),  # epoch 5 is; 6, 7, 8 are not, but 8 is the last anyway
    (0, 8, 8, "max_steps"),  # no early stopping: final/ is the last epoch
])
def test_early_stopping_on_validation_loss(tokenizer, tmp_path, monkeypatch, patience, last_epoch, kept_epoch, stopped):
    monkeypatch.setattr(RunDir, "plot", lambda self, rows=None: None)  # loss.png after each epoch: seconds each here
    ids = [[i % 7 + 1] * (1 + i % 3) for i in range(12)]
    data = {"train_ids": ids, "train_targets": [i % 2 for i in range(12)], "val_ids": ids[:4], "val_targets": [0, 1, 0, 1]}
    task = ScriptedTask(VAL_LOSSES, batch_size=4, pad_id=0, seed=1, **data)
    model = Classifier(tiny_gpt(tokenizer), ["a", "b"], "last", tokenizer).train()
    cfg = TrainConfig(max_steps=8 * 3, eval_every=3, patience=patience, lr=1e-2, min_lr=1e-2, warmup_steps=0,
                      save_every=0, log_every=100, device="cpu", progress=False)
    summary = fit(model, task, cfg, tmp_path / "run")
    assert [r["epoch"] for r in task.history] == list(range(last_epoch + 1))
    assert (summary["steps"], summary["stopped"]) == (3 * last_epoch, stopped)
    from safetensors.torch import load_file

    final = load_file(tmp_path / "run" / "final" / HEAD_FILE)
    last = load_file(tmp_path / "run" / "checkpoints" / f"step-{3 * last_epoch:07d}" / HEAD_FILE)
    best = load_file(tmp_path / "run" / "best" / HEAD_FILE)
    kept = best if kept_epoch != last_epoch else last
    assert all(torch.equal(final[k], kept[k]) for k in final)  # in memory too: the recipe tests the kept model
    assert all(torch.equal(model.state_dict()[k], kept[k]) for k in final)
    assert (kept_epoch == last_epoch) == all(torch.equal(final[k], last[k]) for k in final)
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["training"]["epoch"] == kept_epoch


@pytest.mark.parametrize("width, lr, trainable, min_lr", [(768, 5e-5, "last-block", 5e-5), (1600, 2.4e-5, "last-block", 2.4e-5),
                                                         (767, 5e-5 * 768 / 767, "all", 5e-6 * 768 / 767),
                                                         (128, 3e-4, "all", 3e-5)])
def test_defaults_are_the_books_at_gpt2_width(width, lr, trainable, min_lr):
    # the book's recipe from GPT-2 small's width up (last block, constant 5e-5 at 768, inversely with the
    # width); narrower models train every weight, the rate decaying to a tenth
    assert default_lr(width) == pytest.approx(lr) and default_trainable(width) == trainable
    assert default_min_lr(width, default_lr(width)) == pytest.approx(min_lr)
    assert default_min_lr(width, 1e-3) == pytest.approx(1e-3 if width >= 768 else 1e-4)  # of the lr given


# --------------------------------------------------------------------------------------------------
# the recipe, end to end through the CLI


@pytest.fixture(scope="module")
def small_sms(sms, tmp_path_factory):
    """300 balanced distinct messages (the first 150 of each class, no two copies or near-copies) as a
    headerless label<TAB>text file."""
    groups = copy_groups(sms.texts)
    first = [(y, t) for i, (y, t) in enumerate(zip(sms.labels, sms.texts)) if groups[i] == i]
    rows = [row for row in first if row[0] == "ham"][:150] + [row for row in first if row[0] == "spam"][:150]
    path = tmp_path_factory.mktemp("sms") / "small.tsv"
    path.write_text("".join(f"{y}\t{t}\n" for y, t in rows), encoding="utf-8")
    return path


# --min-lr = --lr: a constant rate, so that --resume to more epochs continues exactly (the schedule does not
# depend on the number of epochs)
TRAIN_ARGS = ["--trainable", "all", "--lr", "1e-3", "--min-lr", "1e-3", "--batch-size", "16", "--device", "cpu",
              "--seed", "1"]


@pytest.fixture(scope="module")
def trained(tiny_dir, small_sms, tmp_path_factory):
    """4 epochs of 14 steps (about 3 s of training on one core)."""
    out = tmp_path_factory.mktemp("run") / "classify"
    code = main(["finetune", "classify", "--model", str(tiny_dir), "--data", str(small_sms), "--out", str(out),
                 "--epochs", "4", *TRAIN_ARGS])
    assert code == 0
    return out


def test_pipeline_learns_on_a_small_slice(trained):
    report = json.loads((trained / "metrics.json").read_text())
    assert report["counts"] == {"train": {"ham": 105, "spam": 105}, "validation": {"ham": 15, "spam": 15},
                                "test": {"ham": 30, "spam": 30}}
    # A 2-layer, 32-wide model from random weights and a 512-token BPE: the majority class is 50%.
    assert report["test"]["accuracy"] >= 0.80, report["test"]
    assert report["duplicates"]["removed"] == 0 and report["lr"] == 1e-3
    epochs = [r["epoch"] for r in report["epochs"]]
    assert epochs[0] == 0 and epochs[-1] <= 4 and report["epochs"][-1]["train_accuracy"] >= 0.9
    assert set(report["test"]["per_class"]) == {"ham", "spam"}
    assert sum(map(sum, report["test"]["confusion_matrix"])) == 60
    best = min(report["epochs"][1:], key=lambda r: r["val_loss"])  # the earliest of equals
    assert (report["best"]["epoch"], report["best"]["val_loss"]) == (best["epoch"], best["val_loss"])
    assert report["final_epoch"] == best["epoch"]  # with patience (default 2) final/ holds best/'s weights
    assert report["stopped"] == ("max_steps" if epochs[-1] == 4 else "patience")
    for name in ("classify-loss.png", "classify-accuracy.png", "loss.png", "metrics.jsonl", "final/classifier.safetensors",
                 "best/classifier.safetensors"):
        assert (trained / name).is_file(), name


@pytest.mark.parametrize("flags, message, counts", [
    ([], ("duplicates: removed 7 of 86 examples (5 repeats and 0 near-copies of an earlier text: numbers, codes and "
          "web addresses masked, near-copies 90% alike word for word; 2 copies of 1 texts with conflicting labels); "
          "79 left (--keep-duplicates keeps them)"), 39),
    (["--keep-duplicates"], ("duplicates: kept (--keep-duplicates); 6 of 86 examples copy or nearly copy an earlier "
                             "text (numbers, codes and web addresses masked, near-copies 90% alike word for word)"),
     41),  # 45 ham, 41 spam
])
def test_cli_removes_duplicates_unless_kept(tiny_dir, small_sms, tmp_path, monkeypatch, capsys, flags, message, counts):
    monkeypatch.setattr(RunDir, "plot", lambda self, rows=None: None)  # the plots are not what this checks
    monkeypatch.setattr(classify_recipe, "plot_epochs", lambda history, out: [])
    rows = [line.split("\t", 1) for line in small_sms.read_text(encoding="utf-8").splitlines()]
    rows = rows[:40] + rows[150:190]  # 40 ham, 40 spam, all distinct
    rows += [(y, t.upper() + " !!") for y, t in rows[1:6]]  # 5 copies, as the normalisation sees them
    rows += [("spam", rows[0][1])]  # the first text again, labelled spam: both copies go
    data = tmp_path / "dups.tsv"
    data.write_text("".join(f"{y}\t{t}\n" for y, t in rows), encoding="utf-8")
    code, _out, err = run_cli(["finetune", "classify", "--model", tiny_dir, "--data", data, "--out", tmp_path / "run",
                               "--epochs", "1", "--split", "0.5", "0.25", "0.25", *TRAIN_ARGS, *flags], capsys)
    assert code == 0 and message in err
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["validation"].values()) \
        + sum(report["counts"]["test"].values()) == 2 * counts
    assert report["duplicates"]["kept"] == bool(flags) and report["duplicates"]["examples"] == 86
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())["classification"]
    assert saved["keep_duplicates"] == bool(flags) and saved["duplicates"] == report["duplicates"]


@pytest.mark.parametrize("width, lr, min_lr, trainable, header", [
    (32, 1.2e-3, 1.2e-4, "all",
     ["lr: 0.0012 = 5e-05 x 768 / width 32 (--lr sets it)",
      "min_lr: 0.00012, cosine decay from lr (the default at width 32: constant from 768 up, else lr / 10; --min-lr sets it)",
      "trainable: all (the default at width 32: last-block from 768 up, else all; --trainable sets it)"]),
    (768, 5e-5, 5e-5, "last-block",
     ["lr: 5e-05 = 5e-05 x 768 / width 768 (--lr sets it)",
      "min_lr: 5e-05, constant (the default at width 768: constant from 768 up, else lr / 10; --min-lr sets it)",
      "trainable: last-block (the default at width 768: last-block from 768 up, else all; --trainable sets it)"]),
])
def test_defaults_resolve_from_the_width(tokenizer, small_sms, tmp_path, monkeypatch, capsys, width, lr, min_lr,
                                          trainable, header):
    """With no --lr, --min-lr or --trainable: the book's recipe at GPT-2 small's width (last block, a constant
    5e-5), all weights and a decaying rate below it; said in the run header and recorded."""
    monkeypatch.setattr(RunDir, "plot", lambda self, rows=None: None)
    monkeypatch.setattr(classify_recipe, "plot_epochs", lambda history, out: [])
    model = tmp_path / "model"
    save_model(tiny_gpt(tokenizer, emb_dim=width, n_layers=2 if width < 768 else 1), model, tokenizer)
    rows = small_sms.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "few.tsv"
    data.write_text("".join(line + "\n" for line in rows[:24] + rows[150:174]), encoding="utf-8")
    code, _out, err = run_cli(["finetune", "classify", "--model", model, "--data", data, "--out", tmp_path / "run",
                               "--epochs", "2", "--split", "0.5", "0.25", "0.25", "--batch-size", "8",
                               "--max-length", "16", "--device", "cpu"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert all(line in lines for line in header), [line for line in lines if line.startswith(("lr", "min_lr", "trainable"))]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    for record in (report, saved["classification"]):
        assert record["trainable"] == trainable
        assert (record["lr"], record["min_lr"]) == (pytest.approx(lr), pytest.approx(min_lr))
    assert (saved["train"]["lr"], saved["train"]["min_lr"]) == (pytest.approx(lr), pytest.approx(min_lr))
    assert (report["trainable_parameters"] == report["parameters"]) == (trainable == "all")
    rates = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"lr"' in line]
    assert len(rates) >= 4 and rates[0] == pytest.approx(lr, rel=0.05)
    assert (rates[-1] < 0.5 * lr) == (min_lr < lr) and all(r == pytest.approx(lr) for r in rates) == (min_lr == lr)


def test_help_shows_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--keep-duplicates" in out and "keep repeated texts (default: one example per text" in out
    assert "--patience PATIENCE stop after this many epochs without a lower validation loss" in out
    assert "default: 5e-5 x 768 / the model's width" in out


def test_classify_verb_text_and_jsonl(trained, tmp_path, capsys):
    texts = ["WINNER!! Claim your FREE prize now, call 09061701461", "I'll be home late tonight, save me dinner"]
    expected = load(trained, kind="classifier")[0].predict(texts)
    code, out, _ = run_cli(["classify", "--model", trained, "--text", texts[0], "--text", texts[1]], capsys)
    assert code == 0
    assert out.splitlines() == [f"{p.label}\t{p.probability:.4f}" for p in expected]
    src = tmp_path / "in.txt"
    src.write_text(texts[0] + "\n\n" + texts[1] + "\n", encoding="utf-8")
    code, out, _ = run_cli(["classify", "--model", trained, "--input", src], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert [r["probability"] for r in rows] == pytest.approx([p.probability for p in expected], abs=1e-6)
    code, out, _err = run_cli(["classify", "--model", trained, "--input", src, "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 0 and out == "" and [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()] == rows


def test_resume_continues_exactly(tiny_dir, small_sms, trained, tmp_path, capsys):
    """4 epochs in one go (the `trained` run), or 2 epochs then --resume to 4: the same classifier
    (constant lr; the batch order, running sums and history resume from the checkpoint)."""
    common = ["finetune", "classify", "--model", tiny_dir, "--data", small_sms, "--out", tmp_path / "b", *TRAIN_ARGS]
    assert run_cli([*common, "--epochs", "2"], capsys)[0] == 0
    assert run_cli([*common, "--epochs", "4", "--resume"], capsys)[0] == 0
    from safetensors.torch import load_file

    for file in ("model.safetensors", HEAD_FILE):
        a, b = load_file(trained / "final" / file), load_file(tmp_path / "b" / "final" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    ra, rb = (json.loads((d / "metrics.json").read_text()) for d in (trained, tmp_path / "b"))
    assert ra["epochs"] == rb["epochs"] and ra["test"] == rb["test"]


def test_resume_keeps_the_choices_of_a_run_from_before_the_width_defaults(tiny_dir, small_sms, tmp_path, monkeypatch,
                                                                         capsys):
    """A run started when --trainable defaulted to last-block and the rate to constant (run_config.json
    recording trainable 'last-block' and min_lr None), resumed with neither flag: it keeps last-block and
    the constant rate (its optimizer state holds the last block's weights only) and ends where an
    uninterrupted run with those settings ends."""
    monkeypatch.setattr(RunDir, "plot", lambda self, rows=None: None)
    monkeypatch.setattr(classify_recipe, "plot_epochs", lambda history, out: [])
    common = ["finetune", "classify", "--model", tiny_dir, "--data", small_sms, "--lr", "1e-3", "--batch-size", "16",
              "--device", "cpu", "--seed", "1"]
    old = ["--trainable", "last-block", "--min-lr", "1e-3"]
    assert run_cli([*common, *old, "--epochs", "2", "--out", tmp_path / "straight"], capsys)[0] == 0
    assert run_cli([*common, *old, "--epochs", "1", "--out", tmp_path / "old"], capsys)[0] == 0
    path = tmp_path / "old" / "run_config.json"
    saved = json.loads(path.read_text())
    saved["classification"]["min_lr"] = None  # as written before min_lr was resolved from the width
    path.write_text(json.dumps(saved))
    code, _out, err = run_cli([*common, "--trainable", "all", "--epochs", "2", "--resume", "--out", tmp_path / "old"],
                              capsys)
    assert code == 2 and err.splitlines()[-1] == (
        f"scratchllm finetune: error: --trainable all: the run in {tmp_path / 'old'} trained last-block, and its "
        "optimizer state fits only those weights; resume with --trainable last-block (or leave it out), or start a "
        "new --out")
    code, _out, err = run_cli([*common, "--epochs", "2", "--resume", "--out", tmp_path / "old"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert "trainable: last-block (as the resumed run chose; --trainable sets it)" in lines
    assert "min_lr: 0.001, constant (as the resumed run chose; --min-lr sets it)" in lines
    from safetensors.torch import load_file

    for file in ("model.safetensors", HEAD_FILE):
        a, b = load_file(tmp_path / "straight" / "final" / file), load_file(tmp_path / "old" / "final" / file)
        assert all(torch.equal(a[k], b[k]) for k in a), file
    assert json.loads((tmp_path / "old" / "metrics.json").read_text())["trainable"] == "last-block"


# --------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2


def _bad_cases(tmp_path: Path, small_sms: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    csv_file = tmp_path / "cols.csv"
    csv_file.write_text("message,category\nhello,a\nbye,b\nfoo,a\n", encoding="utf-8")
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"t{i}", "label": "ham"}) + "\n" for i in range(20)), encoding="utf-8")
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"text": "hello", "label": "eggs"}) + "\n", encoding="utf-8")
    return [
        (["--data", empty], f"{empty}: empty file (expected rows with a text and a label)"),
        (["--data", csv_file], (f"{csv_file}: no text column 'text'; columns found: 'message', 'category'; "
                               "use --text-column/--label-column (positions 0, 1, ... if the file has no header)")),
        (["--data", csv_file, "--text-column", "message"], (f"{csv_file}: no label column 'label'; columns found: "
                               "'message', 'category'; use --text-column/--label-column (positions 0, 1, ... if the file has no header)")),
        (["--data", one], f"{one}: only one class ('ham') in the labels; classification needs at least two"),
        (["--data", small_sms, "--test", test_file],
         f"{test_file}: label 'eggs' (example 1) does not occur in the training data (labels: ham, spam)"),
        (["--data", tmp_path / "missing.tsv"], f"{tmp_path / 'missing.tsv'}: no such file"),
    ]


def test_bad_inputs_give_one_line_errors(tiny_dir, small_sms, tmp_path, capsys):
    for extra, message in _bad_cases(tmp_path, small_sms):
        code, _out, err = run_cli(["finetune", "classify", "--model", tiny_dir, "--out", tmp_path / "run", *extra], capsys)
        assert (code, err) == (2, f"scratchllm finetune: error: {message}\n"), extra
    assert not (tmp_path / "run").exists()
