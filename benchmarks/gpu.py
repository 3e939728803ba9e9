"""GPU training step and decoding: scratchllm against a nanoGPT-style GPT and transformers, in one process.

    python -m benchmarks.gpu                   # CUDA: gpt2-small, bf16 autocast, batch 16 x 1024; ~5 min on an H200
    python -m benchmarks.gpu --skip-compile    # without the three torch.compile variants (each compiles for ~1 min)
    python -m benchmarks.gpu --tiny            # small shapes on any device: what the test suite runs on a CPU

Training: one optimizer step is what `training.loop.fit` does: forward and loss under bf16 autocast
(float32 on a CPU), backward, gradient clipping at 1.0, fused AdamW (weight decay on 2-D weights,
`training.optim.make_optimizer`, for every model alike), zeroing the gradients. No value is read back
inside a timed round, for any model. The models, all GPT-2 small with dropout 0 on the same batches:

- scratchllm `GPT.loss`: its default loss path (fused head + cross-entropy, padded head on a GPU;
  chunked on a CPU), and the textbook path (`impl="logits"`: padded logits + F.cross_entropy);
- a nanoGPT-style GPT written below (fused qkv Linear, SDPA causal attention, tanh GELU, LayerNorm,
  head tied to an embedding padded to 50,304 rows, F.cross_entropy on the logits), as nanoGPT's
  model.py computes it;
- transformers' GPT2LMHeadModel (SDPA attention, its own loss from `labels=`).

Each eager model, and scratchllm's two loss paths and the reference under torch.compile, run alternately
round by round; tokens/s are medians over rounds; MFU is model FLOPs (`models.gpt.flops_per_token`,
the same figure for every model) per second over the device's peak (`core.device.peak_flops`: the
bf16 datasheet figure for known GPUs, a measured matmul peak elsewhere).

Decoding: greedy, batch 1 and 8, a 32-token prompt and 256 new tokens, bf16 weights on CUDA (float32
on a CPU), from one set of random GPT-2 small weights: scratchllm's static cache with the step
replayed as a CUDA graph, scratchllm's eager decode loop, and transformers' `generate`, alternating.
The bound is the device's copy bandwidth (bytes read + written per second copying 1 GiB) over the
weight bytes one step reads. Token agreement with scratchllm's eager path and with transformers is
reported (bf16 kernels that differ in summation order can flip a near-tie of a random model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.generation import weight_bytes_per_token
from scratchllm.checkpoint.hf_families import GPT2Adapter
from scratchllm.checkpoint.weights import gpt_from_state_dict
from scratchllm.core.device import peak_flops, resolve_device
from scratchllm.inference.generation import generate_ids
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT, flops_per_token
from scratchllm.models.loss import padded_rows
from scratchllm.training.config import TrainConfig
from scratchllm.training.optim import make_optimizer

# The issue's shapes on CUDA; small ones for a CPU (and the test suite).
FULL = dict(model=dict(), batch=16, steps=10, rounds=5, warmup=3, prompt=32, new_tokens=256, decode_batches=(1, 8))
TINY = dict(model=dict(vocab_size=1000, emb_dim=64, n_layers=2, n_heads=4, context_length=64), batch=2, steps=2,
            rounds=2, warmup=1, prompt=8, new_tokens=12, decode_batches=(1, 2))


# ------------------------------------------------------------------------------------------------
# The nanoGPT-style reference


class RefBlock(nn.Module):
    """Pre-LayerNorm block: fused qkv projection, SDPA causal attention, tanh-GELU MLP."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C = config.emb_dim
        self.n_heads = config.n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(C, dim=2))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    """GPT-2 the nanoGPT way: the vocabulary padded to a multiple of 64 rows (extra classes that are
    never targets), the head tied to the token embedding, F.cross_entropy on the full logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.vocab = padded_rows(config.vocab_size)
        self.wte = nn.Embedding(self.vocab, config.emb_dim)
        self.wpe = nn.Embedding(config.context_length, config.emb_dim)
        self.blocks = nn.ModuleList(RefBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.emb_dim)
        self.head = nn.Linear(config.emb_dim, self.vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, V_pad)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def hf_gpt2(config: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                           n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=config.vocab_size - 1,
                           eos_token_id=config.vocab_size - 1, loss_type="ForCausalLM")
    return GPT2LMHeadModel(hf_config)


# ------------------------------------------------------------------------------------------------
# Training


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(model: nn.Module, device: torch.device, amp: torch.dtype | None):
    """step(loss_fn) -> a function (x, y) -> loss that runs one optimizer step of `model`."""
    opt = make_optimizer(model, TrainConfig(lr=3e-4), device)
    params = [p for p in model.parameters() if p.requires_grad]

    def make(loss_fn):
        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    return make


def bench_training(device: torch.device, shape: dict, args) -> dict:
    config = GPTConfig.from_preset("gpt2-small", **shape["model"])
    T, B = config.context_length, shape["batch"]
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    ours = GPT(config).to(device).train()
    ref = RefGPT(config).to(device).train()
    hf = hf_gpt2(config).to(device).train()
    ours_step, ref_step, hf_step = trainer(ours, device, amp), trainer(ref, device, amp), trainer(hf, device, amp)

    def ours_loss(x, y):
        return ours.loss(x, y)

    def ours_logits_loss(x, y):
        return ours.loss(x, y, impl="logits")

    def hf_loss(x, y):  # labels are shifted inside: T - 1 predictions of the same T positions
        return hf(input_ids=x, labels=x).loss

    variants = {
        "scratchllm": ours_step(ours_loss),
        "scratchllm, logits + F.cross_entropy": ours_step(ours_logits_loss),
        "nanoGPT-style": ref_step(ref),
        "transformers GPT2LMHeadModel": hf_step(hf_loss),
    }
    if args.compile:
        variants["scratchllm, compiled"] = ours_step(torch.compile(ours_loss))
        variants["scratchllm, logits + F.cross_entropy, compiled"] = ours_step(torch.compile(ours_logits_loss))
        variants["nanoGPT-style, compiled"] = ref_step(torch.compile(ref))
    g = torch.Generator().manual_seed(1)
    windows = [torch.randint(0, config.vocab_size, (B, T + 1), generator=g) for _ in range(4)]
    batches = [(w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)) for w in windows]  # (x, y)

    # Parity before any step: scratchllm's loss paths on the same weights and batch.
    x, y = batches[0]
    with torch.no_grad(), torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
        parity = {impl: ours.loss(x, y, impl=impl).item() for impl in ("auto", "chunked", "fused", "logits")}

    first: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for name, step in variants.items():  # warm-up: kernel selection, allocator, compilation
        t = time.perf_counter()
        for i in range(shape["warmup"]):
            loss = step(*batches[i % 4])
            first.setdefault(name, loss.item())
        sync(device)
        compile_s[name] = time.perf_counter() - t
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(shape["rounds"]):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]  # alternate, so drift hits all
        for name in order:
            sync(device)
            t = time.perf_counter()
            for i in range(shape["steps"]):
                variants[name](*batches[i % 4])
            sync(device)
            rates[name].append(shape["steps"] * B * T / (time.perf_counter() - t))
    device_peak = peak_flops(device, amp)
    peak, source = device_peak.flops, device_peak.source
    flops = flops_per_token(config, T)
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"\ntraining: gpt2-small shape {config.n_layers} x {config.emb_dim}, vocab {config.vocab_size}, batch {B} x {T}, "
          f"{'bf16 autocast' if amp else 'float32'}, fused AdamW; {shape['steps']} steps x {shape['rounds']} rounds; "
          f"{flops / 1e6:.0f} MFLOP/token; peak {peak / 1e12:.1f} TFLOP/s ({source})")
    print("  loss on the first batch, same weights: " + ", ".join(f"{k} {v:.4f}" for k, v in parity.items()))
    print(f"  {'model':40s} {'tokens/s':>10s} {'MFU':>6s} {'ms/step':>8s}  first loss  warm-up s  rounds")
    for name, value in median.items():
        ms = B * T / value * 1e3
        print(f"  {name:40s} {value:10,.0f} {flops * value / peak:6.1%} {ms:8.1f}  {first[name]:10.4f}  {compile_s[name]:9.1f}  "
              + ", ".join(f"{v:,.0f}" for v in rates[name]))
    ratios = {}
    for ours_name, ref_name in (("scratchllm", "nanoGPT-style"), ("scratchllm", "transformers GPT2LMHeadModel"),
                                ("scratchllm, logits + F.cross_entropy", "nanoGPT-style"),
                                ("scratchllm, compiled", "nanoGPT-style, compiled"),
                                ("scratchllm, logits + F.cross_entropy, compiled", "nanoGPT-style, compiled")):
        if ours_name in median and ref_name in median:
            ratios[f"{ours_name} / {ref_name}"] = median[ours_name] / median[ref_name]
            print(f"  {ours_name} / {ref_name}: {ratios[f'{ours_name} / {ref_name}']:.2f}x")
    if device.type == "cuda":  # the issue's goals, on the full shapes
        goals = [f"eager >= 1.10x nanoGPT-style: {ratios['scratchllm / nanoGPT-style']:.2f}x"]
        if args.compile:
            goals += [f"compiled >= 1.10x: {ratios['scratchllm, compiled / nanoGPT-style, compiled']:.2f}x",
                      f"MFU compiled >= 45%: {flops * median['scratchllm, compiled'] / peak:.1%}"]
        print("  goals: " + "; ".join(goals))
    return {"tokens_per_s": median, "rounds": rates, "mfu": {k: flops * v / peak for k, v in median.items()},
            "peak_flops": peak, "peak_source": source, "ratios": ratios, "parity_loss": parity, "first_loss": first,
            "warmup_s": compile_s}


# ------------------------------------------------------------------------------------------------
# Decoding


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes read + written per second copying an nbytes tensor on `device` (best of 3)."""
    x = torch.ones(nbytes // 4, device=device)
    y = torch.empty_like(x)
    best = 0.0
    for _ in range(4):
        sync(device)
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = max(best, 2 * x.nbytes / (time.perf_counter() - t))
    return best


def bench_decoding(device: torch.device, shape: dict, args) -> dict:
    config = GPTConfig.from_preset("gpt2-small", **shape["model"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    hf = hf_gpt2(config).eval()
    hf.generation_config.eos_token_id = None  # every new token, as ours without eos_id
    hf.generation_config.pad_token_id = 0
    state = {k: t.clone() for k, t in GPT2Adapter().from_hf(hf.state_dict(), config).items()}
    ours = gpt_from_state_dict(config, state, device=device, dtype=dtype)
    hf = hf.to(device=device, dtype=dtype)
    n, results = shape["new_tokens"], {}
    bandwidth = copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 26)
    bound = bandwidth / weight_bytes_per_token(ours)
    print(f"\ndecoding: gpt2-small shape, {str(dtype).removeprefix('torch.')} weights, {shape['prompt']}-token prompts, "
          f"{n} new tokens, greedy; copy bandwidth {bandwidth / 1e9:.0f} GB/s, "
          f"{weight_bytes_per_token(ours) / 1e6:.0f} MB of weights per step: bound {bound:,.0f} steps/s")
    for batch in shape["decode_batches"]:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(0, config.vocab_size, (batch, shape["prompt"]), generator=g).tolist()

        def hf_generate():
            with torch.inference_mode():
                ids = torch.tensor(prompts, device=device)
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
            return out[:, len(prompts[0]):].tolist()

        methods = {
            "scratchllm, static cache" + (" + CUDA graph" if device.type == "cuda" else ""):
                lambda: generate_ids(ours, prompts, n, temperature=0, decoder="static"),
            "scratchllm, eager": lambda: generate_ids(ours, prompts, n, temperature=0, decoder="eager"),
            "transformers generate": hf_generate,
        }
        tokens, first_s = {}, {}
        for name, fn in methods.items():  # warm-up; the static decoder captures its graph here
            t = time.perf_counter()
            tokens[name] = fn()
            first_s[name] = time.perf_counter() - t
        times: dict[str, list[float]] = {name: [] for name in methods}
        for r in range(shape["rounds"]):
            for name in list(methods) if r % 2 == 0 else list(methods)[::-1]:
                t = time.perf_counter()
                out = methods[name]()
                times[name].append(time.perf_counter() - t)
                if out != tokens[name]:
                    print(f"  warning: {name} gave different tokens in a later round")
        eager, hf_tokens = tokens["scratchllm, eager"], tokens["transformers generate"]
        rate = {name: batch * n / statistics.median(ts) for name, ts in times.items()}
        print(f"  batch {batch}: {'method':34s} {'tokens/s':>9s} {'vs HF':>7s} {'of bound':>9s}  first call s  "
              "same tokens as eager / transformers")
        for name in methods:
            print(f"  batch {batch}: {name:34s} {rate[name]:9,.0f} {rate[name] / rate['transformers generate']:6.2f}x "
                  f"{rate[name] / batch / bound:9.1%}  {first_s[name]:12.2f}  {_agreement(tokens[name], eager)} / "
                  f"{_agreement(tokens[name], hf_tokens)}")
        static = next(iter(methods))
        if device.type == "cuda" and batch == 1:
            print(f"  goals: batch 1 >= 1,000 tokens/s and >= 5x transformers: {rate[static]:,.0f} tokens/s, "
                  f"{rate[static] / rate['transformers generate']:.1f}x; same tokens as eager: {tokens[static] == eager}")
        results[batch] = {"tokens_per_s": rate, "first_call_s": first_s, "same_as_eager": {k: v == eager for k, v in tokens.items()},
                          "same_as_transformers": {k: v == hf_tokens for k, v in tokens.items()}}
    return {"bound_steps_per_s": bound, "copy_bandwidth": bandwidth, "batches": results}


def _agreement(a: list[list[int]], b: list[list[int]]) -> str:
    if a == b:
        return "yes"
    firsts = [next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra)) for ra, rb in zip(a, b)]
    return f"no (rows agree for their first {min(firsts)}+ tokens)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cuda, cpu")
    p.add_argument("--tiny", action="store_true", help="small shapes (the default on a CPU)")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-decoding", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default: 5 on CUDA, 2 tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per round and model")
    p.add_argument("--new-tokens", type=int, default=None, help="decoded tokens per prompt")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    shape = dict(TINY if args.tiny or device.type != "cuda" else FULL)
    for key, value in (("rounds", args.rounds), ("steps", args.steps), ("new_tokens", args.new_tokens)):
        if value is not None:
            shape[key] = value
    # Compiling needs a C++ toolchain on a CPU and minutes anywhere: by default only on CUDA.
    args.compile = not args.skip_compile and device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {device} ({name}), "
          f"{torch.get_num_threads()} CPU threads")
    t0 = time.perf_counter()
    results = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__}
    if not args.skip_training:
        results["training"] = bench_training(device, shape, args)
        print(f"(training: {time.perf_counter() - t0:.0f} s)")
    if not args.skip_decoding:
        results["decoding"] = bench_decoding(device, shape, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
