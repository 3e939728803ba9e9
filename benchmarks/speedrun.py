"""The best small GPT per CPU-minute: nanoGPT's CPU "baby GPT" recipe against the project's
small-budget recipe (`scratchllm.recipes.demo`), alternately in one process, on the same text.

Three parts of the text (tinyshakespeare by default): both recipes train on the first 80% of its
characters (each trains its own tokenizer on that alone); the last 10% is the *validation* text,
on which the recipe's choices were made (every earlier measurement in docs/LOG.md held it out) and
on which new choices are made; the 10% between is the *test* text, which no choice has seen: the
headline figures are measured on it, and both are reported. Bits per byte are measured after each
run, outside its clock, over non-overlapping windows of each model's own context covering the whole
of each part, for the final model and (on the test text) for every kept checkpoint, whose elapsed
seconds give the run's curve.

Per round, for each budget fraction f of `--fractions` (default 1 and 0.5) the baseline trains
f x 2,000 steps with its own full schedule (warmup and decay over those steps, as nanoGPT would be
run for a shorter budget), and its wall time W_f (all of it: tokenizer, data, evaluations,
checkpoints) is the budget the project's recipe then gets: bits per byte at equal time, each run
against the baseline that ran as long. The headline "time to the target" (`--target`, 2.74 bits per
byte on the test text) is a whole-run figure: the shortest run whose final model is at or below it,
over the baseline's full run. A run's checkpoints give a second, curve-based figure, labelled as such,
from the same rounds.

`--ablate NAME,...` adds the recipe with one switch turned back (see ABLATIONS) at the budget of
the first fraction, `--variant NAME,...` the recipe in another shape (see VARIANTS). `--user-path`
adds, at that budget, the path a user takes: the training text written to a file and given to
`scratchllm demo --data FILE --minutes M` (which holds out 10% of that file, in 20 stretches, for its
own validation), for the recipe and for the baseline, scored on the same validation and test text;
and the benchmark's own path on the first and on the last 90% of the training text: the same amount
of text, without or with the stretch that comes right before the test text (in tinyshakespeare a
play runs on across the cut, and its speakers' names are there). The demo held out the last 10%
of a file until 2026-12-08; the first-90% row is that path. `--dtype` is the recipe's (the baseline trains in float32, as
nanoGPT does on a CPU); the default, auto, measures what the CPU can do (core/cpu_probe.py).

    python -m benchmarks.speedrun                           # 1 round: about 6 minutes on 2 cores
    python -m benchmarks.speedrun --rounds 3 --user-path    # medians over 3 rounds, both paths
    python -m benchmarks.speedrun --ablate all              # what every switch buys
    python -m benchmarks.speedrun --fractions 0.25 --baseline-steps 500   # a quick look
    python -m benchmarks.speedrun --data other.txt --out runs/speedrun-other
    python -m benchmarks.speedrun --data python --fractions 1.8 --ablate context-64   # the demo's corpus

Writes OUT/results.json (every run: settings, wall time, bits per byte, curve) and OUT/speedrun.png
(test bits per byte against seconds for every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.train_step import machine_load
from scratchllm.checkpoint.loader import load
from scratchllm.core.cpu_probe import probe_cpu
from scratchllm.data.tokens import corpus_from_texts
from scratchllm.recipes.demo import (NANOGPT_BABY, SMALL_BUDGET, Recipe, demo, python_corpus, split_documents,
                                     split_text, train_recipe)
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

# Other shapes of the recipe (`--variant`): what a CPU whose bf16 steps are faster could afford.
VARIANTS: dict[str, dict[str, Any]] = {
    "width-192": dict(model=dict(emb_dim=192, n_heads=6)),
    "width-256": dict(model=dict(emb_dim=256, n_heads=8)),
    "depth-6-width-256": dict(model=dict(n_layers=6, emb_dim=256, n_heads=8)),
}

BASELINE = "baseline"
RECIPE = "scratchllm"


@dataclass
class Splits:
    """The text's three parts: what both recipes train on, what choices are made on, what is reported."""

    train: list[str]
    validation: list[str]
    test: list[str]

    def held_out(self) -> dict[str, list[str]]:
        return {"validation": self.validation, "test": self.test}


def read_corpus(data: str) -> Splits:
    """A text file: train on the first 80% of its characters, test on the next 10%, validation the
    last 10% (the part earlier choices were made on). "python": the demo's own split of the standard
    library's files (whole files, 10% to validation, seed 0), with a further 1/9 of the training
    files (seed 1) as test."""
    if data == "python":
        rest, validation = split_documents([text for _, text in python_corpus()], 0.1, seed=0)
        train, test = split_documents(rest, 1 / 9, seed=1)
        return Splits(train, validation, test)
    rest, validation = split_text(Path(data).read_text(encoding="utf-8"), 0.1)
    train, test = split_text(rest, 1 / 9)
    return Splits([train], [validation], [test])


def split_bpb(model, tok, corpus, batch_size: int = 32) -> float:
    """Bits per byte of `model` over the whole validation side of `corpus` (`corpus_from_texts`,
    non-overlapping windows of its context)."""
    task = PretrainTask(corpus, batch_size, model.config.context_length, eval_batches=0, tokenizer=tok)
    with torch.no_grad():
        return task.evaluate(model)["val_bpb"]


def held_out_bpb(run_dir: Path, held_out: dict[str, list[str]]) -> dict[str, Any]:
    """The run's final model on every held-out part, and each kept checkpoint on the test part
    (with its seconds since the run began training: the curve). One tokenizer per run: each part is
    encoded once."""
    model, tok = load(run_dir / "final", device="cpu")
    corpora = {name: corpus_from_texts(docs, docs, tok) for name, docs in held_out.items()}  # only the val side is read
    final = {name: split_bpb(model, tok, corpus) for name, corpus in corpora.items()}
    points = []
    for step, d in checkpoint_dirs(run_dir):
        model, _ = load(d, device="cpu")
        elapsed = torch.load(d / "trainer.pt", map_location="cpu", weights_only=True)["elapsed_s"]
        points.append({"step": step, "elapsed_s": elapsed, "bpb": split_bpb(model, tok, corpora["test"])})
    return {"final": final, "checkpoints": points}


def run_one(recipe: Recipe, splits: Splits, work: Path, label: str, fraction: float, role: str = "budget",
            path: str = "benchmark", minutes: float | None = None, max_steps: int | None = None,
            dtype: str = "float32", checkpoints: int = 8, train_docs: list[str] | None = None) -> dict[str, Any]:
    """One run, timed whole, then measured on the held-out parts. `path` "benchmark" trains with
    `train_recipe` on `train_docs` (default: the training text, its validation the validation text);
    "demo" writes the training text to a file and runs `scratchllm demo --data FILE` on it. `role`:
    "budget" (a fraction's own run: what the headline is taken from), "ablation" or "user path"."""
    out = work / label.replace(" ", "-").replace("#", "-round").replace("%", "pc").replace("/", "-")
    t = time.perf_counter()
    if path == "demo":
        text_file = work / "train.txt"
        text_file.write_text("".join(splits.train), encoding="utf-8")
        length = {"minutes": minutes} if minutes is not None else {"max_steps": max_steps}
        summary = demo(out, data=str(text_file), dtype=dtype, recipe=recipe, **length)
    else:
        summary = train_recipe(recipe, train_docs or splits.train, splits.validation, out, minutes=minutes,
                               max_steps=max_steps, dtype=dtype, checkpoints=checkpoints, source="speedrun")
    wall = time.perf_counter() - t
    measured = held_out_bpb(out, splits.held_out())
    prep = summary.get("prep_s", 0.0)
    curve = [{"seconds": prep + p["elapsed_s"], "bpb": p["bpb"], "step": p["step"]} for p in measured["checkpoints"]]
    row = {"label": label, "recipe": recipe.name, "role": role, "path": path, "fraction": fraction,
           "budget_s": None if minutes is None else minutes * 60, "wall_s": wall, "prep_s": prep,
           "train_s": summary["train_time_s"], "steps": summary["steps"], "tokens": summary["tokens"],
           "passes": summary["tokens"] / summary["corpus"]["train_tokens"], "dtype": summary.get("dtype", dtype),
           "precision": (summary.get("precision") or {}).get("reason"), "bpb": measured["final"],
           "curve": curve + [{"seconds": wall, "bpb": measured["final"]["test"], "step": summary["steps"]}],
           "load": machine_load()}
    print(f"  {label:<40} {wall:6.1f} s  {row['steps']:5d} steps  {row['passes']:5.2f} passes  {row['dtype']:8s}  "
          f"validation {row['bpb']['validation']:.3f}  test {row['bpb']['test']:.3f}   (load {row['load']})", flush=True)
    return row


def group(label: str) -> str:
    """A row's label without its round: the key medians are taken over."""
    return label.rsplit("#", 1)[0]


def baseline_label(fraction: float, path: str = "benchmark") -> str:
    return f"{BASELINE} x{fraction:g}" + (", demo --data" if path == "demo" else "")


def partner(row: dict[str, Any]) -> str | None:
    """The baseline group a row is compared with at equal time: the baseline run of the same budget
    fraction on the same path (None for the baselines themselves)."""
    if row["recipe"] == NANOGPT_BABY.name:
        return None
    return baseline_label(row["fraction"], "demo" if row["path"] == "demo" else "benchmark")


def median_of(rows: list[dict[str, Any]], key: str, split: str | None = None) -> float:
    return statistics.median(r[key][split] if split else r[key] for r in rows)


def first_at_or_below(curve: list[dict[str, Any]], target: float) -> float | None:
    """Seconds of the first point of a run's curve (its checkpoints, then its end) at or below
    `target`: an upper bound on its time to the target, since nothing is interpolated."""
    return next((p["seconds"] for p in curve if p["bpb"] <= target), None)


def time_to_target(groups: dict[str, list[dict[str, Any]]], target: float, recipe: str,
                   split: str = "test") -> tuple[str, float] | None:
    """(group, median wall seconds) of the fastest whole run of `recipe` among the budgets' own runs
    (no ablation, no user path) whose median final bits per byte on `split` is at or below `target`;
    None when none is."""
    reached = sorted((median_of(rows, "wall_s"), name) for name, rows in groups.items()
                     if rows[0]["recipe"] == recipe and rows[0]["role"] == "budget"
                     and median_of(rows, "bpb", split) <= target)
    return (reached[0][1], reached[0][0]) if reached else None


def summarise(rows: list[dict[str, Any]], target: float, split: str = "test") -> list[str]:
    """Medians per run over the rounds; each run against the baseline of its budget; the time to
    `target` on `split`, as whole runs (the headline) and by checkpoints (the curve)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group(row["label"]), []).append(row)
    lines = [f"| run | wall s | steps | passes | dtype | validation bpb | test bpb | {split} vs the baseline of its budget |",
             "|---|---|---|---|---|---|---|---|"]
    for name, grp in groups.items():
        bpb = median_of(grp, "bpb", split)
        vs = ""
        if (other := partner(grp[0])) in groups:
            at, wall = median_of(groups[other], "bpb", split), median_of(groups[other], "wall_s")
            vs = f"{(at - bpb) / at:+.1%} fewer bits ({other}: {at:.3f} in {wall:.1f} s)"
        lines.append(f"| {name} | {median_of(grp, 'wall_s'):.1f} | {median_of(grp, 'steps'):.0f} | "
                     f"{median_of(grp, 'passes'):.2f} | {'/'.join(sorted({r['dtype'] for r in grp}))} | "
                     f"{median_of(grp, 'bpb', 'validation'):.3f} | {median_of(grp, 'bpb', 'test'):.3f} | {vs} |")
    full = groups.get(baseline_label(1.0))
    if not full:
        return lines
    full_wall = median_of(full, "wall_s")
    n = len(full)
    lines.append(f"\nthe baseline's full run ({baseline_label(1.0)}): {full_wall:.1f} s, {median_of(full, 'bpb', split):.3f} "
                 f"bits per byte on the {split} text (median of {n} round{'s' if n > 1 else ''})")
    ours, theirs = time_to_target(groups, target, RECIPE, split), time_to_target(groups, target, NANOGPT_BABY.name, split)
    if ours is None:
        lines.append(f"time to {target} on the {split} text (whole runs): no run of the recipe reached it")
    else:
        denominator = theirs[1] if theirs else full_wall
        lines.append(f"time to {target} on the {split} text (whole runs, the headline): {ours[0]}, {ours[1]:.1f} s = "
                     f"{ours[1] / denominator:.2f} of " + (f"{theirs[0]}'s {theirs[1]:.1f} s, the baseline's fastest "
                     "run to reach it" if theirs else f"the baseline's full run, which did not reach it"))
    for name, grp in groups.items():
        if grp[0]["role"] != "budget":
            continue
        times = [t for r in grp if (t := first_at_or_below(r["curve"], target)) is not None]
        if len(times) == len(grp):  # every round reached it
            t = statistics.median(times)
            lines.append(f"by its checkpoints (curve, the same rounds; no interpolation, so an upper bound): {name} "
                         f"first measured <= {target} after {t:.1f} s = {t / full_wall:.2f} of the baseline's full run")
    return lines


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
        key = group(row["label"])
        xs = [p["seconds"] for p in row["curve"]]
        ys = [p["bpb"] for p in row["curve"]]
        line = ax.plot(xs, ys, marker="o", ms=3, lw=1, color=colours.get(key),
                       label=None if key in colours else key)[0]
        colours.setdefault(key, line.get_color())
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target}")
    ax.set_xlabel("seconds of wall time (tokenizer, data, training, evaluations)")
    ax.set_ylabel("test bits per byte")
    ax.set_ylim(top=min(5.0, max(p["bpb"] for r in rows for p in r["curve"]) + 0.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def one_round(r: int, splits: Splits, work: Path, args: argparse.Namespace, fractions: list[float],
              ablate: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Every run of round r: per fraction the baseline of that many steps, then the recipe with the
    baseline's wall time; then ablations, variants and the user's path at the first fraction's budget."""
    rows: list[dict[str, Any]] = []
    steps = args.baseline_steps or NANOGPT_BABY.train["max_steps"]
    walls: dict[float, float] = {}
    for f in dict.fromkeys([1.0, *fractions]):  # the full baseline always: the headline divides by it
        base = run_one(NANOGPT_BABY, splits, work, f"{baseline_label(f)}#{r}", f, max_steps=max(1, round(steps * f)))
        rows.append(base)
        walls[f] = base["wall_s"]
        if f in fractions:
            rows.append(run_one(SMALL_BUDGET, splits, work, f"{RECIPE} x{f:g}#{r}", f, minutes=walls[f] / 60,
                                dtype=args.dtype))
    first = fractions[0]
    for name in ablate:  # with the first fraction's budget, beside the recipe's own run
        recipe = SMALL_BUDGET.replace(**ABLATIONS[name], name=f"{RECIPE}-{name}")
        rows.append(run_one(recipe, splits, work, f"without {name} x{first:g}#{r}", first, "ablation",
                            minutes=walls[first] / 60, dtype=args.dtype))
    for name in variants:
        recipe = SMALL_BUDGET.replace(**VARIANTS[name], name=f"{RECIPE}-{name}")
        rows.append(run_one(recipe, splits, work, f"with {name} x{first:g}#{r}", first, "variant",
                            minutes=walls[first] / 60, dtype=args.dtype))
    if args.user_path:
        text = "".join(splits.train)
        first_90, _ = split_text(text, 0.1)  # what `demo --data` trains on
        for part, docs in (("first", first_90), ("last", text[len(text) - len(first_90):])):
            rows.append(run_one(SMALL_BUDGET, splits, work, f"{RECIPE} x{first:g}, {part} 90% of the training text#{r}",
                                first, "user path", minutes=walls[first] / 60, dtype=args.dtype, train_docs=[docs]))
        rows.append(run_one(NANOGPT_BABY, splits, work, f"{baseline_label(first, 'demo')}#{r}", first, "user path",
                            path="demo", max_steps=max(1, round(steps * first))))
        rows.append(run_one(SMALL_BUDGET, splits, work, f"{RECIPE} x{first:g}, demo --data#{r}", first, "user path",
                            path="demo", minutes=walls[first] / 60, dtype=args.dtype))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(SHAKESPEARE), help="UTF-8 text file (train on its first 80%%, test on the next "
                   "10%%, validation the last 10%%); or 'python': the demo's corpus, split as `scratchllm demo` splits it")
    p.add_argument("--out", default="runs/speedrun", help="where results.json and speedrun.png go")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians are reported)")
    p.add_argument("--fractions", default="1,0.5", help="budgets, as fractions of the baseline's steps: the baseline "
                   "trains that many steps with its own schedule, the recipe gets its wall time")
    p.add_argument("--baseline-steps", type=int, default=None, help="shorten the baseline (default: its 2,000 steps)")
    p.add_argument("--ablate", default="", help=f"comma-separated switches to turn back, or 'all': {', '.join(ABLATIONS)}")
    p.add_argument("--variant", default="", help=f"comma-separated shapes to try, or 'all': {', '.join(VARIANTS)}")
    p.add_argument("--user-path", action="store_true", help="also `scratchllm demo --data FILE` (recipe and baseline) "
                   "and the recipe on the demo's split, at the first fraction's budget")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="the recipe's precision")
    p.add_argument("--target", type=float, default=2.74, help="test bits per byte to reach")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--keep", action="store_true", help="keep the run directories under OUT/runs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if not fractions or not all(f > 0 for f in fractions):
        p.error(f"--fractions {args.fractions!r}: expected positive numbers separated by commas")
    ablate = list(ABLATIONS) if args.ablate == "all" else [a for a in args.ablate.split(",") if a]
    for name in ablate:
        if name not in ABLATIONS:
            p.error(f"--ablate {name}: expected one of {', '.join(ABLATIONS)}")
    variants = list(VARIANTS) if args.variant == "all" else [v for v in args.variant.split(",") if v]
    for name in variants:
        if name not in VARIANTS:
            p.error(f"--variant {name}: expected one of {', '.join(VARIANTS)}")
    if args.user_path and args.data == "python":
        p.error("--user-path needs a text file --data: `scratchllm demo` on its own corpus trains on the test files")
    splits = read_corpus(args.data)
    out = Path(args.out)
    sizes = {name: sum(map(len, docs)) for name, docs in vars(splits).items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; load {machine_load()}\nCPU: {probe_cpu().describe()}\n"
          f"{args.data}: " + ", ".join(f"{n:,} {name}" for name, n in sizes.items()) + " characters", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = out / "runs" if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            rows += one_round(r, splits, work, args, fractions, ablate, variants)
    lines = summarise(rows, args.target)
    print("\n" + "\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "cpu": vars(probe_cpu()), "rows": rows,
                                                  "summary": lines}, indent=1))
    if plot(rows, args.target, out / "speedrun.png"):
        print(f"wrote {out / 'speedrun.png'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
