"""How closely llama.cpp runs our GGUF exports, per family and number format: f32, f16, bf16, q8_0.

Each family's switches are put on the project's small-budget recipe (its tokenizer trained here, the
recipe's optimizer and schedule), trained briefly on tinyshakespeare (the first 90% of its characters),
written with `export-gguf` in each format and run in llama.cpp (llama-cpp-python, its own process,
float32 KV cache). On the held-out 10%:

- next-token agreement: the share of positions of `--windows` windows of the model's context where
  llama.cpp's most likely next token is ours (teacher forcing: both read the same text);
- greedy: `--prompts` prompts cut from the held-out text, `--new-tokens` (32) new tokens each; the share
  of prompts whose new tokens are all ours, and the mean number of tokens before the first difference;
- logits: the largest and the mean absolute difference from ours;
- the file's size.

Agreement is not timing: it can be measured on a loaded machine.

    python -m benchmarks.gguf_agreement                      # about 15 minutes on 2 cores
    python -m benchmarks.gguf_agreement --tiny --steps 60                # 2 x 64 models: a quick look
    python -m benchmarks.gguf_agreement --steps 20 --families demo --types f32 q8_0

Writes OUT/results.json and prints one row per family and format.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.generation import first_difference
from scratchllm.checkpoint.gguf_file import GGUF_TYPES, export_gguf
from scratchllm.checkpoint.loader import load
from scratchllm.inference.generation import generate_ids
from scratchllm.inference.llama_cpp_run import decode_logits, run_llama_cpp
from scratchllm.recipes.demo import SMALL_BUDGET, split_text, train_recipe

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
_ROPE = dict(norm="rmsnorm", position="rope", bias=False, qkv_bias=False)

# family: the switches put on the small-budget recipe's model (GPT-2 and Llama-style shapes of it)
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": dict(norm="layernorm", position="learned", mlp="gelu", bias=True, qkv_bias=True, tie_embeddings=True),
    "llama": dict(**_ROPE, mlp="swiglu", n_kv_heads=2, mlp_hidden_dim=352),
    "qwen2": dict(**{**_ROPE, "qkv_bias": True}, mlp="swiglu", n_kv_heads=2, mlp_hidden_dim=352, tie_embeddings=True),
    "qwen3": dict(**_ROPE, mlp="swiglu", qk_norm=True, head_dim=64, n_kv_heads=2, mlp_hidden_dim=352),
    "demo": {},  # the recipe itself: RMSNorm, RoPE, squared ReLU, untied head (Arcee)
    "starcoder2": dict(norm="layernorm", position="rope", mlp="gelu", bias=True, qkv_bias=True, n_kv_heads=2),
    "stablelm": dict(norm="layernorm", position="rope", mlp="swiglu", bias=False, qkv_bias=True, mlp_hidden_dim=352),
}


def measure(model, tokenizer, path: Path, windows: list[list[int]], prompts: list[list[int]],
            new_tokens: int) -> dict[str, Any]:
    """llama.cpp's agreement with `model` on the GGUF file `path`."""
    answer = run_llama_cpp(path, logits=windows, greedy=[{"prompt": p, "max_tokens": new_tokens} for p in prompts])
    agree, diffs, total = 0, [], 0
    with torch.no_grad():
        for ids, block in zip(windows, answer["logits"]):
            ours = model(torch.tensor([ids]))[0].numpy()
            theirs = decode_logits(block)
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += len(ids)
            diffs.append(np.abs(ours - theirs))
    ours_greedy = generate_ids(model, prompts, max_new_tokens=new_tokens, temperature=0)
    same_prefix = [first_difference(x, y) for x, y in zip(ours_greedy, answer["greedy"])]
    every = np.concatenate([d.ravel() for d in diffs])
    return {"next_token_agreement": agree / total, "greedy_all_same": float(np.mean([n == new_tokens for n in same_prefix])),
            "greedy_tokens_before_first_difference": float(np.mean(same_prefix)),
            "max_abs_logit_diff": float(every.max()), "mean_abs_logit_diff": float(every.mean()),
            "file_bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHAKESPEARE), help="text file (the last 10%% of its characters held out)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--types", nargs="+", default=list(GGUF_TYPES), choices=list(GGUF_TYPES))
    p.add_argument("--steps", type=int, default=100, help="training steps of each family's model")
    p.add_argument("--batch-size", type=int, default=8, help="windows per step (the recipe's is 32)")
    p.add_argument("--tiny", action="store_true", help="a quarter of the recipe's model: 2 layers of 64, context 64")
    p.add_argument("--windows", type=int, default=8, help="held-out windows scored with teacher forcing")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts continued greedily")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", default="runs/gguf-agreement")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    text = Path(args.data).read_text(encoding="utf-8")
    train, val = split_text(text)
    out = Path(args.out)
    results: dict[str, Any] = {"data": args.data, "steps": args.steps, "batch_size": args.batch_size, "tiny": args.tiny,
                               "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            shape = dict(emb_dim=64, n_layers=2, context_length=64, mlp_hidden_dim=None) if args.tiny else {}
            recipe = SMALL_BUDGET.replace(model={**FAMILIES[family], **shape}, train={"batch_size": args.batch_size})
            run = Path(tmp) / family
            summary = train_recipe(recipe, [train], [val], run, max_steps=args.steps, device="cpu")
            model, tokenizer = load(run, device="cpu")
            context = model.config.context_length
            ids = tokenizer.encode(val)
            step = max(context, (len(ids) - context) // max(args.windows, 1))
            windows = [ids[i:i + context] for i in range(0, len(ids) - context, step)][:args.windows]
            prompts = [ids[i + 7:i + 7 + 16] for i in range(0, len(ids) - 32, max(1, len(ids) // max(args.prompts, 1)))]
            prompts = prompts[:args.prompts]
            for kind in args.types:
                path = export_gguf(run, Path(tmp) / f"{family}-{kind}.gguf", type=kind)
                row = {"family": family, "type": kind, "val_loss": summary.get("val_loss"),
                       **measure(model, tokenizer, path, windows, prompts, args.new_tokens)}
                results["rows"][f"{family}/{kind}"] = row
                print(f"{family:6s} {kind:5s} next-token {row['next_token_agreement']:.3f}  greedy all-{args.new_tokens} "
                      f"{row['greedy_all_same']:.2f} (first difference after {row['greedy_tokens_before_first_difference']:.1f})  "
                      f"max|dlogit| {row['max_abs_logit_diff']:.2e}  mean {row['mean_abs_logit_diff']:.2e}  "
                      f"{row['file_bytes'] / 1e6:.2f} MB", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
