"""scratchllm.files: atomic writes keep the old file on failure; reads fail with one-line errors."""

import os
import stat
from pathlib import Path

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.core.files import atomic_path, read_text, write_atomic, write_json


def test_write_json_replaces_whole_file_and_leaves_no_temporaries(tmp_path: Path):
    path = tmp_path / "sub" / "report.json"
    write_json(path, {"accuracy": 0.97, "name": "žluťoučký"})
    write_json(path, {"accuracy": 0.98})
    assert path.read_text(encoding="utf-8") == '{\n  "accuracy": 0.98\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "metrics.json"
    write_atomic(path, "good\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("interrupted")
    with pytest.raises(ScratchLLMError, match=r"report file .*metrics.json: cannot write as JSON"):
        write_json(path, {"bad": object()}, "report file")
    assert path.read_text(encoding="utf-8") == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_into_a_file_as_directory_is_one_line_error(tmp_path: Path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=r"out .*file/plot.png: cannot write \("):
        write_atomic(tmp_path / "file" / "plot.png", b"png", "out")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "data file {path}: no such file"),
        ("latin1.txt", "café".encode("latin-1"), "data file {path}: not UTF-8 text (unexpected end of data at byte 3)"),
        ("folder", "dir", "data file {path}: is a directory, expected a UTF-8 text file"),
    ],
)
def test_read_text_errors_name_the_file(tmp_path: Path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ScratchLLMError) as err:
        read_text(path, "data file")
    assert str(err.value) == message.format(path=path)


def test_read_text_drops_a_byte_order_mark(tmp_path: Path):
    (tmp_path / "sheet.tsv").write_bytes("\ufefflabel\ttext\n".encode("utf-8"))
    assert read_text(tmp_path / "sheet.tsv") == "label\ttext\n"


def test_written_files_get_the_usual_permissions(tmp_path):
    """The temporary file is private (mkstemp); what lands at the destination follows the umask."""
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"k": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


# --------------------------------------------------------------------------------------------------
# A full disk, and outputs that already exist


def _disk_with(monkeypatch, free_bytes: int) -> None:
    """Make shutil.disk_usage report `free_bytes` free (no small file system can be mounted here)."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, (1 << 30) - free_bytes, free_bytes))


def test_a_full_disk_while_writing_a_directory_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    """torch.save reports ENOSPC as its own RuntimeError without the errno (what a 20 MB tmpfs gave):
    with next to nothing free, that is a full disk, said in one line with the space, the old directory kept."""
    from scratchllm.core.files import atomic_directory

    target = tmp_path / "step-1"
    with atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"old" * 100)
    _disk_with(monkeypatch, 3_000_000)

    def write_and_fail(tmp):
        (tmp / "weights.bin").write_bytes(b"x" * 2_500_000)
        _disk_with(monkeypatch, 0)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7490496 vs 7490388")

    with pytest.raises(ScratchLLMError) as info:
        with atomic_directory(target, may_replace=lambda p: True) as tmp:
            write_and_fail(tmp)
    assert str(info.value) == (f"{target}: not enough disk space: needs more than the 3.0 MB that were free (the disk "
                               "filled up after 2.5 MB); nothing was replaced (free some space or write elsewhere)")
    assert (target / "weights.bin").read_bytes() == b"old" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]
    # Known in advance to be too big: refused before anything is written.
    _disk_with(monkeypatch, 1_000_000)
    with pytest.raises(ScratchLLMError, match=r"step-1: not enough disk space: needs at least 5.0 MB, 1.0 MB free"):
        with atomic_directory(target, may_replace=lambda p: True, size=5_000_000):
            raise AssertionError("the block must not run")
    # Another failure with space to spare is not mistaken for a full disk.
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_directory(target, may_replace=lambda p: True):
            raise RuntimeError("a bug")


def test_a_full_disk_while_writing_a_file_names_the_file_and_its_size(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_atomic(path, "good\n")

    def no_space(self, data):  # as a real write fails: OSError 28
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    _disk_with(monkeypatch, 0)
    with pytest.raises(ScratchLLMError) as info:
        write_json(path, {"rows": "x" * 2_000_000}, "report file")
    assert str(info.value).startswith(f"report file {path}: not enough disk space: needs at least 2.0 MB, 0.0 MB free")
    monkeypatch.undo()
    assert path.read_text() == "good\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_check_overwrite_refuses_an_existing_file_unless_asked(tmp_path):
    from scratchllm.core.files import check_overwrite

    out = tmp_path / "responses.json"
    assert check_overwrite(out, False, "responses file") == out  # not there yet: fine
    out.write_text("[]")
    with pytest.raises(ScratchLLMError, match=rf"^responses file {out}: already exists \(pass overwrite=True / --overwrite"):
        check_overwrite(out, False, "responses file")
    assert check_overwrite(out, True, "responses file") == out
    with pytest.raises(ScratchLLMError, match=rf"^responses file {tmp_path}: is a directory, expected a file path$"):
        check_overwrite(tmp_path, True, "responses file")
