"""Training-step throughput: scratchllm's step against transformers' GPT2LMHeadModel, in one process.

A step is what `scratchllm.training.loop.fit` does per optimizer step: forward, loss, backward, gradient
clipping, AdamW, zeroing the gradients. Ours uses the chunked linear + cross-entropy loss
(`GPT.loss`, no (B, T, V) logits) and fused AdamW with weight decay on 2-D weights; the reference is
transformers' GPT2LMHeadModel with the same shape (attn_implementation="sdpa", its own loss from
`labels=`) and torch's default AdamW, as a user of that library would write it. Both run alternately
on the same batches; tokens/s are the median over rounds, MFU is against this machine's matmul peak
measured in the same run (the best of several measurements, since the machine may be shared).

    python -m benchmarks.train_step                      # float32, both configs
    python -m benchmarks.train_step --dtype bfloat16     # ours under bf16 autocast vs theirs in fp32
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
from scratchllm.core import device as device_mod
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


def ours(config: GPTConfig, amp: torch.dtype | None, fused: bool = True):
    model = GPT(config).train()
    opt = make_optimizer(model, TrainConfig(lr=3e-4), torch.device("cpu"), fused=fused)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            loss = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def transformers_gpt2(config: GPTConfig, amp: torch.dtype | None, fused: bool = False):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                    n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    attn_implementation="sdpa")
    model = GPT2LMHeadModel(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, **({"fused": True} if fused else {}))

    def step(x, y) -> float:
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            loss = model(input_ids=x, labels=x).loss  # shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench_config(name: str, args, peak: dict[str, float]) -> dict[str, float]:
    overrides, batch = CONFIGS[name]
    config = GPTConfig(vocab_size=50257, context_length=CONTEXT, **overrides)
    amp = torch.bfloat16 if args.dtype == "bfloat16" else None
    torch.manual_seed(0)
    variants = {"scratchllm": ours(config, amp)}
    if "hf" in args.variants:
        variants["transformers"] = transformers_gpt2(config, None)  # the reference: fp32, default AdamW
    if "hf-bf16" in args.variants and amp:
        variants["transformers-bf16"] = transformers_gpt2(config, amp)
    if "hf-fused" in args.variants:
        variants["transformers+fusedAdamW"] = transformers_gpt2(config, None, fused=True)
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
    denom = peak["bf16"] if amp else peak["fp32"]
    print(f"\n{name}: {config.n_layers} layers x {config.emb_dim} dims, {config.n_heads} heads, context {CONTEXT}, "
          f"batch {batch}, vocab {config.vocab_size}; {flops / 1e6:.0f} MFLOP/token (training)")
    for key, values in rates.items():
        med = statistics.median(values)
        result[key] = med
        prec = "bf16 autocast" if (key == "scratchllm" and amp) or key == "transformers-bf16" else "fp32"
        mfu = flops * med / (denom if prec != "fp32" else peak["fp32"])
        print(f"  {key:<24} {med:8.0f} tokens/s  ({prec}; rounds: {', '.join(f'{v:.0f}' for v in values)}) "
              f"MFU {mfu:.1%}")
    if "transformers" in result:
        print(f"  ratio scratchllm / transformers (fp32, default AdamW): {result['scratchllm'] / result['transformers']:.2f}x")
    return result


def _flops(config: GPTConfig) -> float:
    from scratchllm.models.gpt import flops_per_token

    return flops_per_token(config, CONTEXT, training=True)


def _peak(dtype: torch.dtype) -> float:

    device_mod._MEASURED_PEAK.clear()  # measure again: the best figure is the least disturbed one
    return measure_matmul_peak(torch.device("cpu"), dtype)


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
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="precision of scratchllm's step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (the median is reported)")
    p.add_argument("--configs", default="small,gpt2-small", help="comma-separated: small, gpt2-small")
    p.add_argument("--variants", default="hf", help="references besides ours: hf, hf-fused, hf-bf16 (comma-separated)")
    p.add_argument("--check-bf16-loss", action="store_true", help="compare 200-step losses of fp32 and bf16 instead")
    p.add_argument("--loss-steps", type=int, default=200, help="steps of --check-bf16-loss")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.variants = args.variants.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; machine load {_load()}")
    if args.check_bf16_loss:
        check_bf16_loss(args)
        return
    peak = {"fp32": _peak(torch.float32), "bf16": _peak(torch.bfloat16) if args.dtype == "bfloat16" else 0.0}
    for name in args.configs.split(","):
        bench_config(name, args, peak)
    print(f"\nmeasured matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s" +
          (f", bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s" if peak["bf16"] else "") + f"; load at the end {_load()}")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
