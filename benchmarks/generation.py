"""Greedy decoding speed on a CPU: scratchllm as `load()` returns it, at each precision, against
llama.cpp on the same weights and transformers' `generate`.

Run from the repository root:
    python -m benchmarks.generation --rounds 5                 # GPT-2 small, 64 new tokens, 2 threads
    python -m benchmarks.generation --kernels [--rows 8]      # the matrix-vector kernels alone (8 rows: a batch)
    python -m benchmarks.generation --tiny --rounds 1          # a small GPT-2 shape (the test suite runs it)

GPT-2 small with random weights: transformers' GPT2LMHeadModel(GPT2Config()) (seed 0) converted into
ours (`GPT2Adapter.from_hf`), written as a model directory and read back with `scratchllm.load` as a
user would (float32; dtype="bfloat16"; quantize="int8"), and written with export-gguf's writer
(`save_gguf`) as f32, bf16 and q8_0 files for llama.cpp (llama-cpp-python in a process of its own:
llama.cpp and torch each bring an OpenMP runtime and crash in one process; float32 KV cache, as
ours). transformers decodes the same weights in the same dtype (float32, and bfloat16 where our
bfloat16 model is bf16: like for like); int8 is compared with its float32. Batch 1, a 32-token
prompt, greedy, no end-of-text stop, `--threads` threads everywhere.

Each round runs every decoder once, in turn: ours in this process, llama.cpp's three files in one
fresh process (each file loaded, warmed up, then timed from the prompt to the last token, as ours).
Medians over rounds. Each precision's tokens are compared with llama.cpp's at that precision and with
our float32's.

Decoding one token reads every weight matrix once. "Of one read pass" is the speed that reading a
precision's weights once per token would give at the read bandwidth of `--threads` threads measured in
the same run (summing a 1 GiB float32 tensor, every round) over the bytes of weights a step reads (the
embedding tables contribute one row; a tied head reads the table once more in full). It is a
measurement of this run, not a limit of the machine: a decoder faster than it means the pass was
slowed down, and the benchmark says so.

--agreement N: our bfloat16 and int8, and llama.cpp's bf16 and q8_0, decode N greedy tokens; the
table gives how many agree with float32's from the start (ours and llama.cpp's f32 each), and for
ours the share of the N positions where, fed float32's tokens, the precision picks float32's next
token (teacher forcing: one divergence does not decide the rest).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratchllm.checkpoint import save_model
from scratchllm.checkpoint.gguf_file import save_gguf
from scratchllm.checkpoint.hf_families import GPT2Adapter
from scratchllm.checkpoint.loader import load
from scratchllm.checkpoint.weights import gpt_from_state_dict
from scratchllm.core.cpu_probe import cpu_name
from scratchllm.core.device import cpu_bf16_is_native
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.inference.llama_cpp_run import time_llama_cpp
from scratchllm.models.config import GPTConfig
from scratchllm.models.decode_kernels import KERNELS, kernel_choices, measure_kernels
from scratchllm.models.gpt import GPT
from scratchllm.models.quantize import Int8Linear

# precision: (our load() arguments, llama.cpp's GGUF type)
PRECISIONS = {"float32": ({}, "f32"), "bfloat16": ({"dtype": "bfloat16"}, "bf16"), "int8": ({"quantize": "int8"}, "q8_0")}
TINY = dict(n_embd=64, n_layer=2, n_head=2, n_positions=256)  # --tiny: GPT-2's vocabulary, a small body


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights one decode step reads: every Linear layer's weight as stored (int8 + scales
    when quantized), biases and norms, one row of each embedding table (counted as nothing), and a
    head tied to the token table reads that table in full."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    tables = {id(t.weight) for t in (model.tok_emb, getattr(model, "pos_emb", None)) if t is not None}
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in tables or id(p) in linear)
    for m in model.modules():
        if isinstance(m, Int8Linear):
            total += m.qweight.numel() + m.scale.numel() * m.scale.element_size()
    return total


def read_bandwidth(x: torch.Tensor) -> float:
    """GB/s of the fastest of 3 sums of `x` (each streams it from memory once)."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ------------------------------------------------------------------------------------------------
# The kernels alone


SHAPES = {"qkv": (2304, 768), "attn out": (768, 768), "mlp up": (3072, 768), "mlp down": (768, 3072), "head": (50257, 768)}


def matrix_vector_table(rows: int = 1) -> None:
    """GB/s of products (rows, in) x W (out, in)^T for GPT-2 small's shapes, per decode kernel
    (models/decode_kernels.py) and for the int8 layer, weights streamed from memory (>= 300 MB of
    distinct matrices per pass, fastest of 3 passes): the weights' bytes over the time, so a kernel
    that multiplies 8 rows as fast as one shows the same figure for both (a server's batch)."""
    kinds = [(torch.float32, name) for name in KERNELS] + [(torch.bfloat16, "linear"), (torch.bfloat16, "matvec"),
                                                           ("int8", "int8")]
    print(f"  {'weights':9s} {'kernel':8s} " + " ".join(f"{name:>9s}" for name in SHAPES))
    for dtype, kernel in kinds:
        gbs = []
        for out_dim, in_dim in SHAPES.values():
            itemsize = 1 if dtype == "int8" else dtype.itemsize
            count = max(2, round(300e6 / (out_dim * in_dim * itemsize)))
            if dtype == "int8":
                layers = [Int8Linear(torch.nn.Linear(in_dim, out_dim, bias=False)) for _ in range(count)]
                x = torch.randn(rows, in_dim)
                times = measure_kernels_int8(layers, x)
            else:
                weights = [torch.randn(out_dim, in_dim).to(dtype) for _ in range(count)]
                times = measure_kernels(weights, [kernel], rows=rows)[kernel]
            gbs.append(out_dim * in_dim * itemsize * count / times / 1e9)
        label = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        print(f"  {label:9s} {kernel:8s} " + " ".join(f"{x:9.1f}" for x in gbs))
    print("  (GB/s; int8: the int8 bytes, input rounded as Int8Linear chooses)")


def measure_kernels_int8(layers: list[Int8Linear], x: torch.Tensor) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(4):
            start = time.perf_counter()
            for layer in layers:
                layer(x)
            best = min(best, time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------------------------------
# The decoders


def build(tiny: bool, directory: Path, gguf: bool) -> tuple[object, dict[str, Path]]:
    """transformers' random GPT-2 (seed 0), our model directory of the same weights, and the GGUF files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**(TINY if tiny else {}))).eval()
    hf.generation_config.eos_token_id = None  # run all new tokens, as ours does without a stop id
    hf.generation_config.pad_token_id = 0
    config = GPTConfig.from_preset("gpt2-small", **({"emb_dim": 64, "n_layers": 2, "n_heads": 2, "context_length": 256}
                                                     if tiny else {}))
    state = {name: t.clone() for name, t in GPT2Adapter().from_hf(hf.state_dict(), config).items()}
    ours = gpt_from_state_dict(config, state)
    save_model(ours, directory / "model")
    files = {}
    if gguf:
        for precision, (_, gguf_type) in PRECISIONS.items():
            files[precision] = save_gguf(ours, directory / f"model-{gguf_type}.gguf", type=gguf_type)
    return hf, files


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns what it printed as numbers ({"kernels", "speed", "agreement"})."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds; medians are reported (0: agreement only, which load does not skew)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="threads of every decoder")
    parser.add_argument("--agreement", type=int, default=256, help="greedy tokens compared with float32 (0: skip)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--no-transformers", action="store_true", help="leave transformers out")
    parser.add_argument("--llama-repack", action="store_true",
                        help="let llama.cpp repack weights for its own kernels (AMX, interleaved q8_0; crashes q8_0 "
                             "files on some CPUs)")
    parser.add_argument("--tiny", action="store_true", help="a 2 x 64 model with GPT-2's vocabulary (a quick check)")
    parser.add_argument("--kernels", action="store_true", help="only time the matrix-vector kernels")
    parser.add_argument("--rows", type=int, default=1, help="with --kernels: rows multiplied at once (a batch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.kernels:
        print(f"products of {args.rows} row(s) by each weight, {torch.get_num_threads()} threads, load average "
              f"{os.getloadavg()[0]:.1f}:")
        matrix_vector_table(args.rows)
        return {}

    import transformers

    native, why = cpu_bf16_is_native()
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), transformers "
          f"{transformers.__version__}, {llama_cpp_version()}; {platform.processor() or platform.machine()}, "
          f"{cpu_name()}; native bf16: {'yes' if native else 'no'} ({why}); {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        hf, files = build(args.tiny, Path(tmp), gguf=not args.no_llama_cpp)
        ours = {p: load(Path(tmp) / "model", **PRECISIONS[p][0])[0] for p in args.precisions}
        return run(args, hf, ours, files)


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return f"llama-cpp-python {version('llama-cpp-python')}"
    except Exception:  # not installed: the benchmark says so where it would run it
        return "llama-cpp-python not installed"


def run(args, hf, ours: dict[str, GPT], files: dict[str, Path]) -> dict:
    config = next(iter(ours.values())).config
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    for c in kernel_choices():
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in c["seconds"].items())
        print(f"load() chose decode kernel {c['chosen']!r} for {c['dtype']} on {c['threads']} threads ({times} per "
              f"{c['bytes'] / 1e6:.0f} MB pass{'; machine busy: timed on one thread' if c['busy'] else ''})")
    for p, model in ours.items():
        if p == "bfloat16" and model.tok_emb.weight.dtype != torch.bfloat16:
            print("our bfloat16 row is float32: this CPU has no native bf16 (load's note above)")
    results = {"kernels": kernel_choices()}
    if args.rounds > 0:
        results["speed"] = speed_table(args, hf, ours, files, prompt)
    if args.agreement:
        results["agreement"] = agreement_table(args, ours, files, prompt)
    return results


def speed_table(args, hf, ours: dict[str, GPT], files: dict[str, Path], prompt: list[int]) -> dict:
    """{decoder: {"tokens_per_s", "of_read_pass", "same_as_llama_cpp", "same_as_float32"}} (also printed);
    the "same" figures count the new tokens equal from the start."""
    n = args.new_tokens

    decoders: dict[str, tuple[str, object]] = {}  # row name -> (precision, how to decode)
    for p, model in ours.items():
        decoders[f"scratchllm {p}"] = (p, lambda m=model: generate_ids(m, [prompt], n, temperature=0)[0])
    if not args.no_transformers:  # the same weights in the same dtype (int8: transformers has no such path here)
        for p in ("float32", "bfloat16"):
            if p in ours and ours[p].tok_emb.weight.dtype == getattr(torch, p):
                model = hf if p == "float32" else copy.deepcopy(hf).to(torch.bfloat16)
                decoders[f"transformers {p}"] = (p, lambda m=model: hf_generate(m, prompt, n))
    llama_rows = {p: f"llama.cpp {PRECISIONS[p][1]}" for p in args.precisions if p in files}

    tokens: dict[str, list[int]] = {name: fn() for name, (_, fn) in decoders.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in [*decoders, *llama_rows.values()]}
    bandwidth: list[float] = []
    x = torch.ones(256 * 1024 * 1024)  # 1 GiB of float32
    for _ in range(args.rounds):
        bandwidth.append(read_bandwidth(x))
        for name, (_, fn) in decoders.items():
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if out != tokens[name]:
                print(f"  warning: {name} gave different tokens in a later round")
        if llama_rows:
            timed = llama(args, [files[p] for p in llama_rows], prompt, n)
            for (p, name), result in zip(llama_rows.items(), timed):
                times[name] += result["seconds"]
                tokens[name] = result["tokens"]
    del x

    gbs = statistics.median(bandwidth)
    print(f"gpt2-small{' (tiny)' if args.tiny else ''}, batch 1, {len(prompt)}-token prompt, {n} new tokens, greedy; "
          f"read bandwidth on {args.threads} threads: {gbs:.1f} GB/s (median of {args.rounds})")
    print(f"{'decoder':22s} {'tokens/s':>9s} {'vs llama.cpp':>12s} {'vs transformers':>15s} {'of read pass':>12s}  "
          "same tokens as llama.cpp / our float32")
    over = False
    results = {}
    for p in args.precisions:
        rows = [name for name, (q, _) in decoders.items() if q == p] + ([llama_rows[p]] if p in llama_rows else [])
        llama_rate = rate(times, llama_rows.get(p), n)
        hf_rate = rate(times, f"transformers {p}", n) or rate(times, "transformers float32", n)  # int8: float32's
        read_pass = gbs * 1e9 / weight_bytes_per_token(ours[p])  # transformers reads the same bytes as ours
        for name in rows:
            r = rate(times, name, n)
            over |= r > read_pass
            vs_llama = f"{r / llama_rate:11.2f}x" if llama_rate and not name.startswith("llama") else f"{'':12s}"
            vs_hf = f"{r / hf_rate:14.2f}x" if hf_rate and name.startswith("scratchllm") else f"{'':15s}"
            same = [agree(tokens.get(name), tokens.get(llama_rows.get(p))) if not name.startswith("llama") else "-",
                    agree(tokens.get(name), tokens.get("scratchllm float32"))]
            print(f"{name:22s} {r:9.1f} {vs_llama} {vs_hf} {r / read_pass:12.0%}  {same[0]} / {same[1]}")
            results[name] = {"tokens_per_s": r, "of_read_pass": r / read_pass,
                             "same_as_float32": count(tokens.get(name), tokens.get("scratchllm float32")),
                             "same_as_llama_cpp": count(tokens.get(name), tokens.get(llama_rows.get(p)))}
    print(f"weights read per token: " + ", ".join(f"{p} {weight_bytes_per_token(m) / 1e6:.0f} MB" for p, m in ours.items()))
    if over:
        print("warning: a decoder ran faster than this run's measured read pass: the bandwidth measurement was slowed "
              "down (rerun on a quieter machine)")
    return results


def rate(times: dict[str, list[float]], name: str | None, n: int) -> float | None:
    return n / statistics.median(times[name]) if name in times and times[name] else None


def agree(a: list[int] | None, b: list[int] | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{first_difference(a, b)}/{len(b)}"


def count(a: list[int] | None, b: list[int] | None) -> int | None:
    return None if a is None or b is None else first_difference(a, b)


def hf_generate(hf, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def llama(args, paths: list[Path], prompt: list[int], n: int, repeat: int = 1) -> list[dict]:
    try:
        return time_llama_cpp(paths, prompt, n, threads=args.threads, repeat=repeat, plain_buffers=not args.llama_repack)
    except ScratchLLMError as exc:
        raise SystemExit(f"benchmarks.generation: {exc} (--no-llama-cpp leaves llama.cpp out)") from None


def agreement_table(args, ours: dict[str, GPT], files: dict[str, Path], prompt: list[int]) -> dict:
    """Each precision's greedy tokens against float32's over --agreement tokens (see the docstring):
    {decoder: {"same_from_start", "next_token" (ours only)}}."""
    n = min(args.agreement, next(iter(ours.values())).config.context_length - len(prompt))
    results: dict = {}
    if "float32" not in ours:
        return results
    reference = generate_ids(ours["float32"], [prompt], n, temperature=0)[0]
    full = torch.tensor([prompt + reference])
    llama_tokens = {}
    if files:
        timed = llama(args, [files[p] for p in args.precisions if p in files], prompt, n)
        llama_tokens = dict(zip([p for p in args.precisions if p in files], (t["tokens"] for t in timed)))
    print(f"agreement with our float32 over {n} greedy tokens (tokens equal from the start; ours: next-token choice "
          "fed float32's tokens):")
    with torch.inference_mode():
        want = ours["float32"](full)[0, len(prompt) - 1:-1].argmax(-1)  # (n,)
        for p, model in ours.items():
            got = model(full)[0, len(prompt) - 1:-1].float().argmax(-1)
            same = first_difference(generate_ids(model, [prompt], n, temperature=0)[0], reference)
            share = (got == want).float().mean().item()
            line = f"  scratchllm {p:9s} {same:4d}/{n}, next token {share:.1%}"
            results[f"scratchllm {p}"] = {"same_from_start": same, "next_token": share}
            if p in llama_tokens:
                same_llama = first_difference(llama_tokens[p], reference)
                results[f"llama.cpp {PRECISIONS[p][1]}"] = {"same_from_start": same_llama}
                line += f";  llama.cpp {PRECISIONS[p][1]:5s} {same_llama:4d}/{n}"
                if p != "float32" and "float32" in llama_tokens:
                    line += f" (vs llama.cpp f32: {first_difference(llama_tokens[p], llama_tokens['float32'])})"
            print(line)
    return results


if __name__ == "__main__":
    main()
