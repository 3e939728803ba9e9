"""Typed option groups: the dataclasses that hold every configurable setting, each declared once.

A config is a `@dataclass` whose fields carry their type, their default and, in the string
literal just below the field, their help text:

    @dataclass
    class TrainConfig:
        max_steps: int | None = 1000
        \"\"\"optimizer steps\"\"\"

A group is declared by the layer that uses it (loading a model, sampling, training, LoRA, labelled
data, a model's shape); a verb's config composes groups with `group(...)`, giving its own default
instance where its defaults differ, and `@composed` lets its constructor take the groups' fields by
their flat names too (`InstructConfig(lr=1e-3, lora_rank=16)`).

From those declarations come the CLI flags (cli/base.py builds argparse options from `option_fields`,
the leaves of a config with its groups flattened), the checks (`check_fields`: a string where an int
belongs is a one-line error, not a TypeError later; a field's own `check`, such as the device's, runs
with them), the reading of config files (`from_mapping` rejects unknown keys and lists the known ones)
and `resolve`, the one order in which settings from several places win: a config's defaults, then a
run file, then a resumed run's saved settings, then the flags. Torch-free, so `scratchllm --help`
stays fast.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from functools import cache
from typing import Any, Literal

from scratchllm.errors import ScratchLLMError

# ------------------------------------------------------------------------------------------------
# Declaring options and groups


@dataclass(frozen=True)
class FlagSpec:
    """How a field is spelled on the command line, when not the plain way (--name-with-dashes)."""

    flag: str | None = None  # e.g. "--layers" for the field n_layers
    nargs: str | None = None  # "*": a list that may be given empty (its default shows in --help)
    repeat: bool = False  # a list given one flag per value: --text A --text B
    one_of: str | None = None  # exactly one field of this name's set is given (a mutually exclusive group)
    metavar: str | None = None
    help: str | None = None  # help of a field made by a shared helper (the docstring below a field wins)
    check: Callable[[Any], None] | None = None  # raises ScratchLLMError for a bad value


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field with its command-line spelling (FlagSpec's fields: flag, nargs, repeat, one_of,
    metavar, help, check)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": FlagSpec(**spec)})


DEVICE_HELP = "auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"


def check_device(name: Any) -> None:
    """A device name as `core.device.resolve_device` takes it (whether it is present is checked there)."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ScratchLLMError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def device_field(default: str = "auto") -> Any:
    """The device option of every group that places a model (loading, training): one help, one check."""
    return option(default, help=DEVICE_HELP, check=check_device)


@dataclass(frozen=True)
class GroupSpec:
    """A group field of a verb's config: which group, how its fields are named there, its defaults."""

    cls: type
    prefix: str = ""  # flat names are prefix + field name: lora_rank for LoRAConfig.rank
    flags: tuple[str, ...] | None = None  # the group's fields this verb offers as flags (None: all)
    help: Mapping[str, str] = dataclasses.field(default_factory=dict)  # this verb's help for some of them
    when: str | None = None  # the group is None unless this field of it is given (LoRA: rank)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # this verb's default instance

    def required(self) -> bool:
        return any(f.default is MISSING and f.default_factory is MISSING and f.name not in self.defaults
                   for f in dataclasses.fields(self.cls))

    def instance(self) -> Any:
        return self.cls(**self.defaults)


def group(cls: type, *, prefix: str = "", flags: Sequence[str] | None = None, help: Mapping[str, str] | None = None,
          when: str | None = None, **defaults: Any) -> Any:
    """A field holding the option group `cls`, with this verb's defaults (`cls(**defaults)`).

    flags: the group's fields offered as flags (the others keep the default instance's values);
    help: this verb's help for some of them; prefix: prepended to the group's field names to make the
    flags and flat keywords (--lora-rank); when: the group is optional, None unless that field is given.
    A group with required fields and no defaults for them is a required field.
    """
    spec = GroupSpec(cls, prefix, tuple(flags) if flags is not None else None, dict(help or {}), when, dict(defaults))
    unknown = set(defaults) | set(spec.help) | set(spec.flags or ()) | ({when} if when else set())
    unknown -= {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"group({cls.__name__}): no field(s) {', '.join(sorted(unknown))}")
    metadata = {"group": spec}
    if when is not None:
        return dataclasses.field(default=None, metadata=metadata)
    if spec.required():
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=spec.instance, metadata=metadata)


def group_specs(cls: type) -> dict[str, GroupSpec]:
    return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}


@cache
def flat_routes(cls: type) -> dict[str, tuple[str, ...]]:
    """Flat name -> path of every field of a config, its groups' fields included: "lr" -> ("train", "lr")."""
    routes: dict[str, tuple[str, ...]] = {}
    specs = group_specs(cls)
    for f in dataclasses.fields(cls):
        inner = [(specs[f.name].prefix + g.name, (f.name, g.name)) for g in dataclasses.fields(specs[f.name].cls)] \
            if f.name in specs else [(f.name, (f.name,))]
        for name, path in inner:
            if name in routes:
                raise TypeError(f"{cls.__name__}: two fields are called {name!r} ({routes[name]} and {path}); "
                                "give one group a prefix")
            routes[name] = path
    return routes


def composed(cls: type) -> type:
    """Let the constructor of a config made of groups also take the groups' fields by their flat
    names: `ClassifyConfig(data="sms.tsv", lr=1e-3)` sets `labelled.data` and `train.lr` on the
    config's default instances (or on the groups given beside them)."""
    flat_routes(cls)  # a name that two groups share is an error here, at import
    init = cls.__init__
    specs = group_specs(cls)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        inner: dict[str, dict[str, Any]] = {}
        for name, path in flat_routes(cls).items():
            if len(path) == 2 and name in kwargs:
                inner.setdefault(path[0], {})[path[1]] = kwargs.pop(name)
        for name, values in inner.items():
            kwargs[name] = _with_values(specs[name], kwargs.get(name, MISSING), values)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _with_values(spec: GroupSpec, given: Any, values: dict[str, Any]) -> Any:
    if given is MISSING:
        given = None if spec.when is not None or spec.required() else spec.instance()
    if spec.when is not None:
        switch = values.get(spec.when, getattr(given, spec.when) if given is not None else None)
        if switch is None:
            return None  # LoRA without a rank: no adapters
    if given is None:
        return spec.cls(**values)
    return dataclasses.replace(given, **values)


# ------------------------------------------------------------------------------------------------
# Reading declarations: help, types, the flattened fields


@dataclass(frozen=True)
class OptionField:
    """One option of a config as the CLI offers it: a field, or a field of one of its groups."""

    name: str  # the flat name: the flag's dest and the keyword (lora_rank)
    path: tuple[str, ...]  # where the value lives: ("lora", "rank"), or ("model",)
    value_type: type | str  # int, float, str, bool, list (of str), tuple (of floats), a Literal's values'
    # type, or "flag_or_str" for `bool | str` (a flag that may take a value: --resume or --resume RUNDIR);
    # `str | list[str]` is str: the list is given on the command line as one comma-separated string
    default: Any
    help: str
    optional: bool  # None is allowed
    choices: tuple[Any, ...] | None = None  # a Literal's values
    length: int | None = None  # a fixed-length tuple's length
    spec: FlagSpec = FlagSpec()
    in_group: str | None = None  # the group field it belongs to

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")


@cache
def class_docs(klass: type) -> dict[str, str]:
    """The help text of the fields a dataclass body declares: the string literal right below each
    field (as attribute docstrings are written)."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source (e.g. a class made at run time)
        return {}
    docs = {}
    body = ast.parse(source).body[0].body
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """The help text of each field of `cls` and its dataclass bases (a subclass's own text wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(class_docs(klass))
    return docs


@cache
def _hints(cls: type) -> dict[str, Any]:
    # Each class's annotations are evaluated in its own module (get_type_hints' default): a subclass
    # defined elsewhere must not evaluate its bases' annotations among its own module's names.
    return typing.get_type_hints(cls)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else None


def _split_optional(hint: Any) -> tuple[Any, bool]:
    args = _union_args(hint)
    if args is not None and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return hint, False


def _leaf(cls: type, f: dataclasses.Field, name: str, path: tuple[str, ...], default: Any, help: str | None,
          in_group: str | None) -> OptionField:
    hint, optional = _split_optional(_hints(cls)[f.name])
    spec = f.metadata.get("option", FlagSpec())
    args = _union_args(hint)
    if args is not None and set(args) != {bool, str}:
        # str | dict (a preset name, or a config as a mapping), str | list[str] (a comma-separated list):
        # the command line gives the text
        hint = str if str in args else args[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    choices = length = None
    if set(args) == {bool, str}:
        value_type: type | str = "flag_or_str"
    elif origin is Literal:
        value_type, choices = type(args[0]), tuple(args)
    elif origin is tuple:
        value_type, length = tuple, (len(args) if Ellipsis not in args else None)
    elif origin is list or hint is list:
        value_type = list
    elif isinstance(hint, type):
        value_type = hint
    else:
        raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint!r}")
    text = help or field_docs(cls).get(f.name) or spec.help or ""
    return OptionField(name, path, value_type, default, text, optional, choices, length, spec, in_group)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def option_fields(cls: type, *, all_fields: bool = False) -> list[OptionField]:
    """The options of a config in declaration order, its groups flattened: a group's fields (those
    it offers as flags, or all with `all_fields`) appear where the group is declared, with the
    verb's defaults and help for them."""
    out = []
    specs = group_specs(cls)
    for f in dataclasses.fields(cls):
        if f.name not in specs:
            out.append(_leaf(cls, f, f.name, (f.name,), _default(f), None, None))
            continue
        spec = specs[f.name]
        base = None if spec.required() else spec.cls(**spec.defaults)
        for g in dataclasses.fields(spec.cls):
            if not all_fields and spec.flags is not None and g.name not in spec.flags:
                continue
            if g.name == spec.when:
                default = None
            else:
                default = getattr(base, g.name) if base is not None else spec.defaults.get(g.name, _default(g))
            out.append(_leaf(spec.cls, g, spec.prefix + g.name, (f.name, g.name), default, spec.help.get(g.name), f.name))
    return out


def flat_values(cfg: Any) -> dict[str, Any]:
    """The values of a config by flat name (its groups' fields too; an absent optional group has none)."""
    out = {}
    specs = group_specs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in specs:
            out[f.name] = value
        elif value is not None:
            out.update({specs[f.name].prefix + g.name: getattr(value, g.name) for g in dataclasses.fields(value)})
    return out


def changed_values(cfg: Any) -> dict[str, Any]:
    """The flat values of a config that differ from its class's defaults (required ones always):
    what its author set, for `resolve` to place above a run file and a resumed run."""
    defaults = {f.name: f.default for f in option_fields(type(cfg), all_fields=True)}
    return {k: v for k, v in flat_values(cfg).items() if defaults.get(k, MISSING) is MISSING or v != defaults[k]}


# ------------------------------------------------------------------------------------------------
# Checking values


def _matches(value: Any, hint: Any) -> bool:
    hint, optional = _split_optional(hint)
    if value is None:
        return optional
    args = _union_args(hint)
    if args is not None:
        return any(_matches(value, a) for a in args)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
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
    (bool is not an int, "5" is not a number, a Literal field takes one of its values), then run the
    fields' own checks (the device's)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ScratchLLMError(f"{what} field {f.name!r} must be {describe_type(hints[f.name])}, got {value!r}")
        check = f.metadata["option"].check if "option" in f.metadata else None
        if check is not None and value is not None:
            check(value)


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


# ------------------------------------------------------------------------------------------------
# Where a setting comes from


def resolve(cls: type, layers: Sequence[tuple[str, Mapping[str, Any]]], *, what: str = "config",
            where: str | None = None, exclude: Sequence[str] = ()) -> tuple[Any, dict[str, str]]:
    """A config from settings given in several places, each layer over the ones before it.

    The order is the class's defaults, then `layers` lowest first: a run file, a resumed run's
    saved settings, the flags (or keyword arguments). A layer maps flat names (its groups' fields
    too: "lr", "lora_rank") to the values set there (None is a value: a saved run's max_time None;
    leave out a flag that was not given). A key the config does not have is an error naming the layer and listing the known keys
    (`exclude` names keys that no layer may set). An invalid result is an error prefixed by `where`
    (the run file, when there is one). Returns (config, the layer each given key came from).
    """
    routes = flat_routes(cls)
    known = [name for name in routes if name not in exclude]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        if not isinstance(layer, Mapping):
            raise ScratchLLMError(f"{source}: expected a mapping of {what} fields, got {type(layer).__name__}")
        unknown = sorted(set(layer) - set(known))
        if unknown:
            raise ScratchLLMError(f"{source}: unknown {what} key(s) {', '.join(map(repr, unknown))}; "
                                  f"known keys: {', '.join(known)}")
        for key, value in layer.items():
            values[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
            sources[key] = source
    try:
        return cls(**values), sources
    except ScratchLLMError as exc:
        raise ScratchLLMError(f"{where}: {exc}" if where else str(exc)) from None
