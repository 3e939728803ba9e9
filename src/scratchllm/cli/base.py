"""The machinery every verb module uses: the verb registry (grouped for `scratchllm --help`), the
parser of one verb, verbs made of sub-verbs, and `add_config`: every flag of a verb generated from
its config dataclass (core/options.py reads the fields, the groups' included), no flag written by hand."""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import MISSING
from typing import Any, Callable

from scratchllm.core.options import OptionField, group_specs, option_fields


# The verbs in the order of a model's life, grouped for `scratchllm --help`.
GROUPS = [
    ("text and data", ["tokenizer", "prepare"]),
    ("training", ["pretrain", "demo", "finetune"]),
    ("using a model", ["generate", "chat", "serve", "classify", "fill-mask", "translate", "respond"]),
    ("measuring", ["evaluate", "inspect", "info"]),
    ("converting", ["import-hf", "export-hf", "export-gguf", "merge-lora"]),
]
VERBS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def verb(name: str):
    """Register the `add_*` function of verb `name` (listed in --help by GROUPS)."""

    def register(add: Callable[[argparse._SubParsersAction], None]):
        VERBS[name] = add
        return add

    return register


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in --help, except when there is none to show (None, False)."""

    def _get_help_string(self, action):
        # `is`, not `in`: 0 == False, and a default of 0 (--shots 0, --seed 0) is worth showing.
        nothing = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if nothing or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line, `scratchllm VERB: error: MESSAGE`, and exit code 2,
    as every other bad input (argparse's own prints the whole usage above the line)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser_for(sub: argparse._SubParsersAction, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=DefaultsFormatter, **kwargs)


def add_group(sub: argparse._SubParsersAction, name: str, help: str, dest: str,
               members: list[Callable[[argparse._SubParsersAction], None]]) -> None:
    """A verb made of sub-verbs (`evaluate TASK`, `finetune RECIPE`); alone, it prints its help."""
    p = parser_for(sub, name, help)
    group = p.add_subparsers(dest=dest, metavar=dest.upper())
    for add in members:
        add(group)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)


class ConfigFlags:
    """The flags `add_config` made for a config dataclass, and how to read them back."""

    def __init__(self, cls: type, fields: list[OptionField], plain: bool, given_only: bool):
        self.cls, self.fields, self.plain, self.given_only = cls, fields, plain, given_only

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """{flat name: value} of the flags; with `given_only`, only those given on the command line."""
        values = {}
        for f in self.fields:
            dest = _dest(f, self.plain)
            if not hasattr(args, dest):  # left out, and its default lives elsewhere (SUPPRESS)
                continue
            value = getattr(args, dest)
            if dest != f.name:  # --no-progress sets no_progress
                value = not value
            if value is None and (self.given_only or f.value_type is list):
                continue  # not given: the config's own default (a list's is filled in there)
            if self.given_only and value is False and f.default is False:
                continue
            values[f.name] = value
        return values

    def config(self, args: argparse.Namespace, **fixed: Any) -> Any:
        """The config built from the flags (and `fixed` values for the fields that are not flags)."""
        return self.cls(**self.values(args), **fixed)


def add_config(p: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (), plain: bool = False,
               given_only: bool = False) -> ConfigFlags:
    """One flag per option of the config dataclass `cls`, its groups' options included (--max-steps
    for max_steps, --lora-rank for the LoRA group's rank); returns how to read them back.

    Types, defaults, choices (a Literal's values) and help come from the field (core/options.py);
    a group's options sit under a heading of their own. Booleans get --x / --no-x; with `plain`, as
    the verbs that predate the generated flags spell them, a boolean is a switch that turns its
    default around (--json; --no-progress for one on by default) and text is taken as typed (no
    converter). With `given_only`, a flag left out is not given (`ConfigFlags.values` leaves it out,
    so that a run file or a resumed run supplies the value): a group's flags are then absent from the
    parsed args, the verb's own flags None, and the help names the default.
    """
    fields = [f for f in option_fields(cls) if f.name not in exclude]
    headings: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for name, spec in group_specs(cls).items():
        if any(f.in_group == name for f in fields):
            doc = (inspect.getdoc(spec.cls) or "").split("\n")[0]
            note = "; a flag left out keeps the run file's or the resumed run's value" if given_only else ""
            headings[name] = p.add_argument_group(f"{name} ({spec.cls.__name__}{note})", doc)
    for f in fields:
        target = headings.get(f.in_group, p)
        if f.spec.one_of is not None:
            if f.spec.one_of not in exclusive:
                exclusive[f.spec.one_of] = target.add_mutually_exclusive_group(required=True)
            target = exclusive[f.spec.one_of]
        flag = f.flag if _dest(f, plain) == f.name else f"--no-{f.flag[2:]}"
        target.add_argument(flag, **_argument(f, plain, given_only))
    return ConfigFlags(cls, fields, plain, given_only)


def _dest(f: OptionField, plain: bool) -> str:
    """The parsed args' name of a flag: a plain switch that turns a default True off (--no-progress) is no_<name>."""
    return f"no_{f.name}" if plain and f.value_type is bool and f.default is True else f.name


def _argument(f: OptionField, plain: bool, given_only: bool) -> dict[str, Any]:
    help = f.help.replace("%", "%%")  # argparse formats help strings with %
    kwargs: dict[str, Any] = {"dest": _dest(f, plain), "help": help}
    if f.default is MISSING:
        kwargs["required"] = True
    elif given_only:
        # The groups' flags leave the namespace alone and the verb's own flags read None as "not given"
        # (two spellings of one idea, kept because tests/cli/test_flags.py pins every flag's default).
        kwargs["default"] = argparse.SUPPRESS if f.in_group else (False if f.default is False else None)
        if f.in_group or f.default not in (None, False):
            kwargs["help"] = f"{help} (default: {f.default!r})"
    else:
        kwargs["default"] = None if f.value_type is list and not f.spec.nargs == "*" else f.default
    if f.value_type is bool:
        if plain:
            kwargs.update(action="store_true", default=False)
            if f.default is True:  # --no-progress turns the progress bar off
                kwargs["help"] = f"no {help}"
        else:
            kwargs["action"] = argparse.BooleanOptionalAction
    elif f.value_type == "flag_or_str":  # --resume, or --resume RUNDIR
        kwargs.update(nargs="?", const=True, metavar=f.name.upper())
    elif f.value_type is list:
        if f.spec.repeat:
            kwargs["action"] = "append"
        elif f.spec.nargs == "*":
            kwargs["nargs"] = "*"
        else:
            kwargs.update(nargs="+", action="extend")
        kwargs["metavar"] = f.spec.metavar or f.name.upper().rstrip("S")
    elif f.value_type is tuple:
        kwargs.update(nargs=f.length, type=float, metavar=f.name.upper())
    else:
        if not (plain and f.value_type is str):
            kwargs["type"] = f.value_type
        kwargs["metavar"] = f.spec.metavar or f.name.upper()
        if f.choices is not None:
            kwargs.update(choices=f.choices, metavar=None)
    return kwargs
