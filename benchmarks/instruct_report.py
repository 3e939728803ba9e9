"""Instruction tuning end to end on this machine: pretrain a small GPT, then full fine-tuning vs LoRA, then DPO.

Run from the repository root:  python -m benchmarks.instruct_report [--work runs/instruct-report]
                                   [--pretrain-steps 600] [--epochs 2] [--max-new-tokens 64] [--threads 1]

1. pretrain: a byte-level BPE (1,024 tokens) and a 4-layer GPT (emb 128, context 256) trained by
   `scratchllm.recipes.pretrain.pretrain` on tinyshakespeare + the instruction / input / output texts of the
   instruction split's training part (plain text, no prompt template).
2. full / lora: `finetune_instruct` on the 1,100 records of ../shared/data/instruction-data.json
   (the book's seeded 85/5/10 split), once updating every weight (lr 3e-4) and once with rank-8
   LoRA adapters (alpha 16, lr 1e-3); each run reports the validation loss before/after, the training time, the trainable
   parameters and the process's peak resident memory. Then `respond` (greedy) on the 110 test
   records and ROUGE-L F1 / exact match against the references, for the pretrained model and both.
3. dpo: `finetune_dpo` (60 steps of 8 pairs, lr 2e-5, beta 0.1) from the fully fine-tuned model on
   instruction-data-with-preference.json (the same split), reporting preference accuracy, reward margin and log-prob accuracy before/after.

Each stage runs in its own process, so the peak memory (ru_maxrss) is that stage's alone; the
reference for the LoRA ratios is the full fine-tuning run of the same invocation. The pretraining
run is reused when --work already holds it (delete the folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB_SIZE = 1024  # byte-level BPE trained on the pretraining corpus
EMB_DIM = 128  # 4 layers x 4 heads, context 256: ~0.96M parameters, sized for two busy CPU cores
DPO_STEPS = 60  # 480 of the 935 training pairs, one pass
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INSTRUCTIONS = SHARED / "instruction-data.json"
PREFERENCES = SHARED / "instruction-data-with-preference.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def score(model_dir: Path, work: Path, name: str, max_new_tokens: int) -> dict:
    """ROUGE-L / exact match of greedy responses on the test split written by the fine-tuning run."""
    from scratchllm.evaluation.responses import evaluate_responses, respond

    t = time.perf_counter()
    responses = respond(str(model_dir), work / "full" / "test.json", work / f"responses-{name}.json",
                        max_new_tokens=max_new_tokens, batch_size=16, device="cpu", prompt_style="alpaca",
                        progress=False)
    report = evaluate_responses(responses)
    return {"rouge_l_f1": report["rouge_l_f1"], "exact_match": report["exact_match"],
            "respond_s": round(time.perf_counter() - t, 1), "example": responses[0]["model_response"][:200]}


def stage_pretrain(work: Path, steps: int) -> dict:
    from scratchllm.models.config import GPTConfig
    from scratchllm.data.instructions import split_records
    from scratchllm.tokenizer import Tokenizer
    from scratchllm.recipes.pretrain import pretrain

    records = json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))
    train, _, _ = split_records(records, seed=123)
    # Shakespeare's speeches and the instruction texts shuffled together, so that the last 10% that
    # pretrain() holds out for validation is a sample of both, and training sees both.
    texts = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    texts += ["\n".join(v for v in (r["instruction"], r["input"], r["output"]) if v) for r in train]
    random.Random(0).shuffle(texts)
    corpus = "\n\n".join(texts)
    (work / "corpus.txt").write_text(corpus, encoding="utf-8")
    tok = Tokenizer.train([corpus], VOCAB_SIZE)
    tok.save(work / "tokenizer.json")
    model = GPTConfig(context_length=256, emb_dim=EMB_DIM, n_layers=4, n_heads=4, drop_rate=0.0)
    t = time.perf_counter()
    summary = pretrain(work / "corpus.txt", model, work / "pretrain", tokenizer=tok, max_steps=steps, batch_size=8,
                       lr=2e-3, min_lr=2e-4, warmup_steps=30, eval_every=max(1, steps // 4), eval_batches=5,
                       log_every=50, save_every=steps, keep_last=1, seed=1337, device="cpu", progress=False)
    return {"steps": summary["steps"], "tokens": summary["tokens"], "val_loss": summary["eval"].get("val_loss"),
            "time_s": round(time.perf_counter() - t, 1), "corpus_chars": len(corpus)}


def stage_finetune(work: Path, name: str, epochs: int, max_new_tokens: int) -> dict:
    from scratchllm.recipes.config import InstructConfig
    from scratchllm.recipes.instruct import finetune_instruct

    lora = name == "lora"
    t = time.perf_counter()
    summary = finetune_instruct(InstructConfig(
        model=str(work / "pretrain"), data=str(INSTRUCTIONS), out=str(work / name), prompt_style="alpaca", epochs=epochs,
        batch_size=8, lr=1e-3 if lora else 3e-4, lora_rank=8 if lora else None, lora_alpha=16.0, seed=123,
        device="cpu", dtype="float32", eval_every=58,
    ))
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    peak = peak_rss_mb()  # the training process's peak, before generation adds its own
    result = {"train_s": summary["train_time_s"], "wall_s": round(wall, 1), "steps": summary["steps"],
              "trainable_parameters": summary["trainable_parameters"], "parameters": summary["parameters"],
              "val_loss_before": evals[0]["val_loss"], "val_loss_after": evals[-1]["val_loss"],
              "peak_rss_mb": round(peak, 1),
              # float32 gradients + AdamW's two moments exist for trainable parameters only
              "grad_adam_mb": round(summary["trainable_parameters"] * 3 * 4 / 2**20, 2)}
    result.update(score(work / name, work, name, max_new_tokens))
    return result


def stage_base_score(work: Path, max_new_tokens: int) -> dict:
    return score(work / "pretrain", work, "pretrained", max_new_tokens)


def stage_dpo(work: Path, max_new_tokens: int) -> dict:
    from scratchllm.recipes.config import DPOConfig
    from scratchllm.recipes.dpo import finetune_dpo

    t = time.perf_counter()
    summary = finetune_dpo(DPOConfig(model=str(work / "full"), data=str(PREFERENCES), out=str(work / "dpo"), beta=0.1,
                                     epochs=1, batch_size=8, lr=2e-5, seed=123, device="cpu", dtype="float32",
                                     eval_every=DPO_STEPS // 2, max_steps=DPO_STEPS))
    keys = ("val_loss", "val_reward_margin", "val_pref_accuracy", "val_logp_accuracy")
    result = {"train_s": summary["train_time_s"], "wall_s": round(time.perf_counter() - t, 1), "steps": summary["steps"],
              "before": {k: summary["eval_before"][k] for k in keys}, "after": {k: summary["eval_after"][k] for k in keys},
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    result.update(score(work / "dpo", work, "dpo", max_new_tokens))
    return result


def run_stage(args: argparse.Namespace, stage: str) -> dict:
    """Run one stage in a fresh Python process (its own peak memory); return its JSON result."""
    out = Path(args.work) / f"{stage}.json"
    cmd = [sys.executable, "-m", "benchmarks.instruct_report", "--stage", stage, "--work", args.work, "--threads", str(args.threads),
           "--pretrain-steps", str(args.pretrain_steps), "--epochs", str(args.epochs),
           "--max-new-tokens", str(args.max_new_tokens)]
    before = load_avg()
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: load average {before}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["load_avg_start_end"] = [before, load_avg()]
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/instruct-report", help="folder for the runs (reused pretraining)")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process: on a shared 2-core machine one thread was 3-6x faster than two")
    p.add_argument("--stage", default=None, choices=["pretrain", "base", "full", "lora", "dpo"], help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage is not None:
        import torch

        torch.set_num_threads(args.threads)  # a child process
        result = {
            "pretrain": lambda: stage_pretrain(work, args.pretrain_steps),
            "base": lambda: stage_base_score(work, args.max_new_tokens),
            "full": lambda: stage_finetune(work, "full", args.epochs, args.max_new_tokens),
            "lora": lambda: stage_finetune(work, "lora", args.epochs, args.max_new_tokens),
            "dpo": lambda: stage_dpo(work, args.max_new_tokens),
        }[args.stage]()
        (work / f"{args.stage}.json").write_text(json.dumps(result, indent=2) + "\n")
        return

    results = {}
    if (work / "pretrain" / "final" / "config.json").is_file() and (work / "pretrain.json").is_file():
        results["pretrain"] = json.loads((work / "pretrain.json").read_text())
        print(f"reusing {work / 'pretrain'}", file=sys.stderr)
    else:
        results["pretrain"] = run_stage(args, "pretrain")
    for stage in ("full", "lora", "base", "dpo"):  # base needs full's test.json
        results[stage] = run_stage(args, stage)
    full, lora, base, dpo = results["full"], results["lora"], results["base"], results["dpo"]
    print(json.dumps(results, indent=2))
    pre = results["pretrain"]
    print(f"\npretrained: {pre['steps']} steps, {pre['tokens']:,} tokens, val loss {pre['val_loss']:.3f}, {pre['time_s']} s")
    print("| run | val loss before -> after | ROUGE-L F1 | exact match | train time | trainable params | grads + AdamW state | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| pretrained, no tuning | {full['val_loss_before']:.3f} | {base['rouge_l_f1']:.3f} | {base['exact_match']:.3f} | - | - | - | - |")
    for name, r in (("full fine-tuning (reference)", full), ("LoRA r=8", lora)):
        print(f"| {name} | {r['val_loss_before']:.3f} -> {r['val_loss_after']:.3f} | {r['rouge_l_f1']:.3f} | "
              f"{r['exact_match']:.3f} | {r['train_s']:.0f} s | {r['trainable_parameters']:,} | {r['grad_adam_mb']:.2f} MB | "
              f"{r['peak_rss_mb']:.0f} MB |")
    print(f"\nLoRA / full: train time {lora['train_s'] / full['train_s']:.2f}x, trainable parameters "
          f"{lora['trainable_parameters'] / full['trainable_parameters']:.4f}x, peak RSS "
          f"{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, ROUGE-L {lora['rouge_l_f1'] / full['rouge_l_f1']:.2f}x")
    b, a = dpo["before"], dpo["after"]
    print(f"\nDPO ({dpo['steps']} steps, {dpo['train_s']:.0f} s): val pref accuracy {b['val_pref_accuracy']:.3f} -> "
          f"{a['val_pref_accuracy']:.3f}, reward margin {b['val_reward_margin']:.3f} -> {a['val_reward_margin']:.3f}, "
          f"log-prob accuracy {b['val_logp_accuracy']:.3f} -> {a['val_logp_accuracy']:.3f}, "
          f"val loss {b['val_loss']:.4f} -> {a['val_loss']:.4f}; ROUGE-L after DPO {dpo['rouge_l_f1']:.3f}")


if __name__ == "__main__":
    main()
