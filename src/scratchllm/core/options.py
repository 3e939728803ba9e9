"""Typed option groups: the dataclasses that hold every configurable setting, declared once.

A config is a `@dataclass` whose fields carry their type, their default and, in the string
literal just below the field, their help text:

    @dataclass
    class TrainConfig:
        max_steps: int = 1000
        \"\"\"optimizer steps\"\"\"

From that one declaration come the CLI flags (cli/base.py builds argparse options from `option_fields`),
the type checks (`check_fields`: a string where an int belongs is a one-line error, not a TypeError
later) and the reading of config files (`from_mapping` rejects unknown keys and lists the known
ones). Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from scratchllm.errors import ScratchLLMError


@dataclass(frozen=True)
class OptionField:
    """One field of a config dataclass, as the CLI needs it."""

    name: str
    kind: type | str  # int, float, str, bool, list (of str), tuple (of floats), a Literal's values' type,
    # or "flag_or_str" for `bool | str` (a flag that may take a value: --resume or --resume RUNDIR);
    # `str | list[str]` is str: the list is given on the command line as one comma-separated string
    default: Any
    help: str
    optional: bool  # None is allowed
    choices: tuple[Any, ...] | None = None  # a Literal's values
    length: int | None = None  # a fixed-length tuple's length


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The help text of each field: the string literal right below it in the class body (as
    attribute docstrings are written), for `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. a class made at run time)
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@cache
def _hints(cls: type) -> dict[str, Any]:
    # Each class's annotations are evaluated in its own module (get_type_hints' default): a subclass
    # defined elsewhere must not evaluate its bases' annotations among its own module's names.
    return typing.get_type_hints(cls)


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None is allowed): `int | None` -> (int, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional
    return hint, False


def option_fields(cls: type) -> list[OptionField]:
    """The fields of a config dataclass with their type, default and help."""
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint, optional = _split_optional(_hints(cls)[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        choices = length = None
        if set(args) == {bool, str}:
            kind = "flag_or_str"
        elif set(args) == {str, list[str]}:  # a list, given on the command line as one comma-separated string
            kind = str
        elif origin is Literal:
            kind, choices = type(args[0]), tuple(args)
        elif origin is tuple:
            kind, length = tuple, (len(args) if Ellipsis not in args else None)
        elif origin is list or hint is list:
            kind = list
        elif isinstance(hint, type):
            kind = hint
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint!r}")
        out.append(OptionField(f.name, kind, default, docs.get(f.name, ""), optional, choices, length))
    return out


def _matches(value: Any, hint: Any) -> bool:
    hint, optional = _split_optional(hint)
    if value is None:
        return optional
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        items = args[:1] * len(value) if Ellipsis in args else args
        return isinstance(value, (tuple, list)) and len(value) == len(items) and all(map(_matches, value, items))
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def describe_type(hint: Any) -> str:
    hint, optional = _split_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        text = "one of " + ", ".join(map(repr, args))
    elif origin is not None:
        text = str(hint).replace("typing.", "")
    else:
        text = getattr(hint, "__name__", str(hint))
    return text + (" or null" if optional else "")


def check_fields(obj: Any, what: str) -> None:
    """Raise a one-line ScratchLLMError for the first field whose value does not match its type
    (bool is not an int, "5" is not a number, a Literal field takes one of its values)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ScratchLLMError(f"{what} field {f.name!r} must be {describe_type(hints[f.name])}, got {value!r}")


def from_mapping(cls: type, data: Any, source: str, what: str = "config") -> Any:
    """`cls(**data)` for a mapping read from a file or the command line, rejecting unknown keys
    with a message that lists the known ones."""
    if not isinstance(data, Mapping):
        raise ScratchLLMError(f"{source}: expected a mapping of {what} fields, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ScratchLLMError(f"{source}: unknown {what} key(s) {', '.join(map(repr, unknown))}; "
                              f"known keys: {', '.join(known)}")
    try:
        return cls(**data)
    except ScratchLLMError as exc:
        raise ScratchLLMError(f"{source}: {exc}") from None
