"""An option group is declared once and every verb that composes it shows and checks it the same way:
a bad --device, --dtype, --quantize or --prompt-style is the same one-line error with exit code 2 in every verb,
and a change of a group's field (here its help) shows up in every verb that offers it."""

from __future__ import annotations

import argparse

import pytest

from scratchllm.checkpoint.config import LoadConfig
from scratchllm.cli import build_parser, main
from scratchllm.core.options import DEVICE_HELP, class_docs
from scratchllm.data.config import LabelledConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import SamplingConfig
from scratchllm.models.config import LoRAConfig, ModelShape
from scratchllm.training.config import TrainConfig

# The least each verb needs besides the option under test (nothing is read: the check comes first).
VERBS = {
    "generate": ["generate", "--model", "m"],
    "chat": ["chat", "--model", "m"],
    "serve": ["serve", "--model", "m"],
    "respond": ["respond", "--model", "m", "--data", "d.json", "--out", "r.json"],
    "classify": ["classify", "--model", "m", "--text", "hi"],
    "fill-mask": ["fill-mask", "--model", "m", "--text", "a [MASK]"],
    "translate": ["translate", "--model", "m", "--text", "abc"],
    "inspect attention": ["inspect", "attention", "--model", "m", "--text", "a", "--out", "a.png"],
    "inspect next-token": ["inspect", "next-token", "--model", "m", "--text", "a"],
    "pretrain": ["pretrain", "--data", "d.txt", "--model", "gpt-tiny", "--out", "runs/never"],
    "demo": ["demo", "--out", "runs/never"],
    "finetune classify": ["finetune", "classify", "--data", "d.tsv"],
    "finetune instruct": ["finetune", "instruct", "--model", "m", "--data", "d.json", "--out", "o"],
    "finetune dpo": ["finetune", "dpo", "--model", "m", "--data", "d.json", "--out", "o"],
    **{f"evaluate {task}": ["evaluate", task, "--model", "m", "--data", "d"] for task in ("perplexity", "fewshot", "choice")},
}
EVALUATE = ["evaluate perplexity", "evaluate fewshot", "evaluate choice"]
WEIGHT_DTYPE = ["generate", "chat", "serve", "respond", *EVALUATE]  # LoadConfig.dtype: how the weights are cast
AUTOCAST_DTYPE = ["pretrain", "demo", "finetune classify", "finetune instruct", "finetune dpo"]  # TrainConfig.dtype
PROMPT_STYLE = ["chat", "serve", "respond", "finetune instruct", "finetune dpo"]


def walk(parser: argparse.ArgumentParser, path=()):
    """(verb path, parser) of every verb and sub-verb."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield " ".join((*path, name)), sub
                yield from walk(sub, (*path, name))


def flag_help(verb_parser: argparse.ArgumentParser, flag: str) -> str | None:
    for action in verb_parser._actions:
        if flag in action.option_strings:
            return " ".join((action.help or "").split())
    return None


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_bad_device_is_one_line_and_exit_2_in_every_verb(verb, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*VERBS[verb], "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"scratchllm {verb.split()[0]}: error: device 'gpu': expected auto, cpu, cuda, cuda:N or mps\n"
    assert not any(tmp_path.iterdir())  # nothing was written


def _argparse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    return last.split(": error: ", 1)[1]


@pytest.mark.parametrize("option, value, verbs", [
    ("--dtype", "fp8", WEIGHT_DTYPE), ("--dtype", "float16", AUTOCAST_DTYPE), ("--prompt-style", "chatml", PROMPT_STYLE),
    ("--quantize", "int4", WEIGHT_DTYPE)])
def test_a_bad_choice_is_the_same_error_in_every_verb(option, value, verbs, capsys):
    errors = {verb: _argparse_error([*VERBS[verb], option, value], capsys) for verb in verbs}
    assert len(set(errors.values())) == 1, errors
    assert next(iter(errors.values())).startswith(f"argument {option}: invalid choice: '{value}'")


@pytest.mark.parametrize("value, message", [
    ({"dtype": "fp8"}, "load field 'dtype' must be one of 'float32', 'bfloat16', 'float16' or null, got 'fp8'"),
    ({"device": "gpu"}, "device 'gpu': expected auto, cpu, cuda, cuda:N or mps"),
    ({"quantize": "int4"}, "load field 'quantize' must be one of 'int8' or null, got 'int4'")])
def test_the_python_api_checks_the_same_values(value, message):
    from scratchllm.inference.config import ChatConfig, GenerateConfig, RespondConfig, ServeConfig

    for cls, extra in ((GenerateConfig, {}), (ChatConfig, {}), (ServeConfig, {}), (RespondConfig, {"data": "d", "out": "o"})):
        with pytest.raises(ScratchLLMError) as err:
            cls(model="m", **value, **extra)
        assert str(err.value) == message


def test_every_device_option_has_the_one_help():
    helps = {verb: flag_help(p, "--device") for verb, p in walk(build_parser())}
    offered = {verb: h for verb, h in helps.items() if h is not None}
    assert set(VERBS) <= set(offered)
    assert all(h.startswith(DEVICE_HELP) for h in offered.values()), offered


# A field of each group, and the verbs that offer it as a flag with the group's own help.
GROUP_FIELDS = [
    (LoadConfig, "dtype", "--dtype", {"generate", "chat", "serve", "respond", *EVALUATE}),
    (LoadConfig, "quantize", "--quantize", {"generate", "chat", "serve", "respond", *EVALUATE}),
    (SamplingConfig, "top_p", "--top-p", {"generate", "chat", "respond"}),
    (TrainConfig, "grad_clip", "--grad-clip", {"pretrain", "finetune classify"}),
    (TrainConfig, "weight_decay", "--weight-decay", {"pretrain", "finetune classify", "finetune instruct", "finetune dpo"}),
    (LoRAConfig, "dropout", "--lora-dropout", {"finetune instruct", "finetune dpo"}),
    (LabelledConfig, "balance", "--balance", {"finetune classify"}),
    (ModelShape, "emb_dim", "--emb-dim", {"demo"}),
]


@pytest.mark.parametrize("cls, field, flag, verbs", GROUP_FIELDS, ids=lambda v: getattr(v, "__name__", None))
def test_a_change_of_a_group_field_shows_in_every_verb_composing_it(cls, field, flag, verbs, monkeypatch):
    monkeypatch.setitem(class_docs(cls), field, "CHANGED IN ONE PLACE")
    shown = {verb for verb, p in walk(build_parser()) if (flag_help(p, flag) or "").startswith("CHANGED IN ONE PLACE")}
    assert shown == verbs
