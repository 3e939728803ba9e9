"""Fault probe of training: SIGKILL a real `scratchllm pretrain` again and again, many times in the
middle of writing a checkpoint or best/, resume it each time, and check that nothing was lost.

Run from the repository root:  python -m benchmarks.kill_during_save [--minutes 2]

A reference run trains uninterrupted. The probed run (same settings: a small GPT with dropout,
a checkpoint every 2 steps, an evaluation and so possibly a new best/ every 4) is started, killed
with SIGKILL and resumed with `--resume RUNDIR` until it finishes or the time is up. Most kills wait
for a save in progress (a `.step-*.tmp-*`, `.best.tmp-*` or `.final.tmp-*` directory, or a renamed
`.NAME.old-*`, polled every millisecond), the rest land at a random moment. After every kill the run
directory must hold only complete checkpoints (each with trainer.pt, each loadable), and best/ must
exist once it has existed (a kill between the two renames of a save must not lose it). When the run
finishes, its losses must equal the reference's bit for bit, and no temporary may be left.

Reported: kills (during a save / at random), kills that left best/ renamed aside (a kill between the two renames), resumes, runs
finished, and any failure; exit 1 on one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SAVING = (".tmp-", ".old-")


def losses(run: Path) -> dict[int, float]:
    if not (run / "metrics.jsonl").is_file():
        return {}
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill; the resume drops it
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def saving(run: Path) -> bool:
    """A save is in progress: a temporary or renamed-aside model directory exists."""
    for folder in (run, run / "checkpoints"):
        try:
            if any(any(mark in p.name for mark in SAVING) and p.name.startswith(".") for p in os.scandir(folder)):
                return True
        except OSError:
            pass
    return False


def check_after_kill(run: Path, had_best: bool) -> list[str]:
    """What must hold whenever a process died: every step checkpoint in place is complete and loads,
    and a best/ that existed is there, or renamed aside as .best.old-* for the resume to put back."""
    from scratchllm.checkpoint import load

    problems = []
    ckpts = run / "checkpoints"
    for d in sorted(ckpts.iterdir()) if ckpts.is_dir() else []:
        if d.name.startswith("."):
            continue  # a temporary of the interrupted save: the resume removes it
        if not (d / "trainer.pt").is_file():
            problems.append(f"{d.name}: a checkpoint without trainer.pt")
            continue
        try:
            load(d)
        except Exception as exc:  # noqa: BLE001 (any failure to load is a finding)
            problems.append(f"{d.name}: does not load ({exc})")
    if had_best and not (run / "best").is_dir() and not list(run.glob(".best.old-*")):
        problems.append("best/ is gone")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="stop starting new kills after this long")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--during-save", type=float, default=0.8, help="share of kills that wait for a save in progress")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from scratchllm.tokenizer import Tokenizer

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "the-verdict.txt"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Tokenizer.train([data.read_text(encoding="utf-8")], 384).save(tmp / "tok.json")
        (tmp / "model.json").write_text(json.dumps({"emb_dim": 64, "n_layers": 2, "n_heads": 4, "context_length": 32,
                                                    "drop_rate": 0.1}))
        common = ["--data", str(data), "--model", str(tmp / "model.json"), "--tokenizer", str(tmp / "tok.json"),
                  "--max-steps", str(args.max_steps), "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "10",
                  "--eval-every", "4", "--eval-batches", "2", "--log-every", "1", "--save-every", "2",
                  "--keep-last", "2", "--device", "cpu", "--seed", "7", "--no-progress"]
        cli = [sys.executable, "-m", "scratchllm", "pretrain"]
        ref = subprocess.Popen([*cli, *common, "--out", str(tmp / "ref")], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        run = tmp / "run"
        counts = {"kills_during_save": 0, "kills_at_random": 0, "best_renamed_aside": 0, "resumes": 0, "finished": 0}
        problems: list[str] = []
        end = time.monotonic() + args.minutes * 60
        argv = [*cli, *common, "--out", str(run)]
        had_best = False
        while time.monotonic() < end and not problems:
            proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wait_for_save = rng.random() < args.during_save
            kill_at = time.monotonic() + rng.uniform(2.0, 6.0)  # python + torch start-up is ~2-4 s here
            killed = None
            while proc.poll() is None:
                now = time.monotonic()
                if (wait_for_save and saving(run) and now > kill_at - 3.0) or (not wait_for_save and now > kill_at) \
                        or now > kill_at + 20:
                    during = saving(run)
                    proc.send_signal(signal.SIGKILL)
                    killed = "kills_during_save" if during else "kills_at_random"
                    break
                time.sleep(0.001)
            _, err = proc.communicate()
            if killed:
                counts[killed] += 1
                counts["best_renamed_aside"] += not (run / "best").is_dir() and bool(list(run.glob(".best.old-*")))
                problems += check_after_kill(run, had_best)
            elif proc.returncode == 0:
                counts["finished"] += 1
                break
            else:
                problems.append(f"exit code {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
            had_best = had_best or (run / "best").is_dir()
            if (run / "run_config.json").is_file():  # killed before it existed: start again as at first
                argv = [*cli, "--resume", str(run)]
                counts["resumes"] += 1
        if not counts["finished"] and not problems:  # out of time: finish without kills
            done = subprocess.run([*cli, "--resume", str(run)], env=ENV, capture_output=True, text=True)
            counts["finished"] += done.returncode == 0
            if done.returncode:
                problems.append(f"final resume: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        ref.communicate()
        expected, got = losses(tmp / "ref"), losses(run)
        if not problems:
            if got != expected:
                differ = [s for s in expected if got.get(s) != expected[s]]
                problems.append(f"losses differ from the uninterrupted run at {len(differ)} step(s), first {differ[:3]}")
            left = [p.name for folder in (run, run / "checkpoints") for p in folder.iterdir() if p.name.startswith(".")]
            if left:
                problems.append(f"temporaries left: {left}")
            if not (run / "final").is_dir() or not (run / "best").is_dir():
                problems.append("final/ or best/ missing at the end")

    kills = counts["kills_during_save"] + counts["kills_at_random"]
    print(f"SIGKILLs: {kills} ({counts['kills_during_save']} during a save, {counts['kills_at_random']} at random); "
          f"best/ renamed aside by the kill: {counts['best_renamed_aside']}; resumes: {counts['resumes']}; finished: {counts['finished']}; losses bit-exact against the "
          f"uninterrupted run over {len(expected)} steps: {not problems}")
    for problem in problems:
        print("FAIL:", problem)
    print("FAIL" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
