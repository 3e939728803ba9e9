"""lm-evaluation-harness 0.4.13, the real client, against the real server (uvicorn in a thread) on a tiny
random GPT with GPT-2's tokenizer: `local-completions` scores a multiple-choice task (token-id prompts in
batches of 4, echo, logprobs 1, max_tokens 1; the tokenizer read through /tokenizer_info and /tokenize)
with exactly `evaluate choice`'s acc and acc_norm, each choice's log-likelihood equal to ours (1e-4);
`local-chat-completions` runs a generate_until task and gets the server's greedy answers. The tasks are
local files written here; nothing reaches the hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scratchllm.checkpoint import save_model
from scratchllm.evaluation.lm import evaluate_choice
from scratchllm.inference.config import SamplingConfig
from scratchllm.inference.serve import ServeSettings, create_app
from scratchllm.inference.session import load_session
from scratchllm.tokenizer import Tokenizer
from tests.conftest import serving
from tests.helpers import sharpened_gpt

CTX = 128
ROWS = [
    {"context": "The cat sat on the", "choices": [" mat", " window sill", " moon"], "label": 0},
    {"context": "Paris is the capital of", "choices": [" France", " Spain", " a country in Asia"], "label": 0},
    {"context": "She opened the door and", "choices": [" left", " walked into the garden", " sang"], "label": 1},
    {"context": "Two plus two is ", "choices": ["four", "five", "twenty-two"], "label": 0},
    {"context": "", "choices": [" yes", " no"], "label": 1},
    {"context": "The rain in Spain falls", "choices": [" mainly on the plain", " up", " sideways"], "label": 0},
    {"context": "He drank a cup of", "choices": [" tea", " concrete", " hot chocolate with cream"], "label": 0},
    {"context": "Birds can", "choices": [" fly", " swim", " read novels"], "label": 0},
]
QUESTIONS = [{"question": "Say hello.", "answer": "hello"}, {"question": "Count to three.", "answer": "one two three"},
             {"question": "Name a colour.", "answer": "blue"}]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No hub: the tasks read local JSON files, and datasets caches them in a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets-cache")))
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model = sharpened_gpt(50257, seed=3, context_length=CTX, emb_dim=32, n_heads=2)
    return save_model(model, tmp_path_factory.mktemp("lmeval") / "tiny", Tokenizer.gpt2(), extra={"prompt_style": "phi3"})


@pytest.fixture(scope="module")
def url(model_dir):
    with serving(create_app(str(model_dir), ServeSettings(max_batch=8), device="cpu")) as port:
        yield f"http://127.0.0.1:{port}"


def write_task(directory: Path, name: str, rows: list[dict], config: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        + config, encoding="utf-8")
    return data


def run_harness(model: str, model_args: dict, task: str, directory: Path, **options) -> dict:
    import datasets.config
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    datasets.config.HF_HUB_OFFLINE = True  # (in case datasets was imported before the environment was set)
    return simple_evaluate(model=model, model_args=model_args, tasks=[task], log_samples=True,
                           task_manager=TaskManager(include_path=str(directory)), **options)


def test_local_completions_scores_a_choice_task_as_evaluate_choice_does(offline, url, model_dir, tmp_path):
    # target_delimiter "": the choices carry their own leading space, as evaluate choice's JSONL does
    data = write_task(tmp_path / "tasks", "scratch_mc", ROWS,
                      "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
                      "doc_to_target: label\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    out = run_harness("local-completions", {"base_url": f"{url}/v1/completions", "model": "tiny", "max_length": CTX,
                                            "batch_size": 4, "max_retries": 1}, "scratch_mc", tmp_path / "tasks")
    ours = evaluate_choice(str(model_dir), data, device="cpu")
    theirs = out["results"]["scratch_mc"]
    print(f"lm-eval local-completions: acc {theirs['acc,none']} acc_norm {theirs['acc_norm,none']}; "
          f"evaluate choice: acc {ours['acc']} acc_norm {ours['acc_norm']}")
    assert theirs["acc,none"] == ours["acc"] and theirs["acc_norm,none"] == ours["acc_norm"]
    assert 0 < ours["acc"] < 1 or 0 < ours["acc_norm"] < 1  # the picks differ by item: equality says something
    for sample in out["samples"]["scratch_mc"]:
        mine = ours["predictions"][sample["doc_id"]]["logprobs"]
        assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx(mine, abs=1e-4)


def test_local_chat_completions_runs_a_generate_until_task(offline, url, model_dir, tmp_path):
    write_task(tmp_path / "tasks", "scratch_gen", QUESTIONS,
               "output_type: generate_until\ndoc_to_text: question\ndoc_to_target: answer\n"
               "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 8\n  do_sample: false\n"
               "metric_list:\n  - metric: exact_match\n")
    out = run_harness("local-chat-completions", {"base_url": f"{url}/v1/chat/completions", "model": "tiny",
                                                 "max_retries": 1}, "scratch_gen", tmp_path / "tasks",
                      apply_chat_template=True)
    session = load_session(model_dir, device="cpu")
    greedy = SamplingConfig(max_new_tokens=8, temperature=0)
    samples = sorted(out["samples"]["scratch_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == len(QUESTIONS)
    for sample, row in zip(samples, QUESTIONS):
        prompt = session.style.format_chat([{"role": "user", "content": row["question"]}], add_generation_prompt=True)
        expected = session.generate(prompt, greedy, stop=session.style.stop_strings + ["\n"])
        assert sample["resps"] == [[expected]] and expected.strip()
    assert out["results"]["scratch_gen"]["exact_match,none"] == 0.0
