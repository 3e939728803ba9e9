"""`scratchllm evaluate TASK` (cli/evaluating.py): bad input is one line on stderr and exit code 2, every
flag comes from a dataclass field, and --dtype is checked as LoadConfig checks it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from scratchllm.cli import build_parser, evaluating
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.lm import evaluate
from scratchllm.evaluation.tasks import (ChoiceTask, EvaluateConfig, FewshotTask, PerplexityTask, ReportConfig,
                                         ResponsesTask)
from tests.helpers import run_cli


@pytest.mark.parametrize("verb, content, suffix, extra, message", [
    ("fewshot", "id\tbody\tclass\n1\thello\tham\n", ".tsv", ["--text-column", "text", "--label-column", "class"],
     "no text column 'text'; columns found: 'id', 'body', 'class'"),
    ("fewshot", "", ".tsv", [], "empty file (expected rows with a text and a label)"),
    ("fewshot", '{"text": "hi"}\n', ".jsonl", [], "no label column 'label'; columns found: 'text'"),
    ("fewshot", "ham\thi\nspam\n", ".tsv", [], "line 2: 1 tab-separated fields, expected 2"),
    ("fewshot", "ham\thi\nspam\tyo\n", ".tsv", ["--shots", "5"], "shots 5: the train split has only 2 examples"),
    ("fewshot", "ham\thi\nspam\tyo\nham\tok\n", ".tsv", ["--labels", "ham,eggs"], "label 'spam' is not one of the labels ham, eggs"),
    ("choice", "", ".jsonl", [], "empty, expected JSON lines with context, choices, label"),
    ("choice", '{"context": "a", "choices": [" b", " c"], "label": 2}\n', ".jsonl", [],
     "line 1: field 'label' must be an index 0..1, got 2"),
    ("choice", '{"context": "a", "choices": " b c", "label": 0}\n', ".jsonl", [],
     "line 1: field 'choices' must be a list of at least 2 non-empty strings"),
    ("choice", '{"context": "a", "choices": [" b", " c"]}\n', ".jsonl", [], "line 1: missing field 'label'"),
    ("choice", '{"context": "a", "choices": [" b", " c"], "label": 0}\nnot json\n', ".jsonl", [], "line 2: not valid JSON"),
    ("perplexity", "", ".txt", [], "no text to score (the file is empty)"),
    ("perplexity", "some text", ".txt", ["--stride", "100"], "stride 100: expected 1..context_length (64)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, gpt2_model_dir, verb, content, suffix, extra, message):
    data = tmp_path / f"data{suffix}"
    data.write_text(content, encoding="utf-8")
    rc, out, err = run_cli(capsys, "evaluate", verb, "--model", gpt2_model_dir, "--data", data,
                           "--device", "cpu", *extra)
    assert rc == 2 and out == ""
    assert err.startswith("scratchllm evaluate: error: ") and err.count("\n") == 1
    assert message in err


def test_evaluate_without_task_prints_help_and_exits_2(capsys):
    rc, _, err = run_cli(capsys, "evaluate")
    assert rc == 2 and "perplexity" in err and "fewshot" in err and "choice" in err


@pytest.mark.parametrize("task, groups", [("perplexity", [EvaluateConfig, PerplexityTask, ReportConfig]),
                                          ("fewshot", [EvaluateConfig, FewshotTask, ReportConfig]),
                                          ("choice", [EvaluateConfig, ChoiceTask, ReportConfig]),
                                          ("responses", [ResponsesTask, ReportConfig])])
def test_every_flag_is_a_dataclass_field(task, groups):
    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices["evaluate"]
    parser = next(a for a in sub._actions if a.dest == "task").choices[task]
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for group in groups for f in dataclasses.fields(group)}
    assert "add_argument" not in inspect.getsource(evaluating)


@pytest.mark.parametrize("task", ["perplexity", "fewshot", "choice"])
def test_dtype_is_checked_as_load_config_checks_it(capsys, task, gpt2_model_dir):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["evaluate", task, "--model", str(gpt2_model_dir), "--data", "x", "--dtype", "float8"])
    assert exit.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then its one error line, as for generate --dtype
    assert f"evaluate {task}: error: argument --dtype: invalid choice: 'float8'" in last
    with pytest.raises(ScratchLLMError) as info:
        EvaluateConfig(model="gpt2", dtype="float8")
    assert str(info.value) == "evaluate field 'dtype' must be one of 'float32', 'bfloat16', 'float16' or null, got 'float8'"
    with pytest.raises(ScratchLLMError) as info:
        evaluate(PerplexityTask("x.txt"), gpt2_model_dir, dtype="float8")
    assert str(info.value) == "dtype 'float8': expected one of float32, bfloat16, float16"
