"""The run directory: what a training run leaves on disk and reads back to resume.

    RUNDIR/run_config.json                 resolved model + train config and derived values
    RUNDIR/tokenizer.json                  the run's tokenizer (not for GPT-2's), from the start, so that
                                           a resume before the first checkpoint uses the same ids
    RUNDIR/tokenizer/                      ... or a Hugging Face tokenizer's files (tokenizer.json, ...)
    RUNDIR/metrics.jsonl                   one JSON object per log or eval step
    RUNDIR/loss.png                        train and validation loss against tokens seen
    RUNDIR/samples.txt                     text samples, when sample_every > 0
    RUNDIR/checkpoints/step-0000500/       model directory + trainer.pt (optimizer, step, RNG, data)
    RUNDIR/best/                           model directory of the best validation metric
    RUNDIR/final/                          model directory when training finished

`checkpoint.load(RUNDIR)` resolves final/, else best/, else the newest checkpoints/step-N/.
`prepare_run_dir` puts back what a kill during a save left half-renamed and clears the temporaries;
`read_run_config` and `run_tokenizer` are what a resume reads before the first checkpoint exists.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.core.console import log
from scratchllm.core.files import atomic_path, is_disk_full, read_json, recover_directory, write_atomic, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import TOKENIZER_FILE, Tokenizer

TRAINER_FILE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
HF_TOKENIZER_DIR = "tokenizer"
_STEP_DIR = re.compile(r"step-(\d+)")
# What an interrupted save leaves: atomic_directory's `.NAME.tmp-*` / `.NAME.old-*`, atomic_path's
# `.NAME.XXXX.tmp` (and `.loss.png.XXXX.png`), and the loss plot's temporary of older versions.
_OLD_DIR = re.compile(r"\.(.+)\.old-[0-9a-f]+")
_TEMPORARY = re.compile(r"\..+\.tmp-\w+|\..+\.tmp|\.loss\.tmp-\d+\.png|\.loss\.png\..+\.png")


def checkpoint_dirs(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete step checkpoints (those holding trainer.pt), oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.fullmatch(d.name)
            if m and (d / TRAINER_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def read_metrics(path: Path, up_to_step: int | None) -> list[dict[str, Any]]:
    """metrics.jsonl lines with step <= up_to_step (a line cut by a crash is dropped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and (up_to_step is None or row.get("step", 0) <= up_to_step):
                rows.append(row)
    return rows


_PLOT_NOTE_SHOWN = False


def plot_losses(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Train and validation loss against tokens seen, as a PNG (None when matplotlib is missing)."""
    global _PLOT_NOTE_SHOWN
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _PLOT_NOTE_SHOWN:
            log("note: matplotlib is not installed, so no loss plot (pip install matplotlib)")
            _PLOT_NOTE_SHOWN = True
        return None
    path = Path(path)
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    if train:
        ax.plot([t for t, _ in train], [v for _, v in train], label="train", linewidth=1)
    if val:
        ax.plot([t for t, _ in val], [v for _, v in val], "o-", label="validation", markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, "loss plot", suffix=".png") as tmp:  # savefig picks the format by suffix
            fig.savefig(tmp, dpi=100)
    except OSError as exc:
        raise ScratchLLMError(f"loss plot {path}: cannot write ({exc.strerror or exc})") from None
    return path


def prepare_run_dir(out: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> list[str]:
    """Make `out` ready for a training (re)start; returns what it repaired, one note per item.

    A kill between atomic_directory's two renames leaves `best/` (or `final/`, or a step) missing
    and its previous contents in `.best.old-*`: that is renamed back, never deleted. Other
    temporaries of interrupted writes are removed, and nothing else. The tokenizer (unless GPT-2's,
    which run_config.json names) is written as RUNDIR/tokenizer.json, so the run's ids are on disk
    before its first checkpoint.
    """
    out = Path(out)
    notes = []
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        for folder in (out, out / "checkpoints"):
            for path in sorted(folder.iterdir()):
                old = _OLD_DIR.fullmatch(path.name)
                if old and path.is_dir() and recover_directory(folder / old.group(1)) is not None:
                    notes.append(f"{folder / old.group(1)}: restored from {path.name} (a save was interrupted)")
            for path in sorted(folder.iterdir()):
                if _OLD_DIR.fullmatch(path.name) or _TEMPORARY.fullmatch(path.name):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    except OSError as exc:
        raise ScratchLLMError(f"run directory {out}: cannot prepare it ({exc.strerror or exc})") from None
    if tokenizer is not None:  # its files as read (not tokenizer.save, which would repoint its description)
        tokenizer.write_files(out / HF_TOKENIZER_DIR if tokenizer.hf_files else out)
    return notes


def read_run_config(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """RUNDIR/run_config.json; {} for a run whose checkpoints outlived it; None when `out` holds no run."""
    out = Path(out)
    path = out / RUN_CONFIG_FILE
    if path.is_file():
        return read_json(path, "run config")
    return {} if checkpoint_dirs(out) else None


def run_tokenizer(out: str | os.PathLike[str], run_config: dict[str, Any]) -> Tokenizer:
    """The tokenizer a run started with, for a resume before its first checkpoint: RUNDIR/tokenizer.json
    (or RUNDIR/tokenizer/, a Hugging Face one), else what run_config.json records (GPT-2's, or a
    tokenizer file checked by its SHA-256)."""
    out = Path(out)
    recorded = run_config.get("tokenizer")
    stop_ids = (recorded.get("stop_ids") if isinstance(recorded, dict) else None) or ()
    if (out / HF_TOKENIZER_DIR / TOKENIZER_FILE).is_file():
        tok = Tokenizer.from_hf(out / HF_TOKENIZER_DIR, stop_ids=stop_ids)
    elif (out / TOKENIZER_FILE).is_file():
        tok = Tokenizer.load(out / TOKENIZER_FILE)
    elif isinstance(recorded, dict) and (recorded.get("type") == "gpt2" or (recorded.get("type") in ("bpe", "hf")
                                                                             and recorded.get("file"))):
        try:
            tok = Tokenizer.from_description(recorded)
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{out / RUN_CONFIG_FILE}: cannot rebuild the run's tokenizer: {exc}") from None
    else:
        raise ScratchLLMError(f"{out / RUN_CONFIG_FILE}: records no tokenizer that can be rebuilt "
                              f"(got {json.dumps(recorded)[:80]}); start the run again")
    want = recorded.get("vocab_size") if isinstance(recorded, dict) else None
    if want is not None and want != tok.vocab_size:
        raise ScratchLLMError(f"{out}: the run's tokenizer has {tok.vocab_size} ids, but run_config.json records "
                              f"{want}; start the run again")
    return tok


def rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])



class RunDir:
    """One training run's directory, as the loop writes and reads it (only rank 0 writes)."""

    def __init__(self, path: str | os.PathLike[str], main: bool = True):
        self.path, self.main = Path(path), main
        self.metrics_path = self.path / METRICS_FILE
        self.rows: list[dict[str, Any]] = []  # metrics.jsonl as written so far

    def checkpoints(self) -> list[tuple[int, Path]]:
        return checkpoint_dirs(self.path)

    def start(self, resume: bool, tokenizer: Tokenizer | None = None) -> Path | None:
        """Make the directory ready; return the checkpoint to resume from (None: a fresh start).

        A fresh run refuses a directory that already holds checkpoints. A model directory that a
        kill mid-save left renamed aside is put back, and temporaries of interrupted writes are
        removed (`prepare_run_dir`, which also writes the run's tokenizer).
        """
        existing = self.checkpoints()
        if existing and not resume:
            raise ScratchLLMError(f"{self.path}: already holds checkpoints (up to step {existing[-1][0]}); "
                                  "resume it (--resume) or choose another output directory")
        if self.main:
            for note in prepare_run_dir(self.path, tokenizer):
                log(note)
            existing = self.checkpoints()  # a step directory may have been put back
        return existing[-1][1] if resume and existing else None

    @staticmethod
    def read_trainer(checkpoint: Path, world_size: int) -> dict[str, Any]:
        """trainer.pt of a step checkpoint: optimizer, step, tokens, best, per-rank task and RNG state."""
        state = torch.load(checkpoint / TRAINER_FILE, map_location="cpu", weights_only=True)
        if state.get("world_size", 1) != world_size:
            raise ScratchLLMError(f"{checkpoint}: written by {state.get('world_size')} process(es); "
                                  f"resume with the same number (now {world_size})")
        return state

    def keep_metrics(self, up_to_step: int) -> None:
        """Start metrics.jsonl from its lines up to `up_to_step` (-1: none): a resumed run logs the
        steps after its checkpoint again, so later lines (from after the checkpoint) are dropped."""
        if not self.main:
            return
        self.rows = read_metrics(self.metrics_path, up_to_step)
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        self.rows.append(row)
        _append(self.metrics_path, json.dumps(row) + "\n", "metrics file")

    def plot(self, rows: list[dict[str, Any]] | None = None) -> None:
        if self.main and (rows or self.rows):
            plot_losses(rows or self.rows, self.path / "loss.png")

    def write_run_config(self, run_config: dict[str, Any]) -> None:
        if self.main:
            write_json(self.path / RUN_CONFIG_FILE, run_config, default=str, ensure_ascii=True)

    def append_sample(self, step: int, text: str) -> None:
        if self.main:
            _append(self.path / "samples.txt", f"--- step {step} ---\n{text}\n\n", "samples file")

    def step_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step:07d}"

    def prune(self, keep_last: int) -> None:
        """Remove all but the newest `keep_last` step checkpoints."""
        for _, old in self.checkpoints()[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _append(path: Path, text: str, what: str) -> None:
    """Add text to a log file of the run (a line cut by a crash is skipped when read); a full disk
    or another failure is one line, not a traceback."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        if is_disk_full(exc, path.parent):
            raise ScratchLLMError(f"{what} {path}: not enough disk space to add a line; the checkpoints written "
                                  "so far are kept (free some space, then --resume)") from None
        raise ScratchLLMError(f"{what} {path}: cannot write ({exc.strerror or exc})") from None
