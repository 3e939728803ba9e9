"""The parser's own errors are one line naming the verb, and --help shows every default worth showing."""

from __future__ import annotations

import pytest

from scratchllm.cli import build_parser, main


@pytest.mark.parametrize("argv, line", [
    (["generate", "--model", "m", "--dtype", "fp8"],
     "scratchllm generate: error: argument --dtype: invalid choice: 'fp8' (choose from 'float32', 'bfloat16', 'float16')"),
    (["evaluate", "fewshot", "--model", "m", "--data", "d", "--shots", "two"],
     "scratchllm evaluate fewshot: error: argument --shots: invalid int value: 'two'"),
    (["finetune", "classify", "--epochs"], "scratchllm finetune classify: error: argument --epochs: expected one argument"),
    (["generate"], "scratchllm generate: error: the following arguments are required: --model"),
])
def test_a_parser_error_is_one_line_with_exit_code_2(argv, line, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_help_shows_a_default_of_zero_but_not_none_or_false():
    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices["evaluate"]
    fewshot = next(a for a in sub._actions if a.dest == "task").choices["fewshot"]
    text = " ".join(fewshot.format_help().split())
    assert "labelled examples in each prompt (K) (default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
