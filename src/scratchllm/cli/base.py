"""The machinery every verb module uses: the verb registry (grouped for `scratchllm --help`), the
parser of one verb, verbs made of sub-verbs, and flags generated from a config dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable

from scratchllm.core.options import option_fields


# The verbs in the order of a model's life, grouped for `scratchllm --help`.
GROUPS = [
    ("text and data", ["tokenizer", "prepare"]),
    ("training", ["pretrain", "demo", "finetune"]),
    ("using a model", ["generate", "chat", "serve", "classify", "fill-mask", "translate", "respond"]),
    ("measuring", ["evaluate", "inspect", "info"]),
    ("converting", ["import-hf", "export-hf", "merge-lora"]),
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
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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


def add_options(p: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                defaults_from_elsewhere: bool = False) -> list[str]:
    """One flag per field of the config dataclass `cls` (--max-steps for max_steps); returns the names.

    Types, defaults, choices (a Literal's values) and help come from the field. Booleans get
    --x / --no-x. With `defaults_from_elsewhere`, a flag left out is absent from the parsed args
    (so a run file or a resumed run can supply the value); the help still shows the default.
    """
    names = []
    for f in option_fields(cls):
        if f.name in exclude:
            continue
        names.append(f.name)
        required = f.default is dataclasses.MISSING
        help = f.help.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {"dest": f.name, "help": help}
        if defaults_from_elsewhere:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] = f"{help} (default: {f.default!r})"
        elif required:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if f.kind is list else f.default  # a list's default is filled in later
        if f.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.kind == "flag_or_str":  # --resume, or --resume RUNDIR
            kwargs.update(nargs="?", const=True, metavar=f.name.upper())
        elif f.kind is list:
            kwargs.update(nargs="+", action="extend", metavar=f.name.upper().rstrip("S"))
        elif f.kind is tuple:
            kwargs.update(nargs=f.length, type=float, metavar=f.name.upper())
        else:
            kwargs.update(type=f.kind, metavar=f.name.upper())
            if f.choices is not None:
                kwargs.update(choices=f.choices, metavar=None)
        p.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return names


def options_of(args: argparse.Namespace, cls: type, names: list[str], **fixed: Any) -> Any:
    """The config dataclass `cls` built from the parsed flags `names` (an unset list keeps its default)."""
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values = {n: v for n, v in values.items() if v is not None or not _is_list(cls, n)}
    return cls(**values, **fixed)


def _is_list(cls: type, name: str) -> bool:
    return any(f.name == name and f.kind is list for f in option_fields(cls))
