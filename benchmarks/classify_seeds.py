"""`finetune classify` from a small base, over several seeds: per-seed and range of validation and test accuracy.

Run from the repository root:

    python -m benchmarks.classify_seeds [--base runs/classify_seeds/base] [--seeds 123 124 125]
                                        [any `finetune classify` flag, e.g. --trainable last-block]

1. The base, unless `--base` already holds a model: a GPT with GPT-2's vocabulary, 4 layers x 128,
   context 128, pretrained 300 steps on tinyshakespeare (batch 16, lr 1e-3, seed 123, float32):

       scratchllm pretrain --data ../shared/data/tinyshakespeare.txt --model BASE.json --out BASE
           --max-steps 300 --batch-size 16 --lr 1e-3 --seed 123 --device cpu --dtype float32

   with BASE.json = {"emb_dim": 128, "n_layers": 4, "n_heads": 4, "context_length": 128}.
2. For each seed, `scratchllm finetune classify --model BASE --data ../shared/data/sms_spam_collection.tsv
   --device cpu --seed S --split-seed 123 --out OUT/seed-S` plus the flags given here (the defaults
   otherwise): one split, seeds varying head init and batch order.

Printed: per seed, the validation accuracy of the epoch `final/` holds, test accuracy, that epoch and
the time; then the range and mean of each. Each run's log is OUT/seed-S.log. Accuracy does not
depend on the machine's load; it can differ slightly with `--threads` (the order of float sums).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.classify_sms import SHARED, quietly
from scratchllm.cli import main as scratchllm

BASE_MODEL = {"emb_dim": 128, "n_layers": 4, "n_heads": 4, "context_length": 128}
BASE_FLAGS = ["--max-steps", "300", "--batch-size", "16", "--lr", "1e-3", "--seed", "123", "--device", "cpu",
              "--dtype", "float32", "--no-progress"]


def run(argv: list[str], log_path: Path) -> None:
    """`scratchllm ARGV` in this process, its output to log_path; exits with its code on failure."""
    code, text = quietly(scratchllm, argv)
    log_path.write_text(text, encoding="utf-8")
    if code:
        sys.exit(f"scratchllm {' '.join(argv)} exited {code}; see {log_path}")


def build_base(base: Path, text: Path) -> None:
    """Pretrain the small base into `base` (step 1 of the module docstring)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    shape = base.parent / f"{base.name}.json"
    shape.write_text(json.dumps(BASE_MODEL), encoding="utf-8")
    run(["pretrain", "--data", str(text), "--model", str(shape), "--out", str(base), *BASE_FLAGS],
        base.parent / f"{base.name}.log")


def span(values: list[float]) -> str:
    return f"{100 * min(values):.2f}-{100 * max(values):.2f}% (mean {100 * sum(values) / len(values):.2f}%)"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the seeds; returns one dict per seed (seed, val_accuracy, test_accuracy, run_dir)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Other flags go to `scratchllm finetune classify` unchanged.")
    ap.add_argument("--base", default="runs/classify_seeds/base", help="base model directory; pretrained here if missing")
    ap.add_argument("--data", default=str(SHARED / "sms_spam_collection.tsv"))
    ap.add_argument("--out", default="runs/classify_seeds", help="fine-tuning runs go to OUT/seed-S")
    ap.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125])
    ap.add_argument("--split-seed", type=int, default=123)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recorded figures used 1)")
    args, flags = ap.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    base, out = Path(args.base), Path(args.out)
    if not (base / "final").is_dir() and not (base / "config.json").is_file():  # a run or a model directory
        print(f"pretraining the base into {base} ...", file=sys.stderr, flush=True)
        build_base(base, SHARED / "tinyshakespeare.txt")
    out.mkdir(parents=True, exist_ok=True)
    print(f"base {base}; finetune classify {' '.join(flags) or '(defaults)'}; split seed {args.split_seed}; "
          f"{args.threads} thread(s)")
    rows, results = [], []
    for seed in args.seeds:
        run_dir = out / f"seed-{seed}"
        t = time.perf_counter()
        run(["finetune", "classify", "--model", str(base), "--data", args.data, "--device", "cpu", "--seed", str(seed),
             "--split-seed", str(args.split_seed), "--out", str(run_dir), *flags],
            out / f"seed-{seed}.log")
        report = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        kept = next(e for e in report["epochs"] if e["epoch"] == report["final_epoch"])
        rows.append((kept["val_accuracy"], report["test"]["accuracy"]))
        results.append({"seed": seed, "val_accuracy": rows[-1][0], "test_accuracy": rows[-1][1], "run_dir": str(run_dir)})
        n_val, n_test = sum(report["counts"]["validation"].values()), sum(report["counts"]["test"].values())
        print(f"seed {seed}: validation {100 * rows[-1][0]:.2f}% ({n_val}), test {100 * rows[-1][1]:.2f}% ({n_test}); "
              f"trainable {report['trainable']}, lr {report['lr']:.3g} -> {report['min_lr']:.3g}, "
              f"final/ = epoch {report['final_epoch']:g}, {time.perf_counter() - t:.0f} s", flush=True)
    print(f"validation {span([v for v, _ in rows])}; test {span([t for _, t in rows])}; {len(rows)} seeds")
    return results


if __name__ == "__main__":
    main()
