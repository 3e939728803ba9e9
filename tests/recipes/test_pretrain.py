"""`pretrain`'s settings on a resume: a run keeps its tokenizer, model, split and data, also when it
was killed before its first checkpoint (then it starts again from step 0, saying so); a folder with
no run, a different tokenizer or model, and a model too big for memory are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchllm.checkpoint import load
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.recipes.pretrain import pretrain
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.run_dir import checkpoint_dirs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scratchllm", "pretrain", *map(str, args)]


def logged_steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").is_file():
        return []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in rows if "loss" in r]


def test_resume_before_the_first_checkpoint_trains_the_same_model(tmp_path, verdict, tok_file):
    """Killed (SIGKILL) after run_config.json and some steps, before the first --save-every: the
    resume used to fall back to GPT-2's tokenizer and train a 50,257-id model over the run."""
    run, tok_path = tmp_path / "R1", tmp_path / "tok.json"
    shutil.copy(tok_file, tok_path)
    proc = subprocess.Popen(cli("--data", verdict, "--tokenizer", tok_path, "--model", "gpt-tiny", "--context-length", 32,
                                "--out", run, "--max-steps", 3000, "--save-every", 1000, "--eval-every", 0,
                                "--log-every", 1, "--batch-size", 4, "--device", "cpu"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(logged_steps(run)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert checkpoint_dirs(run) == [] and (run / "run_config.json").is_file()
    recorded = json.loads((run / "run_config.json").read_text())
    assert recorded["model"]["vocab_size"] == 384

    def resume(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(cli("--resume", run, "--max-steps", 3, *extra), env=ENV, capture_output=True, text=True)

    # A run written before RUNDIR/tokenizer.json existed: its run_config.json names the tokenizer file
    # and its SHA-256, so a file that changed since is refused rather than used.
    shutil.move(run / "tokenizer.json", tmp_path / "kept.json")
    Tokenizer.train([verdict.read_text(encoding="utf-8")], 300).save(tok_path)
    failed = resume()
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert failed.stderr.startswith(f"scratchllm pretrain: error: {run / 'run_config.json'}: cannot rebuild the run's "
                                    f"tokenizer: tokenizer file {tok_path}: SHA-256 is ")
    assert failed.stderr.count("\n") == 1
    assert json.loads((run / "run_config.json").read_text()) == recorded  # untouched
    # Given again on the command line, a different tokenizer or model is refused too.
    shutil.move(tmp_path / "kept.json", run / "tokenizer.json")
    with pytest.raises(ScratchLLMError, match=rf"pretrain --resume {run}: --tokenizer {tok_path} is not the run's "
                                              r"tokenizer \(384 ids\); a resumed run keeps its own"):
        pretrain(resume=run, tokenizer=tok_path, max_steps=3, progress=False)
    with pytest.raises(ScratchLLMError, match=r"--model gpt-mini has emb_dim=192, the run has 64; a resumed run keeps "
                                              r"its model \(leave --model out\)"):
        pretrain(resume=run, model="gpt-mini", max_steps=3, progress=False)

    # With RUNDIR/tokenizer.json the run needs nothing outside its directory: the tokenizer file can go.
    tok_path.unlink()
    done = resume()
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"{run}: no checkpoint yet (the run stopped before its first save); starting again from step 0 "
            "with the settings in its run_config.json") in done.stderr
    after = json.loads((run / "run_config.json").read_text())
    # The same settings; only the tokenizer is now read from the run's copy (the same SHA-256).
    moved = json.loads(json.dumps(after).replace(str(run / "tokenizer.json"), str(tok_path)))
    assert moved["model"] == recorded["model"] and moved["tokenizer"] == recorded["tokenizer"]
    sources = lambda data: [source["sha256"] for source in data.pop("sources")]  # noqa: E731 (paths differ by a symlink)
    assert sources(moved["data"]) == sources(recorded["data"]) and moved["data"] == recorded["data"]
    assert after["train"]["max_steps"] == 3 and "resumed_from_step" not in after
    model, tok = load(run)
    assert model.config.vocab_size == 384 and tok.to_json_bytes() == Tokenizer.load(tok_file).to_json_bytes()
    assert logged_steps(run) == [1, 2, 3]


def test_resume_on_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    for folder in (tmp_path, tmp_path / "missing"):
        assert main(["pretrain", "--resume", str(folder)]) == 2
        assert capsys.readouterr().err == (f"scratchllm pretrain: error: pretrain --resume {folder}: no run to resume "
                                           "there (no run_config.json, no checkpoints); start one with --data and --model\n")
    assert sorted(tmp_path.iterdir()) == []


def test_a_model_too_big_for_memory_is_refused_before_anything_is_written(tmp_path, capsys, verdict, tok_file):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"emb_dim": 2**22, "n_layers": 2, "n_heads": 4}))
    start = time.perf_counter()
    assert main(["pretrain", "--data", str(verdict), "--tokenizer", str(tok_file), "--model", str(huge),
                 "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert time.perf_counter() - start < 10  # before: an allocation of hundreds of GB, then a traceback
    err = capsys.readouterr().err
    assert err.startswith("scratchllm pretrain: error: pretrain: ") and err.count("\n") == 1
    assert "(emb_dim 4194304, n_layers 2, vocab_size 384) need" in err and "GB to train, but cpu has" in err
    assert not (tmp_path / "run").exists()
