"""Checking a config dataclass's values against its field annotations (the bottom layer: core).

Configs arrive from JSON, TOML and the command line, where "2" and 2 look alike. Every config
dataclass (GPTConfig, TrainConfig) checks each field against the annotation it declares, so a field
added later is checked too, with one line naming the field, the type expected and the value got.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scratchllm.errors import ScratchLLMError

# Annotation names that are checked; anything else (Any, a class, Literal[...]) is left to the
# dataclass's own checks.
_CONTAINERS = {"list": list, "tuple": (list, tuple), "dict": dict}


def _alternatives(annotation: str) -> list[str]:
    """'int | None' -> ['int', 'None']; a '|' inside brackets (dict[str, int | None]) is not split."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(annotation):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(annotation[start:i].strip())
            start = i + 1
    parts.append(annotation[start:].strip())
    return parts


def _matches(value: Any, name: str) -> bool | None:
    """Whether value is of the annotation `name`; None when `name` is not one this module checks."""
    base = name.split("[", 1)[0].strip()
    if base == "None":
        return value is None
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base in _CONTAINERS:
        return isinstance(value, _CONTAINERS[base])
    return None


def check_field_type(what: str, value: Any, annotation: Any) -> None:
    """Check a value against a field annotation such as 'int', 'float | None' or 'str'."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    verdicts = [_matches(value, name) for name in _alternatives(text)]
    if None in verdicts or any(verdicts):  # an alternative we cannot check, or one that fits
        return
    raise ScratchLLMError(f"{what} must be {text}, got {value!r}")


def check_field_types(config: Any, what: str) -> None:
    """Check every field of the dataclass instance `config`; `what` starts the error ("config")."""
    for f in dataclasses.fields(config):
        check_field_type(f"{what} field {f.name!r}", getattr(config, f.name), f.type)
