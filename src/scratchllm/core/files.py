"""Files written whole or not at all, and files read with one-line errors (the bottom layer: core).

Everything scratchllm writes (reports, metrics, JSON, plots, tokenizers) goes to a temporary file
beside its destination that is renamed into place (`os.replace` is atomic within a directory), so
an interrupted or failed write never leaves a half-written file and never replaces a good one.
Directories (model directories, checkpoints, prepared data) get the same treatment as a whole:
`atomic_directory` builds them beside the target and swaps them in with renames. A write that
fails because the disk is full says so in one line, with the space it needed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
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


def check_overwrite(path: str | os.PathLike[str], overwrite: bool, what: str = "output file") -> Path:
    """Refuse an existing `path` unless `overwrite`: what single-file outputs (a tokenizer, a report,
    responses) call before any work, so a mistyped --out never replaces a file silently."""
    path = Path(path)
    if path.is_dir():
        raise ScratchLLMError(f"{what} {path}: is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise ScratchLLMError(f"{what} {path}: already exists (pass overwrite=True / --overwrite to replace it)")
    return path


# Below this much free space a failed write is taken for a full disk: torch.save and safetensors
# report ENOSPC as their own errors ("file write failed", "basic_ios::clear"), without the errno.
LOW_SPACE_BYTES = 1 << 20


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the file system holding `path` (None if unknown)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(exc: BaseException, where: str | os.PathLike[str]) -> bool:
    """Whether `exc`, raised while writing under `where`, means the device ran out of space."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "StorageFull" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(where)
    return free is not None and free < LOW_SPACE_BYTES


def _mb(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{n / 1e6:,.1f} MB"


def _bytes_under(path: Path) -> int:
    """Bytes in the file or tree `path` (what a failed write had written so far)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def disk_full_error(path: Path, needed: int, free: int | None, what: str = "", written: int | None = None) -> ScratchLLMError:
    """The one-line error of a write that does not fit: the path, the space it needs, the space free.
    `written`: bytes written when the disk filled up, when that (not `needed`) is what is known."""
    if written is not None and (free is None or needed <= free):
        need = f"needs more than the {_mb(free)} that were free (the disk filled up after {_mb(written)})"
    else:
        need = f"needs at least {_mb(needed)}, {_mb(free)} free"
    return ScratchLLMError(f"{_label(path, what)}: not enough disk space: {need}; nothing was replaced "
                           "(free some space or write elsewhere)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], what: str = "", suffix: str = ".tmp", size: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the block to write; rename it to `path` when the
    block succeeds, remove it when the block fails. `what` names the file in errors ("report file");
    `size`, the bytes the block will write when known, is what a full disk's error says it needs."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ScratchLLMError(f"{_label(path, what)}: cannot write ({exc.strerror or exc})") from None
    tmp = Path(name)
    free = free_bytes(path.parent)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would otherwise stay on the result
        os.replace(tmp, path)
    except Exception as exc:
        if not isinstance(exc, ScratchLLMError) and is_disk_full(exc, path.parent):
            raise disk_full_error(path, size, free, what, written=_bytes_under(tmp)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, what: str = "") -> Path:
    """Write bytes (or UTF-8 text) to `path` through a temporary file."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with atomic_path(path, what, size=len(blob)) as tmp:
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


def json_lines(text: str, source: str | os.PathLike[str]) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of JSONL text; a bad line is one error naming it."""
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ScratchLLMError(f"{source} line {n}: not valid JSON ({exc.msg})") from None
    return items


# JSON nested deeper than this is refused: real config and tokenizer files nest about 6 levels, and code
# that walks a parsed file (Python's json itself, past about 1,000 levels) would exhaust the stack.
MAX_JSON_DEPTH = 100


def parse_json(text: str | bytes, label: str) -> Any:
    """`json.loads(text)` with its nesting bounded by MAX_JSON_DEPTH (a one-line error naming `label`);
    invalid JSON raises json.JSONDecodeError as json.loads does, for the caller to word."""
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
    else:
        stack = [(data, 1)] if isinstance(data, (dict, list)) else []
        while stack:  # iterative: a recursive walk would hit the limit it checks
            value, depth = stack.pop()
            if depth > MAX_JSON_DEPTH:
                break
            children = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
        else:
            return data
    raise ScratchLLMError(f"{label}: JSON nested more than {MAX_JSON_DEPTH} levels deep; expected a config or "
                          "tokenizer file (about 6)")


def read_json(path: str | os.PathLike[str], what: str = "") -> dict[str, Any]:
    """The JSON object in `path` (a file that holds anything else is an error naming it)."""
    path = Path(path)
    label = _label(path, what)
    try:
        data = parse_json(path.read_text(encoding="utf-8"), label)
    except FileNotFoundError:
        raise ScratchLLMError(f"{label}: not found") from None
    except IsADirectoryError:
        raise ScratchLLMError(f"{label}: is a directory, expected a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"{label}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ScratchLLMError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ScratchLLMError(f"{label}: expected a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------------
# Directories written all at once


def _finish_tree(directory: Path) -> None:
    """Give a temporary tree the permissions of a normal one and flush its files to disk."""
    mask = umask()
    os.chmod(directory, 0o777 & ~mask)  # mkdtemp makes it private (0700)
    for path in directory.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~mask)
            # Without the fsync, a power cut just after the rename can leave the new name
            # pointing at files whose data never reached the disk.
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike[str],
    may_replace: Callable[[Path], bool] = lambda path: False,
    what: str = "a directory of this kind",
    size: int = 0,
) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it becomes `target`.

    The files are written into `.NAME.tmp-*`, then an existing `target` is renamed aside to
    `.NAME.old-*`, the new directory is renamed to `target`, and only then is the old one removed.
    If anything fails before that, the temporary directory is deleted and `target` is untouched;
    a crash between the two renames leaves the previous directory intact as `.NAME.old-*`
    (`recover_directory` puts it back). An existing `target` is only replaced when it is empty or
    `may_replace(target)` says it is `what` the caller writes, so a mistyped path never deletes,
    say, a run directory or $HOME. `size`: the bytes the block will write at least (e.g. the
    weights); more than the free space is refused before writing, and a disk that fills up while
    writing is one line with the space needed.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise ScratchLLMError(f"{target}: exists and is not a directory")
        if any(target.iterdir()) and not may_replace(target):
            raise ScratchLLMError(
                f"{target}: exists and is not {what}; refusing to replace it (remove it or choose another path)"
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScratchLLMError(f"{target}: cannot create directory ({exc.strerror or exc})") from None
    free = free_bytes(target.parent)
    if free is not None and size > free:
        raise disk_full_error(target, size, free)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        if is_disk_full(exc, target.parent):
            raise disk_full_error(target, size, free, written=0) from None
        raise ScratchLLMError(f"{target}: cannot create directory ({exc.strerror or exc})") from None
    try:
        yield tmp
        _finish_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        if isinstance(exc, ScratchLLMError):
            raise
        # torch.save and safetensors raise their own errors for a full disk; the tree written so
        # far (about what was free) says how much more than that the directory needs.
        if is_disk_full(exc, target.parent):
            raise disk_full_error(target, size, free, written=_bytes_under(tmp)) from None
        if isinstance(exc, OSError):
            raise ScratchLLMError(f"{target}: cannot write ({exc.strerror or exc})") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def recover_directory(target: str | os.PathLike[str]) -> Path | None:
    """After a crash between `atomic_directory`'s two renames, `target` is missing and its previous
    contents wait in `.NAME.old-*`: rename the newest back. Returns the recovered path, or None."""
    target = Path(target)
    if target.exists():
        return None
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return None
    os.rename(olds[-1], target)
    return target
