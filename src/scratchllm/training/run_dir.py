"""The run directory: what a training run leaves on disk and reads back to resume.

    RUNDIR/run_config.json                 resolved model + train config and derived values
    RUNDIR/metrics.jsonl                   one JSON object per log or eval step
    RUNDIR/loss.png                        train and validation loss against tokens seen
    RUNDIR/samples.txt                     text samples, when sample_every > 0
    RUNDIR/checkpoints/step-0000500/       model directory + trainer.pt (optimizer, step, RNG, data)
    RUNDIR/best/                           model directory of the best validation metric
    RUNDIR/final/                          model directory when training finished

`checkpoint.load(RUNDIR)` resolves final/, else best/, else the newest checkpoints/step-N/.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_FILE = "trainer.pt"


_STEP_DIR = re.compile(r"step-(\d+)")



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
            print("note: matplotlib is not installed, so no loss plot (pip install matplotlib)", file=sys.stderr)
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
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


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

