"""SMS spam: a BERT-style encoder (masked-language pretraining) against a GPT decoder (next-token
pretraining) of the same shape, with the same pretraining time, then the same fine-tuning.

Run from the repository root:

    python -m benchmarks.encoder_vs_decoder [--pretrain-seconds 60] [--out runs/encoder_vs_decoder] [--threads 1]

1. The split of `scratchllm finetune classify` (its default 70/10/20 after deduplication and
   balancing: 684 / 96 / 196 messages, not `benchmarks.classify_sms`'s 60/20/20), and the tokenizer
   and pretraining stream of `benchmarks.classify_sms`: the SMS training texts (unlabelled) and
   tinyshakespeare; the encoder's tokenizer is the same plus <|mask|> (one more
   embedding row: 128 parameters).
2. Pretrain each model for `--pretrain-seconds` of wall time: the step count of its cosine schedule
   comes from timing a few of its own steps (a masked-LM step is a little cheaper: its head only reads
   the ~15% selected positions), and max_time stops it at the budget whatever the machine's load.
3. Fine-tune each with `finetune_classifier` (all weights, same epochs and learning rate): the decoder
   pools the last real token, the encoder the mean of its tokens and, separately, its first token.
4. Report test accuracy on the balanced test split, pretraining steps/seconds and this process's CPU
   time per phase, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from benchmarks.classify_sms import SHARED, fresh_out, log, pretraining_data, quietly
from scratchllm.core.device import resolve_device
from scratchllm.recipes.classify import finetune_classifier, prepare_splits
from scratchllm.recipes.config import ClassifyConfig
from scratchllm.models.config import GPTConfig
from scratchllm.inference.fill_mask import with_mask_token
from scratchllm.recipes.mlm import MLMTask
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from scratchllm.recipes.pretrain import PretrainTask
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import fit
from scratchllm.training.optim import make_optimizer


def seconds_per_step(model: GPT, task, cfg: TrainConfig, device, n: int = 3) -> float:
    """Median seconds of n training steps of `task` on `model` (after a warm-up step)."""
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        loss = task.loss(model, task.next_batch())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--pretrain-seconds", type=float, default=60.0, help="pretraining wall time of EACH model")
    ap.add_argument("--out", default="runs/encoder_vs_decoder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small models on a busy machine)")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--emb-dim", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--context-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--position", default="learned", help="learned, rope or sinusoidal (both models)")
    ap.add_argument("--sms-repeat", type=int, default=8)
    ap.add_argument("--ft-epochs", type=float, default=3)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--ft-batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = fresh_out(args.out)
    device = resolve_device("auto")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    log(f"start: load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} on {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, device {device}")

    sms_file = SHARED / "sms_spam_collection.tsv"
    splits, _ = quietly(prepare_splits, ClassifyConfig(model="", data=str(sms_file), seed=args.seed, progress=False))
    train, test = splits.train, splits.test
    shakespeare = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = Tokenizer.train([shakespeare, *train.texts], args.vocab_size)
    mlm_tok = with_mask_token(tok)
    data = pretraining_data(tok, shakespeare, train.texts, args.sms_repeat, args.seed)
    log(f"split: train {train.counts()}, test {test.counts()}; pretraining stream {len(data.train):,} tokens")

    shape = dict(context_length=args.context_length, emb_dim=args.emb_dim, n_layers=args.n_layers,
                 n_heads=args.n_heads, drop_rate=0.0, position=args.position)
    results: dict[str, dict] = {}
    for name, cfg_model, tokenizer in (("decoder", GPTConfig(vocab_size=tok.vocab_size, **shape), tok),
                                       ("encoder", GPTConfig(vocab_size=mlm_tok.vocab_size, causal=False, **shape), mlm_tok)):
        def make_task():
            if name == "decoder":
                return PretrainTask(data, args.batch_size, args.context_length, seed=args.seed, device=device, eval_batches=4)
            return MLMTask(data, args.batch_size, args.context_length, mlm_tok, seed=args.seed, device=device, eval_batches=4)

        probe = TrainConfig(batch_size=args.batch_size, lr=args.lr)
        torch.manual_seed(args.seed)
        step_s = seconds_per_step(GPT(cfg_model), make_task(), probe, device)
        max_steps = max(50, int(args.pretrain_seconds * 0.95 / step_s))
        cfg = TrainConfig(max_steps=max_steps, max_time=args.pretrain_seconds, batch_size=args.batch_size, lr=args.lr,
                          min_lr=args.lr / 10, warmup_steps=min(100, max_steps // 10), eval_every=max(1, max_steps // 2),
                          eval_batches=4, log_every=max(1, max_steps // 20), save_every=0, keep_last=1, seed=args.seed,
                          progress=False)
        torch.manual_seed(args.seed)
        net = GPT(cfg_model)
        cpu = time.process_time()
        summary, text = quietly(fit, net, make_task(), cfg, out / f"{name}-pretrain", tokenizer=tokenizer,
                                extra_config={"objective": "lm" if name == "decoder" else "mlm"})
        pre_cpu = time.process_time() - cpu
        (out / f"{name}-pretrain.log").write_text(text, encoding="utf-8")
        log(f"{name}: {net.num_parameters():,} parameters, {step_s * 1000:.0f} ms/step -> {summary['steps']} steps in "
            f"{summary['train_time_s']:.0f} s ({pre_cpu:.0f} s CPU), val loss {summary['eval'].get('val_loss', float('nan')):.3f} "
            f"({'next token' if name == 'decoder' else 'masked tokens'})")
        results[name] = {"parameters": net.num_parameters(), "pretrain_steps": summary["steps"],
                         "pretrain_s": summary["train_time_s"], "pretrain_cpu_s": round(pre_cpu, 1),
                         "val_loss": summary["eval"].get("val_loss"), "val_accuracy": summary["eval"].get("val_accuracy"),
                         "finetune": {}}
        for pooling in (("last",) if name == "decoder" else ("mean", "first")):
            c = ClassifyConfig(model=str(out / f"{name}-pretrain" / "final"), data=str(sms_file),
                               out=str(out / f"{name}-{pooling}"), epochs=args.ft_epochs, batch_size=args.ft_batch_size,
                               lr=args.ft_lr, min_lr=args.ft_lr, trainable="all", pooling=pooling, seed=args.seed,
                               max_length=args.context_length, progress=False)
            cpu, t = time.process_time(), time.perf_counter()
            report, text = quietly(finetune_classifier, c)
            (out / f"{name}-{pooling}.log").write_text(text, encoding="utf-8")
            acc = report["test"]["accuracy"]
            results[name]["finetune"][pooling] = {"test_accuracy": acc, "seconds": round(time.perf_counter() - t, 1),
                                                  "cpu_s": round(time.process_time() - cpu, 1),
                                                  "val_accuracy": [e["val_accuracy"] for e in report["epochs"]]}
            log(f"{name} pooling {pooling}: test accuracy {100 * acc:.2f}% ({time.perf_counter() - t:.0f} s)")

    load_end = os.getloadavg()
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python -m benchmarks.encoder_vs_decoder " + " ".join(sys.argv[1:]),
              "load_average": {"start": load_start, "end": load_end}, "torch_threads": torch.get_num_threads(),
              "shape": shape, "results": results, "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'model':<10}{'params':>9}{'pretrain':>16}{'CPU s':>7}  {'pooling':<7}{'test acc':>9}")
    for name, r in results.items():
        for pooling, f in r["finetune"].items():
            print(f"{name:<10}{r['parameters']:>9,}{r['pretrain_steps']:>7} steps {r['pretrain_s']:>4.0f} s"
                  f"{r['pretrain_cpu_s']:>7.0f}  {pooling:<7}{100 * f['test_accuracy']:>8.2f}%")
    print(f"load average start {load_start[0]:.2f}, end {load_end[0]:.2f}; {result['wall_s'] / 60:.1f} min wall; "
          f"details {out / 'result.json'}")


if __name__ == "__main__":
    main()
