"""The best small GPT per CPU-minute: nanoGPT's CPU "baby GPT" recipe against the project's
small-budget recipe (`scratchllm.recipes.demo`), alternately in one process, on the same text.

Held-out text is the last 10% of the corpus's characters (tinyshakespeare by default); each recipe
trains its own tokenizer on the first 90% only. Bits per byte are measured after each run, outside
its clock, over non-overlapping windows of each model's own context covering the whole held-out
text, for the final model and for every checkpoint (their elapsed seconds give the curve).

Per round: the baseline runs its 2,000 steps (its wall time W is the yardstick, all of it:
tokenizer, data, evaluations, checkpoints), then the project's recipe runs with budgets of
W * each `--fractions` (default 1 and 0.5): bits per byte at equal time, and whether half the time
reaches the target (`--target`, 2.74: the baseline as measured for the issue). `--ablate NAME,...`
adds the project's recipe with one switch turned back (see ABLATIONS), with the budget of the first
of `--fractions` (the baseline's wall time by default).

    python -m benchmarks.speedrun                           # 1 round: about 4 minutes on 2 cores
    python -m benchmarks.speedrun --rounds 3 --ablate all   # medians over 3 rounds, every ablation
    python -m benchmarks.speedrun --fractions 0.25 --baseline-steps 500   # a quick look
    python -m benchmarks.speedrun --data other.txt --out runs/speedrun-other
    python -m benchmarks.speedrun --data python --fractions 1.8 --ablate context-64   # the demo's corpus and time

Writes OUT/results.json (every run: settings, wall time, bits per byte, curve) and OUT/speedrun.png
(bits per byte against seconds for every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.train_step import machine_load
from scratchllm.checkpoint.loader import load
from scratchllm.data.tokens import corpus_from_texts
from scratchllm.recipes.demo import (NANOGPT_BABY, SMALL_BUDGET, Recipe, python_corpus, split_documents, split_text,
                                     train_recipe)
from scratchllm.recipes.pretrain import PretrainTask
from scratchllm.training.run_dir import checkpoint_dirs

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

# One switch of the project's recipe turned back to the baseline's choice: what it buys.
ABLATIONS: dict[str, dict[str, Any]] = {
    "adamw": dict(train=dict(optimizer="adamw")),
    "bytes": dict(vocab_size=257),
    "gelu": dict(model=dict(mlp="gelu")),
    "learned-pos": dict(model=dict(position="learned")),
    "layernorm": dict(model=dict(norm="layernorm")),
    "tied": dict(model=dict(tie_embeddings=True)),
    "gpt2-init": dict(model=dict(zero_init_proj=False)),
    "context-64": dict(model=dict(context_length=64)),
    "batch-12": dict(train=dict(batch_size=12)),
}


def held_out_bpb(run_dir: Path, train_docs: list[str], val_docs: list[str], batch_size: int = 32) -> dict[str, Any]:
    """Bits per byte of the run's final model and of each kept checkpoint on the whole held-out text."""
    points = []
    corpus = None
    dirs = [(step, d) for step, d in checkpoint_dirs(run_dir)] + [(None, run_dir / "final")]
    for step, d in dirs:
        model, tok = load(d, device="cpu")
        if corpus is None:  # one tokenizer per run: encode once
            corpus = corpus_from_texts(train_docs, val_docs, tok)
        task = PretrainTask(corpus, batch_size, model.config.context_length, eval_batches=0, tokenizer=tok)
        with torch.no_grad():
            bpb = task.evaluate(model)["val_bpb"]
        elapsed = None
        if step is not None:
            elapsed = torch.load(d / "trainer.pt", map_location="cpu", weights_only=True)["elapsed_s"]
        points.append({"step": step, "elapsed_s": elapsed, "bpb": bpb})
    return {"final_bpb": points[-1]["bpb"], "checkpoints": points[:-1]}


def run_one(recipe: Recipe, train_docs: list[str], val_docs: list[str], work: Path, label: str,
            minutes: float | None = None, max_steps: int | None = None, checkpoints: int = 8) -> dict[str, Any]:
    out = work / label.replace(" ", "-").replace("#", "-round")
    t = time.perf_counter()
    summary = train_recipe(recipe, train_docs, val_docs, out, minutes=minutes, max_steps=max_steps,
                           checkpoints=checkpoints, source="speedrun")
    wall = time.perf_counter() - t
    measured = held_out_bpb(out, train_docs, val_docs)
    curve = [{"seconds": summary["prep_s"] + p["elapsed_s"], "bpb": p["bpb"], "step": p["step"]}
             for p in measured["checkpoints"]]
    row = {"label": label, "recipe": recipe.name, "budget_s": None if minutes is None else minutes * 60,
           "wall_s": wall, "prep_s": summary["prep_s"], "train_s": summary["train_time_s"], "steps": summary["steps"],
           "tokens": summary["tokens"], "passes": summary["tokens"] / summary["corpus"]["train_tokens"],
           "final_bpb": measured["final_bpb"], "curve": curve + [{"seconds": wall, "bpb": measured["final_bpb"],
                                                                   "step": summary["steps"]}],
           "load": machine_load()}
    print(f"  {label:<28} {wall:6.1f} s  {row['steps']:5d} steps  {row['passes']:5.2f} passes  "
          f"bpb {row['final_bpb']:.3f}   (load {row['load']})", flush=True)
    return row


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    colours: dict[str, Any] = {}
    for row in rows:
        key = row["label"].rsplit("#", 1)[0]
        xs = [p["seconds"] for p in row["curve"]]
        ys = [p["bpb"] for p in row["curve"]]
        line = ax.plot(xs, ys, marker="o", ms=3, lw=1, color=colours.get(key),
                       label=None if key in colours else key)[0]
        colours.setdefault(key, line.get_color())
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target}")
    ax.set_xlabel("seconds of wall time (tokenizer, data, training, evaluations)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_ylim(top=min(5.0, max(p["bpb"] for r in rows for p in r["curve"]) + 0.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def summarise(rows: list[dict[str, Any]], target: float) -> list[str]:
    """Median per label over rounds, and the ratios the issue asks for."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["label"].rsplit("#", 1)[0], []).append(row)
    base = by.get("baseline")
    base_wall = statistics.median(r["wall_s"] for r in base) if base else None
    base_bpb = statistics.median(r["final_bpb"] for r in base) if base else None
    lines = ["| run | wall s | steps | passes | held-out bpb | vs baseline at equal time |", "|---|---|---|---|---|---|"]
    for label, group in by.items():
        wall = statistics.median(r["wall_s"] for r in group)
        bpb = statistics.median(r["final_bpb"] for r in group)
        vs = ""
        if base and label != "baseline":
            at = baseline_at(base, wall)
            vs = f"{(at - bpb) / at:+.1%} ({at:.3f} at {wall:.0f} s)" if at is not None else ""
        lines.append(f"| {label} | {wall:.1f} | {statistics.median(r['steps'] for r in group):.0f} | "
                     f"{statistics.median(r['passes'] for r in group):.2f} | {bpb:.3f} | {vs} |")
    if base:
        lines.append(f"\nbaseline: {base_wall:.1f} s, {base_bpb:.3f} bits per byte (median of {len(base)})")
        reached = sorted((statistics.median(r["wall_s"] for r in g), label) for label, g in by.items()
                         if label != "baseline" and statistics.median(r["final_bpb"] for r in g) <= target)
        if reached:
            wall, label = reached[0]
            lines.append(f"fastest run at or below {target} bits per byte: {label}, {wall:.1f} s = "
                         f"{wall / base_wall:.2f} of the baseline's wall time (the whole run)")
        else:
            lines.append(f"no run of the project's recipe reached {target} bits per byte")
        for label, group in by.items():
            times = [t for r in group if (t := first_at_or_below(r["curve"], target)) is not None]
            if len(times) == len(group):  # every round reached it
                t = statistics.median(times)
                lines.append(f"{label}: first measured at or below {target} after {t:.1f} s = "
                             f"{t / base_wall:.2f} of the baseline's wall time")
    return lines


def first_at_or_below(curve: list[dict[str, Any]], target: float) -> float | None:
    """Seconds of the first point of a run's curve (its checkpoints, then its end) at or below
    `target`: an upper bound on its time to the target, since nothing is interpolated."""
    return next((p["seconds"] for p in curve if p["bpb"] <= target), None)


def baseline_at(base_rows: list[dict[str, Any]], seconds: float) -> float | None:
    """The baseline's bits per byte at `seconds` (median over rounds of its curve, linearly
    interpolated; its final value past its end)."""
    values = []
    for row in base_rows:
        curve = row["curve"]
        if seconds >= curve[-1]["seconds"]:
            values.append(curve[-1]["bpb"])
            continue
        for a, b in zip(curve, curve[1:]):
            if a["seconds"] <= seconds <= b["seconds"]:
                w = (seconds - a["seconds"]) / max(b["seconds"] - a["seconds"], 1e-9)
                values.append(a["bpb"] + w * (b["bpb"] - a["bpb"]))
                break
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(SHAKESPEARE), help="UTF-8 text file, its last 10%% of characters held out; "
                   "or 'python': the demo's corpus (the standard library, 10%% of its files held out, as `scratchllm demo`)")
    p.add_argument("--out", default="runs/speedrun", help="where results.json and speedrun.png go")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians are reported)")
    p.add_argument("--fractions", default="1,0.5", help="budgets of the project's recipe, as fractions of the baseline's wall time")
    p.add_argument("--baseline-steps", type=int, default=None, help="shorten the baseline (default: its 2,000 steps)")
    p.add_argument("--ablate", default="", help=f"comma-separated switches to turn back, or 'all': {', '.join(ABLATIONS)}")
    p.add_argument("--target", type=float, default=2.74, help="bits per byte to reach")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--keep", action="store_true", help="keep the run directories under OUT/runs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_docs, val_docs = read_corpus(args.data)
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if not fractions or not all(f > 0 for f in fractions):
        p.error(f"--fractions {args.fractions!r}: expected positive numbers separated by commas")
    ablate = list(ABLATIONS) if args.ablate == "all" else [a for a in args.ablate.split(",") if a]
    for name in ablate:
        if name not in ABLATIONS:
            p.error(f"--ablate {name}: expected one of {', '.join(ABLATIONS)}")
    out = Path(args.out)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; {args.data}: {sum(map(len, train_docs)):,} training and "
          f"{sum(map(len, val_docs)):,} held-out characters; load {machine_load()}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = out / "runs" if args.keep else Path(tmp)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            base = run_one(NANOGPT_BABY, train_docs, val_docs, work, f"baseline#{r}", max_steps=args.baseline_steps)
            rows.append(base)
            minutes = base["wall_s"] / 60
            for f in fractions:
                rows.append(run_one(SMALL_BUDGET, train_docs, val_docs, work, f"scratchllm x{f:g}#{r}", minutes=minutes * f))
            for name in ablate:  # with the first fraction's budget, beside the recipe's own run
                recipe = SMALL_BUDGET.replace(**ABLATIONS[name], name=f"scratchllm-{name}")
                rows.append(run_one(recipe, train_docs, val_docs, work, f"without {name}#{r}", minutes=minutes * fractions[0]))
    lines = summarise(rows, args.target)
    print("\n" + "\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "summary": lines}, indent=1))
    if plot(rows, args.target, out / "speedrun.png"):
        print(f"wrote {out / 'speedrun.png'} and {out / 'results.json'}")


def read_corpus(data: str) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): a file's first 90% and last 10% of characters, or
    for "python" the demo's own split of the standard library's files."""
    if data == "python":
        return split_documents([text for _, text in python_corpus()], 0.1, seed=0)
    train_text, val_text = split_text(Path(data).read_text(encoding="utf-8"), 0.1)
    return [train_text], [val_text]


if __name__ == "__main__":
    main()
