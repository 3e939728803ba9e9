"""Hostile versions of a model directory's JSON files, for tests and `benchmarks/bad_inputs.py`: every
value of a file (the first few of long lists and objects, such as a vocabulary) replaced in turn by
values of the wrong JSON type, and the file nested deeper than any real one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What a hand-edited or hostile file puts where something else belongs: each JSON type, values at the
# edges, and containers of the wrong content.
HOSTILE_VALUES: list[Any] = [5, -1, 2**70, 1.5, "x", "", True, None, [], {}, [5], ["x"], [{"a": 1}], {"a": [1]}]
# The few that find most type confusions (for a quick test; the benchmark tries them all).
QUICK_VALUES: list[Any] = [5, "x", None, [{"a": 1}], {"a": [1]}]
DELETE = object()  # stands for "the key removed"


def json_paths(value: Any, path: tuple = (), first: int = 3) -> Iterator[tuple]:
    """Paths (keys and indexes) to every value inside `value`; of a list, or of an object of more than
    20 keys, the first `first` children only (a vocabulary of 100,000 entries is tried through three)."""
    children = list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    if isinstance(value, list) or len(children) > 20:
        children = children[:first]
    for key, child in children:
        yield (*path, key)
        yield from json_paths(child, (*path, key), first)


def replaced(data: Any, path: tuple, new: Any) -> Any:
    """A deep copy of `data` with the value at `path` replaced by `new` (DELETE removes an object's key)."""
    out = copy.deepcopy(data)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if new is DELETE and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = None if new is DELETE else copy.deepcopy(new)
    return out


def nested(depth: int = 100_000) -> str:
    """JSON text of a list nested `depth` deep (Python's own json gives up near 1,000)."""
    return "[" * depth + "]" * depth


def mutations(directory: Path, files: tuple[str, ...], values: list[Any]) -> Iterator[tuple[str, str, bytes]]:
    """(file, description, new bytes) for every value of each JSON file in `directory` replaced by each
    of `values` or removed, then each file as deep nesting."""
    for name in files:
        if not (directory / name).is_file():
            continue
        data = json.loads((directory / name).read_text(encoding="utf-8"))
        for path in json_paths(data):
            for value in [*values, DELETE]:
                shown = "removed" if value is DELETE else json.dumps(value)
                yield name, f"{name} {'.'.join(map(str, path))} = {shown}", \
                    json.dumps(replaced(data, path, value)).encode()
        yield name, f"{name} nested 100,000 deep", nested().encode()
