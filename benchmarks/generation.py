"""Greedy decoding speed: scratchllm (KV cache, and without it) against transformers, same weights.

Run from the repository root:  python -m benchmarks.generation [--dtype bfloat16] [--rounds 3]
                               python -m benchmarks.generation --kernels   (matrix-vector kernels only)

GPT-2 small with random weights: a Hugging Face GPT2LMHeadModel(GPT2Config()) is built first and
its state dict converted into ours (`checkpoint.hf_families.GPT2Adapter.from_hf`), so both decode with the same
numbers. Batch 1, a 32-token prompt, 128 new tokens, greedy, no end-of-text stop. `--dtype` sets
both models' weights (transformers' too: like for like). Every method must produce transformers'
tokens in float32 or the benchmark says so (in bfloat16 the last bits differ between kernels, so
the greedy paths may part after a while; the column says where).

Decoding one token reads every weight matrix once, so on a CPU memory bandwidth sets its pace. The
"read pass" is a measurement, not a physical limit: the tokens per second that reading the weights
once per token would give at the read bandwidth measured in the same run, on the threads the
decoders use (torch's thread count), as the bytes per second of summing a 1 GiB float32 tensor.
It moves with the machine's state (31.5 and 44.3 GB/s in two runs of docs/LOG.md), and a method
that beats it means this run's pass was slowed down; the benchmark then says so.

The methods and the bandwidth measurement alternate round by round and medians are reported,
because other processes on a shared machine slow some rounds down. The transformers version is
printed in the header: its `generate` got much faster between 4.x and 5.x.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from scratchllm.checkpoint.hf_families import GPT2Adapter
from scratchllm.checkpoint.weights import gpt_from_state_dict
from scratchllm.inference.decode_kernels import optimize_for_decoding, split_product
from scratchllm.inference.generation import generate_ids
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT


def best_gbs(run, nbytes: int) -> float:
    """GB/s of the fastest of 3 calls of run(), each moving nbytes."""
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        run()
        best = max(best, nbytes / (time.perf_counter() - t) / 1e9)
    return best


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of the parameters one decode step reads: all of them except the two embedding tables,
    of which it reads one row each; the tied head reads the token table again, in full."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embeddings = model.pos_emb.weight
    if model.config.tie_embeddings:
        return total - embeddings.numel() * embeddings.element_size()
    tok = model.tok_emb.weight
    return total - embeddings.numel() * embeddings.element_size() - tok.numel() * tok.element_size()




SHAPES = {"qkv": (2304, 768), "attn out": (768, 768), "mlp up": (3072, 768), "mlp down": (768, 3072), "head": (50257, 768)}


def matrix_vector_table() -> None:
    """GB/s of one-row products (1, in) x W (out, in)^T for GPT-2 small's shapes, per kernel and
    weight layout, weights streamed from memory (>= 300 MB of distinct matrices per pass, best of 3
    passes): the choices behind `optimize_for_decoding` (float32) and `matrix_vector_kernels` (bfloat16)."""
    import torch.nn.functional as F

    packed_linear = torch.ops.mkldnn._linear_pointwise

    def pack(w):
        return torch.ops.mkldnn._reorder_linear_weight(w, 1)

    cases = [  # dtype, label, prepare the weight, compute, oneDNN enabled
        (torch.float32, "row-major (out, in), as nn.Linear", lambda w: w, F.linear, True),
        (torch.float32, "column-major", lambda w: w.t().contiguous().t(), F.linear, True),
        (torch.float32, "oneDNN packed", pack, lambda v, w: packed_linear(v, w, None, "none", [], ""), True),
        (torch.float32, "column-major, split (optimize_for_decoding)", lambda w: w.t().contiguous().t(), split_product, True),
        (torch.bfloat16, "row-major, oneDNN (PyTorch default)", lambda w: w, F.linear, True),
        (torch.bfloat16, "row-major, oneDNN off (decode steps)", lambda w: w, F.linear, False),
        (torch.bfloat16, "oneDNN packed", pack, lambda v, w: packed_linear(v, w, None, "none", [], ""), True),
    ]
    print(f"  {'dtype':8s} {'kernel':44s} " + " ".join(f"{name:>9s}" for name in SHAPES))
    for dtype, label, prepare, compute, onednn in cases:
        row = []
        for out_dim, in_dim in SHAPES.values():
            nbytes = out_dim * in_dim * dtype.itemsize
            ws = [prepare(torch.randn(out_dim, in_dim).to(dtype)) for _ in range(max(2, round(300e6 / nbytes)))]
            v = torch.randn(1, in_dim).to(dtype)
            torch.backends.mkldnn.enabled = onednn
            best = 0.0
            with torch.inference_mode():
                for _ in range(3):
                    t = time.perf_counter()
                    for w in ws:
                        compute(v, w)
                    best = max(best, nbytes * len(ws) / (time.perf_counter() - t) / 1e9)
            torch.backends.mkldnn.enabled = True
            row.append(best)
            del ws
        print(f"  {str(dtype).removeprefix('torch.'):8s} {label:44s} " + " ".join(f"{x:9.1f}" for x in row))
    print("  (GB/s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="both models' weights (ours and transformers')")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--skip-uncached", action="store_true", help="skip the slow no-cache run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--kernels", action="store_true", help="only time the matrix-vector kernels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernels:
        print(f"matrix-vector products, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}:")
        matrix_vector_table()
        return

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.generation_config.eos_token_id = None  # run all new tokens, as ours does without eos_id
    hf.generation_config.pad_token_id = 0
    config = GPTConfig.from_preset("gpt2-small")
    state = {name: t.clone() for name, t in GPT2Adapter().from_hf(hf.state_dict(), config).items()}  # no shared memory
    ours = gpt_from_state_dict(config, state, dtype=args.dtype)
    hf = hf.to(ours.tok_emb.weight.dtype)  # like for like: transformers decodes in the same precision
    HF = f"transformers generate ({args.dtype})"

    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    x = torch.ones(256 * 1024 * 1024)  # 1 GiB of float32

    # optimize_for_decoding changes float32 weights only (column-major storage); see its docstring.
    ours_opt = optimize_for_decoding(copy.deepcopy(ours)) if args.dtype == "float32" else None

    def run_ours(use_cache: bool = True, model: GPT = ours) -> list[int]:
        return generate_ids(model, [prompt], n, temperature=0, use_cache=use_cache)[0]

    def run_hf() -> list[int]:
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
        return out[0, len(prompt):].tolist()

    methods = {"scratchllm, KV cache": run_ours, HF: run_hf}
    if ours_opt is not None:
        methods["scratchllm, KV cache, decode layout"] = lambda: run_ours(model=ours_opt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; gpt2-small, both models' weights in {args.dtype}, "
          f"batch 1, {len(prompt)}-token prompt, {n} new tokens, greedy")
    tokens: dict[str, list[int]] = {}
    for name, fn in methods.items():  # warm-up (allocator, oneDNN/MKL kernel selection)
        tokens[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    bandwidth: list[float] = []
    for _ in range(args.rounds):
        bandwidth.append(best_gbs(x.sum, x.nbytes))
        for name, fn in methods.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            if out != tokens[name]:
                print(f"  warning: {name} gave different tokens in a later round")
    if not args.skip_uncached:
        t = time.perf_counter()
        tokens["scratchllm, no cache"] = run_ours(use_cache=False)
        times["scratchllm, no cache"] = [time.perf_counter() - t]
    del x

    gbs = statistics.median(bandwidth)
    weight_bytes = weight_bytes_per_token(ours)  # the same weights in the same dtype for both
    read_pass = gbs * 1e9 / weight_bytes
    print(f"read bandwidth on {torch.get_num_threads()} threads (median of {args.rounds} rounds): {gbs:.1f} GB/s")
    print(f"weights read per token: {weight_bytes / 1e6:.0f} MB ({args.dtype}, both models)")
    reference = tokens[HF]
    hf_rate = n / statistics.median(times[HF])
    print(f"{'method':44s} {'tokens/s':>9s} {'vs HF':>7s} {'of read pass':>12s}  same tokens as HF")
    over = False
    for name, ts in times.items():
        rate = n / statistics.median(ts)
        over |= rate > read_pass
        same = sum(a == b for a, b in zip(tokens[name], reference))
        agree = "yes" if tokens[name] == reference else f"no: first {next((i for i, (a, b) in enumerate(zip(tokens[name], reference)) if a != b), n)} of {n} agree ({same} in all)"
        print(f"{name:44s} {rate:9.1f} {rate / hf_rate:6.2f}x {rate / read_pass:12.0%}   {agree}")
    if "scratchllm, no cache" in tokens:
        same_cache = tokens["scratchllm, no cache"] == tokens["scratchllm, KV cache"]
        print(f"KV cache and no cache give the same tokens: {'yes' if same_cache else 'NO'}")
    print(f"one read pass = measured read bandwidth / weight bytes per token = {read_pass:.1f} tokens/s "
          "(a measurement of this run, not a limit of the machine)")
    if over:
        print("warning: a method ran faster than this run's measured read pass: the bandwidth measurement was slowed "
              "down (rerun on a quieter machine)")

if __name__ == "__main__":
    main()
