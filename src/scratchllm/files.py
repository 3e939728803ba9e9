"""Files written whole or not at all, and text files read with one-line errors.

Everything scratchllm writes (reports, metrics, JSON, plots, tokenizers) goes to a temporary file
beside its destination that is renamed into place (`os.replace` is atomic within a directory), so
an interrupted or failed write never leaves a half-written file and never replaces a good one.
Model directories get the same treatment as a whole (`checkpoint.atomic_directory`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


def umask() -> int:
    """The process's file-creation mask: temporary files and directories (mkstemp, mkdtemp) are
    private (0600 / 0700), so what is renamed into place is given the permissions of a normal file."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _label(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], what: str = "", suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path` for the block to write; rename it to `path` when the
    block succeeds, remove it when the block fails. `what` names the file in errors ("report file")."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ScratchLLMError(f"{_label(path, what)}: cannot write ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would otherwise stay on the result
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, what: str = "") -> Path:
    """Write bytes (or UTF-8 text) to `path` through a temporary file."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with atomic_path(path, what) as tmp:
            tmp.write_bytes(blob)
    except OSError as exc:
        raise ScratchLLMError(f"{_label(path, what)}: cannot write ({exc.strerror or exc})") from None
    return path


def write_json(path: str | os.PathLike[str], data: Any, what: str = "", **dumps: Any) -> Path:
    """`data` as indented JSON (non-ASCII kept) plus a newline, written atomically."""
    try:
        text = json.dumps(data, **{"indent": 2, "ensure_ascii": False, **dumps})
    except (TypeError, ValueError) as exc:
        raise ScratchLLMError(f"{_label(Path(path), what)}: cannot write as JSON ({exc})") from None
    return write_atomic(path, text + "\n", what)


def read_text(path: str | os.PathLike[str], what: str = "", expected: str = "a UTF-8 text file") -> str:
    """The UTF-8 text of `path` (a leading byte-order mark, as spreadsheets write, is dropped)."""
    path = Path(path)
    label = _label(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScratchLLMError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ScratchLLMError(f"{label}: is a directory, expected {expected}") from None
    except UnicodeDecodeError as exc:
        raise ScratchLLMError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ScratchLLMError(f"{label}: cannot read ({exc.strerror or exc})") from None
