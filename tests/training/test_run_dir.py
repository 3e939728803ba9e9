"""The run directory under faults: a process killed between the two renames of a save keeps the
previous best/ (it is put back on resume, not deleted), temporaries of interrupted writes are
cleared, and a disk that fills up during a checkpoint is one line naming the path and the space."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.recipes.pretrain import pretrain
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.run_dir import RunDir, checkpoint_dirs, prepare_run_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = dict(emb_dim=64, n_layers=2, n_heads=4, context_length=32)


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def hidden(run: Path) -> list[str]:
    return sorted(p.name for folder in (run, run / "checkpoints") for p in folder.iterdir() if p.name.startswith("."))


# A process that re-saves RUNDIR/best and is SIGKILLed right after renaming the old best/ aside, before
# the new one is renamed into place: what a kill (or power cut) in that instant leaves.
KILL_BETWEEN_RENAMES = """
import os, signal, sys
from scratchllm.checkpoint import load, save_model
rename = os.rename
def rename_then_die(src, dst):
    rename(src, dst)
    if ".old-" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
model, tok = load(sys.argv[1] + "/final")
save_model(model, sys.argv[1] + "/best", tok)
"""


def test_a_kill_between_the_renames_of_best_keeps_the_previous_best(tmp_path, verdict, tok_file):
    run = tmp_path / "run"
    pretrain(verdict, dict(TINY), run, tokenizer=tok_file, max_steps=4, batch_size=4, eval_every=2, eval_batches=2,
             save_every=2, log_every=1, device="cpu", progress=False)
    best = tree(run / "best")
    died = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(run)], env=ENV)
    assert died.returncode == -signal.SIGKILL
    assert not (run / "best").exists() and len(list(run.glob(".best.old-*"))) == 1
    # ... and temporaries of other writes a kill interrupted (the loss plot's included)
    (run / ".loss.tmp-4242.png").write_bytes(b"half a png")
    (run / ".loss.png.k2j3h4.png").write_bytes(b"half a png")
    (run / ".metrics.jsonl.tmp-4242").write_text("{}")
    (run / "checkpoints" / ".step-0000006.tmp-abcd1234").mkdir()

    done = subprocess.run([sys.executable, "-m", "scratchllm", "pretrain", "--resume", str(run)], env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{run / 'best'}: restored from .best.old-" in done.stderr
    assert tree(run / "best") == best  # the previous best, not lost (before: deleted as a stale temporary)
    assert hidden(run) == []


def test_prepare_run_dir_puts_back_what_it_can_and_removes_only_temporaries(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / ".final.old-0a1b2c3d").mkdir()  # killed after the new final/ was in place: the old one goes
    (run / ".best.old-1234abcd").mkdir()  # killed between the renames: best/ comes back
    (run / ".best.old-1234abcd" / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / ".hidden-by-the-user").write_text("mine")
    notes = prepare_run_dir(run)
    assert notes == [f"{run / 'best'}: restored from .best.old-1234abcd (a save was interrupted)"]
    assert (run / "best" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in run.iterdir()) == [".hidden-by-the-user", "best", "checkpoints", "final", "notes.txt"]


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, verdict, tok_file, capsys,
                                                                           monkeypatch):
    """torch.save on a full disk raises its own RuntimeError ("unexpected pos ...", measured on a 20 MB
    tmpfs): the user got a 30-line traceback and exit 1. No small file system can be mounted in a test,
    so trainer.pt's write fails here as it did there, and the disk reports nothing free afterwards."""
    run = tmp_path / "run"
    full = {"now": False}
    real_usage, real_save = shutil.disk_usage, torch.save

    def disk_usage(path):
        usage = real_usage(path)
        return usage._replace(free=4096) if full["now"] else usage

    def save(obj, f, *args, **kwargs):
        if ".step-0000004.tmp-" in str(f):  # the checkpoint being written, in its temporary directory
            full["now"] = True
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7490496 vs 7490388")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(torch, "save", save)
    model = tmp_path / "tiny.json"
    model.write_text(json.dumps(TINY))
    args = ["pretrain", "--data", str(verdict), "--tokenizer", str(tok_file), "--model", str(model), "--out", str(run),
            "--max-steps", "6", "--batch-size", "4", "--save-every", "2", "--eval-every", "0", "--device", "cpu",
            "--no-progress"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    target = run / "checkpoints" / "step-0000004"
    assert err.startswith(f"scratchllm pretrain: error: {target}: not enough disk space: needs more than the ")
    assert err.endswith("; nothing was replaced (free some space or write elsewhere)")
    assert [step for step, _ in checkpoint_dirs(run)] == [2] and hidden(run) == []
    monkeypatch.undo()  # space freed: the run resumes from the checkpoint it kept
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert [step for step, _ in checkpoint_dirs(run)] == [4, 6] and (run / "final").is_dir()


def test_a_full_disk_while_logging_metrics_is_one_line(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    path = run.metrics_path
    run.append_metrics({"step": 1})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", no_space)
    with pytest.raises(ScratchLLMError, match=rf"^metrics file {path}: not enough disk space to add a line; the "
                                              r"checkpoints written so far are kept \(free some space, then --resume\)$"):
        run.append_metrics({"step": 2})
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "hf"])
def test_the_run_tokenizer_is_read_back_for_every_kind(tmp_path, tok_file, hf_tokenizer_dir, kind):
    """What a resume before the first checkpoint reads: RUNDIR/tokenizer.json (ours), RUNDIR/tokenizer/
    (a Hugging Face tokenizer's files, chat template and stop ids kept), or GPT-2's by name."""
    from scratchllm.checkpoint.model_dir import tokenizer_spec
    from scratchllm.training.run_dir import run_tokenizer

    tok = {"gpt2": Tokenizer.gpt2, "bpe": lambda: Tokenizer.load(tok_file),
           "hf": lambda: Tokenizer.from_hf(hf_tokenizer_dir("llama3"), stop_ids=[7])}[kind]()
    run = tmp_path / "run"
    prepare_run_dir(run, tok)
    recorded = {"tokenizer": {"vocab_size": tok.vocab_size, **tok.spec}}
    again = run_tokenizer(run, recorded)
    assert tokenizer_spec(again)["type"] == tokenizer_spec(tok)["type"] == kind
    assert again.vocab_size == tok.vocab_size and again.encode("Hello, world!") == tok.encode("Hello, world!")
    assert again.stop_ids == tok.stop_ids and again.to_json_bytes() == tok.to_json_bytes()
    if kind == "hf":
        assert again.chat_template is not None and sorted(p.name for p in (run / "tokenizer").iterdir()) == sorted(tok.hf_files)
