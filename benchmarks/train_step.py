"""Training-step throughput: scratchllm's step against transformers' GPT2LMHeadModel, in one process.

A step is what `scratchllm.training.loop.fit` does per optimizer step: forward, loss, backward, gradient
clipping, AdamW, zeroing the gradients. Ours uses the chunked linear + cross-entropy loss
(`GPT.loss`, no (B, T, V) logits). The reference is transformers' GPT2LMHeadModel with the same
shape (attn_implementation="sdpa", its own loss from `labels=`), in two framings:

- "transformers" (like for like, the headline ratio): the same optimizer as ours (fused AdamW,
  weight decay on 2-D weights, built by the same `make_optimizer`) and the same precision (--dtype
  applies to both);
- "transformers as written" (--variants hf-default): float32 and torch's default AdamW, as a user
  of that library would write it; a second framing, shown beside the first, never instead of it.

All variants run alternately on the same batches; tokens/s are the median over rounds, MFU is against
this machine's matmul peak in the step's precision, measured in the same run (the best of several
measurements, since the machine may be shared).

    python -m benchmarks.train_step                      # float32, both configs
    python -m benchmarks.train_step --dtype bfloat16     # both under bf16 autocast
    python -m benchmarks.train_step --dtype bfloat16 --variants hf,hf-default   # and the second framing
    python -m benchmarks.train_step --check-bf16-loss    # 200 steps fp32 vs bf16 on tinyshakespeare
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.core.device import measure_matmul_peak
from scratchllm.training.config import TrainConfig
from scratchllm.training.optim import make_optimizer

CONFIGS = {
    # name: (GPTConfig overrides, batch size); context 256, GPT-2 vocabulary
    "small": (dict(n_layers=6, n_heads=6, emb_dim=384), 8),
    "gpt2-small": (dict(n_layers=12, n_heads=12, emb_dim=768), 4),
}
CONTEXT = 256
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def timed_step(model: torch.nn.Module, opt: torch.optim.Optimizer, amp: torch.dtype | None, loss_of):
    """One training step of `model`: loss_of(model, x, y) under autocast, backward, clip, step, zero."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


OPTIM = TrainConfig(lr=3e-4)  # weight decay 0.1 on 2-D weights, betas (0.9, 0.95)


def ours(config: GPTConfig, amp: torch.dtype | None):
    model = GPT(config).train()
    opt = make_optimizer(model, OPTIM, torch.device("cpu"), fused=True)
    return timed_step(model, opt, amp, lambda m, x, y: m.loss(x, y))


def transformers_gpt2(config: GPTConfig, amp: torch.dtype | None, as_written: bool = False):
    """transformers' GPT-2 of the same shape; with as_written, torch's default AdamW (all parameters
    decayed, the foreach implementation) instead of ours."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                    n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    attn_implementation="sdpa")
    model = GPT2LMHeadModel(hf).train()
    if as_written:
        opt = torch.optim.AdamW(model.parameters(), lr=OPTIM.lr, betas=(OPTIM.beta1, OPTIM.beta2), weight_decay=OPTIM.weight_decay)
    else:
        opt = make_optimizer(model, OPTIM, torch.device("cpu"), fused=True)
    return timed_step(model, opt, amp, lambda m, x, y: m(input_ids=x, labels=x).loss)  # it shifts the labels itself


def bench_config(name: str, args, peak: dict[str, float]) -> dict[str, float]:
    overrides, batch = CONFIGS[name]
    config = GPTConfig(vocab_size=50257, context_length=CONTEXT, **overrides)
    amp = torch.bfloat16 if args.dtype == "bfloat16" else None
    torch.manual_seed(0)
    precision = "bf16 autocast" if amp else "fp32"
    variants = {"scratchllm": ours(config, amp)}
    labels = {"scratchllm": f"{precision}, fused AdamW"}
    if "hf" in args.variants:
        variants["transformers"] = transformers_gpt2(config, amp)
        labels["transformers"] = f"{precision}, fused AdamW (like for like)"
    if "hf-default" in args.variants:
        variants["transformers as written"] = transformers_gpt2(config, None, as_written=True)
        labels["transformers as written"] = "fp32, torch's default AdamW"
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, config.vocab_size, (batch, CONTEXT + 1), generator=g) for _ in range(args.steps + 1)]
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: allocator, thread pool, first-call costs
        fn(batches[0][:, :-1], batches[0][:, 1:])
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]  # alternate, so drift hits both
        for key in order:
            t = time.perf_counter()
            for b in batches[1:]:
                variants[key](b[:, :-1], b[:, 1:])
            rates[key].append(args.steps * batch * CONTEXT / (time.perf_counter() - t))
        peak["fp32"] = max(peak["fp32"], _peak(torch.float32))
        if amp:
            peak["bf16"] = max(peak["bf16"], _peak(torch.bfloat16))
    flops = _flops(config)
    result = {}
    print(f"\n{name}: {config.n_layers} layers x {config.emb_dim} dims, {config.n_heads} heads, context {CONTEXT}, "
          f"batch {batch}, vocab {config.vocab_size}; {flops / 1e6:.0f} MFLOP/token (training)")
    for key, values in rates.items():
        med = statistics.median(values)
        result[key] = med
        mfu = flops * med / (peak["bf16"] if labels[key].startswith("bf16") else peak["fp32"])
        print(f"  {key:<24} {med:8.0f} tokens/s  ({labels[key]}; rounds: {', '.join(f'{v:.0f}' for v in values)}) "
              f"MFU {mfu:.1%}")
    for key in ("transformers", "transformers as written"):
        if key in result:
            print(f"  ratio scratchllm / {key} ({labels[key]}): {result['scratchllm'] / result[key]:.2f}x")
    return result


def _flops(config: GPTConfig) -> float:
    from scratchllm.models.gpt import flops_per_token

    return flops_per_token(config, CONTEXT, training=True)


def _peak(dtype: torch.dtype) -> float:
    """Measure again: the best figure seen is the least disturbed one."""
    return measure_matmul_peak(torch.device("cpu"), dtype, again=True)


def check_bf16_loss(args) -> None:
    """Train the small config for N steps on tinyshakespeare (GPT-2 tokens) in fp32 and in bf16
    autocast from the same initial weights and batches; the final losses should agree within 2%."""
    from scratchllm.data import RandomWindowLoader, load_corpus
    from scratchllm.tokenizer import Tokenizer

    data = load_corpus(SHAKESPEARE, Tokenizer.gpt2(), val_fraction=0.1)
    overrides, batch = CONFIGS["small"]
    config = GPTConfig(vocab_size=50257, context_length=CONTEXT, **overrides)
    finals = {}
    for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        step = ours(config, amp)
        loader = RandomWindowLoader(data.train, batch, CONTEXT, seed=0)
        losses, t = [], time.perf_counter()
        for i in range(args.loss_steps):
            losses.append(step(*loader.next_batch()))
            if (i + 1) % 50 == 0:
                print(f"  {label} step {i + 1}: loss {losses[-1]:.4f} ({(i + 1) * batch * CONTEXT / (time.perf_counter() - t):.0f} tokens/s)",
                      file=sys.stderr)
        finals[label] = statistics.mean(losses[-10:])  # mean of the last 10 steps: less batch noise
        print(f"{label}: loss after {args.loss_steps} steps {finals[label]:.4f} (mean of the last 10 steps), "
              f"first {losses[0]:.4f}")
    rel = abs(finals["bf16"] - finals["fp32"]) / finals["fp32"]
    print(f"bf16 vs fp32 final loss: {rel:.2%} apart ({'within' if rel <= 0.02 else 'OUTSIDE'} 2%)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="precision of both steps (autocast)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (the median is reported)")
    p.add_argument("--configs", default="small,gpt2-small", help="comma-separated: small, gpt2-small")
    p.add_argument("--variants", default="hf", help="references besides ours (comma-separated): hf (same optimizer and "
                   "precision), hf-default (fp32, torch's default AdamW)")
    p.add_argument("--check-bf16-loss", action="store_true", help="compare 200-step losses of fp32 and bf16 instead")
    p.add_argument("--loss-steps", type=int, default=200, help="steps of --check-bf16-loss")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.variants = args.variants.split(",")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"machine load {machine_load()}")
    if args.check_bf16_loss:
        check_bf16_loss(args)
        return
    peak = {"fp32": _peak(torch.float32), "bf16": _peak(torch.bfloat16) if args.dtype == "bfloat16" else 0.0}
    for name in args.configs.split(","):
        bench_config(name, args, peak)
    print(f"\nmeasured matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s" +
          (f", bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s" if peak["bf16"] else "") + f"; load at the end {machine_load()}")


def machine_load() -> str:
    """The 1-, 5- and 15-minute load averages (/proc/loadavg), printed beside timings."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
