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
