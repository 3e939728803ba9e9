"""Hostile versions of a model directory's JSON files, for tests and `benchmarks/bad_inputs.py`: every
value of a file (the first few of long lists and objects, such as a vocabulary) replaced in turn by
values of the wrong JSON type, and the file nested deeper than any real one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What a hand-edited or hostile file puts where something else belongs: each JSON type, values at the
# edges, and containers of the wrong content.
HOSTILE_VALUES: list[Any] = [5, -1, 2**70, 1.5, "x", "", True, None, [], {}, [5], ["x"], [{"a": 1}], {"a": [1]}]
# The few that find most type confusions (for a quick test; the benchmark tries them all).
QUICK_VALUES: list[Any] = [5, "x", None, [{"a": 1}], {"a": [1]}]
DELETE = object()  # stands for "the key removed"


def json_paths(value: Any, path: tuple = (), first: int = 3) -> Iterator[tuple]:
    """Paths (keys and indexes) to every value inside `value`; of a list, or of an object of more than
    100 keys, the first `first` children only (a vocabulary of 100,000 entries is tried through three)."""
    children = list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    if isinstance(value, list) or len(children) > 100:
        children = children[:first]
    for key, child in children:
        yield (*path, key)
        yield from json_paths(child, (*path, key), first)


def replaced(data: Any, path: tuple, new: Any) -> Any:
    """A deep copy of `data` with the value at `path` replaced by `new` (DELETE removes an object's key)."""
    out = copy.deepcopy(data)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if new is DELETE and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = None if new is DELETE else copy.deepcopy(new)
    return out


def nested(depth: int = 100_000) -> str:
    """JSON text of a list nested `depth` deep (Python's own json gives up near 1,000)."""
    return "[" * depth + "]" * depth


def mutations(directory: Path, files: tuple[str, ...], values: list[Any]) -> Iterator[tuple[str, str, bytes]]:
    """(file, description, new bytes) for every value of each JSON file in `directory` replaced by each
    of `values` or removed, then each file as deep nesting."""
    for name in files:
        if not (directory / name).is_file():
            continue
        data = json.loads((directory / name).read_text(encoding="utf-8"))
        for path in json_paths(data):
            for value in [*values, DELETE]:
                shown = "removed" if value is DELETE else json.dumps(value)
                yield name, f"{name} {'.'.join(map(str, path))} = {shown}", \
                    json.dumps(replaced(data, path, value)).encode()
        yield name, f"{name} nested 100,000 deep", nested().encode()


# --------------------------------------------------------------------------------------------------
# Hugging Face model directories of each family, with a vocabulary padded past the tokenizer's

# family -> (our GPTConfig switches, the test tokenizer of tests/hf_tokenizers.py it pairs with)
FAMILIES = {
    "gpt2": ({}, "gpt2"),
    "llama": (dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qkv_bias=False), "llama3"),
    "qwen2": (dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qkv_bias=True), "qwen2"),
    "qwen3": (dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qkv_bias=False, qk_norm=True), "qwen2"),
}


def padded_hf_dir(tokenizer_dir: Path, out: Path, family: str, pad_to: int = 128) -> Path:
    """A Hugging Face directory of `family` whose config.json vocab_size is the tokenizer's rounded up
    to a multiple of `pad_to` (at least two rows more), as Qwen2.5 pads 151,665 tokens to 151,936
    rows, and whose head prefers the padding: the final norm keeps one channel and two padded rows
    of the (tied) head are +-100 along it, so one of them has the largest logit after any prompt, by far.
    A decoder that lets padded rows be sampled picks them; a correct one picks among the real tokens."""
    import torch

    from scratchllm.checkpoint.convert import export_hf
    from scratchllm.checkpoint.model_dir import save_model
    from scratchllm.models.config import GPTConfig
    from scratchllm.models.gpt import GPT
    from scratchllm.tokenizer import Tokenizer

    tok = Tokenizer.from_hf(tokenizer_dir)
    vocab = -(-(tok.vocab_size + 2) // pad_to) * pad_to
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, context_length=64, emb_dim=32, n_layers=1, n_heads=2, **FAMILIES[family][0])
    model = GPT(config).eval()
    with torch.no_grad():
        model.final_norm.weight.zero_()[0] = 1.0
        if getattr(model.final_norm, "bias", None) is not None:
            model.final_norm.bias.zero_()
        model.tok_emb.weight[tok.vocab_size:] = 0.0
        model.tok_emb.weight[tok.vocab_size, 0], model.tok_emb.weight[tok.vocab_size + 1, 0] = 100.0, -100.0
    export_hf(save_model(model, out / "ours", tok), out / family)
    return out / family
