"""The small-budget pretraining recipe, and `scratchllm demo`: the whole pipeline in a few minutes
on a laptop CPU, with nothing to download.

A `Recipe` is everything about a run but the data and the budget: the tokenizer's size, the model's
config and the training settings. `train_recipe` runs one on text that is already split into
training and validation documents: a byte-level BPE tokenizer trained on the training text only,
the model, and the shared training loop for a wall-clock budget that covers all of it (tokenizer
and data included). `SMALL_BUDGET` is the project's recipe for a CPU and a few minutes (chosen by
`python -m benchmarks.speedrun`, which also runs `NANOGPT_BABY`, the CPU "baby GPT" of nanoGPT's
README, as the baseline). `demo` trains `SMALL_BUDGET` on Python's own sources and documentation
(or `--data FILE`) and shows samples before and after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.core.console import log
from scratchllm.core.cpu_probe import bf16_verdict, probe_cpu
from scratchllm.core.device import autocast_dtype, resolve_device
from scratchllm.core.files import read_text, write_atomic
from scratchllm.core.options import flat_routes
from scratchllm.data.loaders import RandomWindowLoader
from scratchllm.data.tokens import TokenData, corpus_from_texts
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits
from scratchllm.recipes.config import DemoConfig
from scratchllm.recipes.pretrain import PretrainTask
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import fit
from scratchllm.training.optim import make_optimizer


@dataclass(frozen=True)
class Recipe:
    """A pretraining recipe: tokenizer size, model config fields and train config fields.

    vocab_size 257 is a byte-level tokenizer (256 bytes + end-of-text, no merges). `model` holds
    GPTConfig fields (vocab_size comes from the tokenizer); `train` holds TrainConfig fields (the
    length of the run comes from the budget: a time budget uses schedule "time"). `eval_points` and
    `eval_batches` set how often and on how much validation text a timed run evaluates itself
    (evaluation is part of the budget; 0 points = only at the end). `bf16` holds the model / train
    fields that change where `dtype="auto"` trains in bf16 (a CPU whose bf16 steps are faster: wider
    matrices cost less there); fields set by `replace` win over them.
    """

    name: str
    vocab_size: int
    model: dict[str, Any]
    train: dict[str, Any]
    eval_points: int = 4
    eval_batches: int = 4
    note: str = ""
    bf16: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def replace(self, vocab_size: int | None = None, model: dict[str, Any] | None = None,
                train: dict[str, Any] | None = None, **fields: Any) -> Recipe:
        """A copy with some model / train fields (or other fields) changed; a field changed here is
        no longer changed by `bf16`."""
        model, train = model or {}, train or {}
        bf16 = {part: {k: v for k, v in changes.items() if k not in {"model": model, "train": train}[part]}
                for part, changes in self.bf16.items()}
        return dataclasses.replace(self, vocab_size=vocab_size or self.vocab_size, model={**self.model, **model},
                                   train={**self.train, **train}, **{"bf16": bf16, **fields})

    def in_bf16(self) -> Recipe:
        """The recipe as it trains in bf16 (its `bf16` changes applied)."""
        return dataclasses.replace(self, model={**self.model, **self.bf16.get("model", {})},
                                   train={**self.train, **self.bf16.get("train", {})}, bf16={})


# nanoGPT's README, "I only have a macbook": the character-level "baby GPT" on the CPU (train.py with
# config/train_shakespeare_char.py and --device=cpu --compile=False --eval_iters=20 --log_interval=1
# --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
# --lr_decay_iters=2000 --dropout=0.0; bias=False as train.py defaults). Bytes stand for characters.
# nanoGPT's model.py is spelled out (LayerNorm, learned positions, GELU MLP of 4x, tied head, GPT-2
# init), so that a changed GPTConfig default cannot change the baseline (tests/recipes/test_demo.py).
NANOGPT_BABY = Recipe(
    name="nanogpt-baby",
    vocab_size=257,
    model=dict(context_length=64, emb_dim=128, n_layers=4, n_heads=4, drop_rate=0.0, bias=False, qkv_bias=False,
               norm="layernorm", layer_norm_eps=1e-5, position="learned", mlp="gelu", mlp_ratio=4,
               tie_embeddings=True, zero_init_proj=False, qk_norm=False, logit_softcap=None),
    train=dict(batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
               beta1=0.9, beta2=0.99, grad_clip=1.0, optimizer="adamw"),
    eval_points=8,  # nanoGPT evaluates every 250 of its 2,000 iterations on 20 batches
    eval_batches=20,
    note="nanoGPT's CPU baby GPT: bytes, 4 x 128, context 64, batch 12, AdamW 1e-3 -> 1e-4 over 2,000 steps",
)

# The project's recipe for a CPU and a few minutes (benchmarks/speedrun.py measures what each part buys).
SMALL_BUDGET = Recipe(
    name="scratchllm",
    vocab_size=1024,
    model=dict(context_length=128, emb_dim=128, n_layers=4, n_heads=4, drop_rate=0.0, bias=False, qkv_bias=False,
               norm="rmsnorm", position="rope", mlp="relu2", tie_embeddings=False, zero_init_proj=True),
    train=dict(batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0, beta1=0.9, beta2=0.95,
               grad_clip=1.0, optimizer="muon", muon_lr=0.03, muon_momentum=0.95),
    note="",
)


def train_recipe(recipe: Recipe, train_docs: list[str], val_docs: list[str], out: str | os.PathLike[str],
                 minutes: float | None = None, max_steps: int | None = None, device: str = "auto",
                 dtype: str = "float32", checkpoints: int = 1, sample_prompt: str | None = None,
                 sample_tokens: int = 80, source: str = "texts", seed: int = 1337,
                 max_passes: float | None = None) -> dict[str, Any]:
    """Train `recipe` on documents already split into training and validation text; returns fit's
    summary plus "wall_s" (the whole call), "prep_s" (before the first step) and "corpus" figures.

    Length: `minutes` of wall time for everything from this call on (tokenizer, data, model,
    training with its evaluations; the learning rate follows the clock), or `max_steps`, or the
    recipe's own max_steps. `checkpoints` evenly spaced step checkpoints are kept (the benchmark
    evaluates them afterwards). A sample before and after training when `sample_prompt` is given.
    With `max_passes` and a time budget, a machine fast enough to read the training tokens more
    than max_passes times trains a larger model instead (`fit_model_to_corpus`). `dtype` "auto" on a
    CPU measures what it can do (`choose_precision`); the choice and its reason go into the run header,
    run_config.json and the summary ("dtype", "precision").
    """
    start = time.perf_counter()
    if minutes is not None and not minutes > 0:
        raise ScratchLLMError(f"minutes {minutes!r}: expected a positive number")
    if not train_docs or not "".join(train_docs).strip():
        raise ScratchLLMError(f"{source}: the training text is empty")
    if not val_docs or not "".join(val_docs).strip():
        raise ScratchLLMError(f"{source}: the validation text is empty")
    out = Path(out)
    # The tokenizer sees the training text only: validation must be text it has never compressed.
    tok = Tokenizer.train(tokenizer_sample(train_docs), recipe.vocab_size)
    corpus = corpus_from_texts(train_docs, val_docs, tok, name=source)
    dev = resolve_device(device)
    requested = dtype
    recipe, dtype, reason, step_s = choose_precision(recipe, dtype, corpus, tok.vocab_size, dev)
    model_cfg = GPTConfig(**{**recipe.model, "vocab_size": tok.vocab_size})
    context = model_cfg.context_length
    if len(corpus.val) < context + 1:
        raise ScratchLLMError(f"{source}: the validation text has {len(corpus.val)} tokens, fewer than one window "
                              f"of context_length + 1 = {context + 1}; give more text")
    check_fits(model_cfg, dev, TRAINING_BYTES_PER_PARAMETER, what="demo")
    base = TrainConfig(**{**recipe.train, "device": device, "dtype": dtype, "seed": seed, "progress": False})
    schedule, budget = "steps", None
    if max_steps is None and minutes is None:
        max_steps = base.max_steps
    expected = max_steps
    if max_steps is None:
        # A time budget: the learning-rate schedule follows the clock (schedule="time"), so it decays
        # fully whatever the machine's speed; the step estimate only spaces evaluations and
        # checkpoints, and three times it caps a machine that turns out faster.
        step_s = step_s or time_steps(GPT(model_cfg), corpus, base, dev, context)
        if max_passes is not None:
            model_cfg, step_s = fit_model_to_corpus(model_cfg, step_s, corpus, base, dev, minutes * 60, max_passes)
            check_fits(model_cfg, dev, TRAINING_BYTES_PER_PARAMETER, what="demo")
        budget = minutes * 60 - (time.perf_counter() - start)
        if budget <= 0:
            raise ScratchLLMError(f"minutes {minutes:g}: the budget is spent before training starts "
                                  f"(tokenizer and data took {time.perf_counter() - start:.1f} s)")
        expected = max(10, int(budget / step_s))
        schedule, max_steps = "time", 3 * expected
    every = lambda n: max(1, expected // n) if n else 0  # noqa: E731
    cfg = TrainConfig(**{
        **base.to_dict(), "max_steps": max_steps, "max_time": budget, "schedule": schedule,
        "warmup_steps": min(base.warmup_steps, expected // 5),
        "eval_every": every(recipe.eval_points), "eval_batches": recipe.eval_batches,
        "log_every": every(20), "save_every": every(checkpoints), "keep_last": max(1, checkpoints),
        "sample_every": max_steps if sample_prompt is not None else 0, "sample_prompt": sample_prompt or "\n",
        "sample_tokens": sample_tokens,
    })
    torch.manual_seed(cfg.seed)
    net = GPT(model_cfg)
    task = PretrainTask(corpus, cfg.batch_size, context, seed=cfg.seed, device=dev, eval_batches=cfg.eval_batches,
                        tokenizer=tok, sample_prompt=cfg.sample_prompt, sample_tokens=sample_tokens)
    figures = corpus_figures(corpus)
    precision = {"requested": requested, "dtype": dtype, "reason": reason}
    extra = {"recipe": {"name": recipe.name, "vocab_size": recipe.vocab_size, "note": recipe.note},
             "data": {"source": source, **figures}, **({"precision": precision} if reason else {})}
    prep_s = time.perf_counter() - start
    summary = fit(net, task, cfg, out, tokenizer=tok, extra_config=extra)
    return {**summary, "wall_s": time.perf_counter() - start, "prep_s": prep_s, "corpus": figures, "dtype": dtype,
            "precision": precision}


# A step must be this much faster in bf16 than in float32 for `dtype="auto"` to take bf16.
MIN_STEP_SPEEDUP = 1.1


def choose_precision(recipe: Recipe, dtype: str, corpus: TokenData, vocab_size: int,
                     device: torch.device) -> tuple[Recipe, str, str | None, float | None]:
    """(recipe, dtype, reason, seconds per step) for a run asked to train in `dtype`.

    Only "auto" on a CPU is decided here, from measurements, never from the CPU's name: the cached
    matmul probe first (core/cpu_probe.py; no native bf16, or bf16 matmuls under 1.5x float32's:
    float32 with the recipe as it is), then the step of the recipe's bf16 form (`Recipe.in_bf16`),
    timed in bf16 and in float32 in turn: bf16 and that form when its step is at least
    MIN_STEP_SPEEDUP times faster, else float32 and the recipe as it is. bf16 autocast keeps
    weights, attention (float32 on a CPU), norms and the loss in float32, and measured float32's
    bits per byte at equal steps (docs/LOG.md). Other dtypes and devices pass through unchanged
    (reason None; "auto" is then bf16 autocast on CUDA, as fit decides)."""
    if dtype != "auto" or device.type != "cpu":
        return recipe, dtype, None, None
    probe = probe_cpu()
    worth, why = bf16_verdict(probe)
    if not worth:
        return recipe, "float32", why, None
    candidate = recipe.in_bf16()
    model_cfg = GPTConfig(**{**candidate.model, "vocab_size": vocab_size})
    times = {"float32": float("inf"), "bfloat16": float("inf")}
    for _ in range(2):  # in turn: a burst of load from other processes hits both alike
        for name in times:
            cfg = TrainConfig(**{**candidate.train, "device": "cpu", "dtype": name, "progress": False})
            torch.manual_seed(0)
            times[name] = min(times[name], time_steps(GPT(model_cfg), corpus, cfg, device, model_cfg.context_length, n=1))
    shape = f"{model_cfg.n_layers} x {model_cfg.emb_dim}"
    steps = f"a step of the {shape} model {times['bfloat16'] * 1e3:.0f} ms in bf16 vs {times['float32'] * 1e3:.0f} in float32"
    if times["bfloat16"] * MIN_STEP_SPEEDUP <= times["float32"]:
        return candidate, "bfloat16", f"{why}; {steps}", times["bfloat16"]
    return recipe, "float32", f"{why}, but {steps}", times["float32"] if candidate.model == recipe.model else None


# Wider and deeper shapes for faster machines (n_layers, emb_dim; heads of 32 dimensions), in order.
MODEL_LADDER = [(4, 128), (4, 192), (6, 256), (8, 384), (12, 512), (12, 768)]


def fit_model_to_corpus(config: GPTConfig, step_s: float, corpus: TokenData, cfg: TrainConfig, device: torch.device,
                        seconds: float, max_passes: float) -> tuple[GPTConfig, float]:
    """The first shape of MODEL_LADDER, from `config`'s size up, that reads the training tokens at
    most max_passes times in `seconds` at its measured step time; else the largest. More compute
    buys a larger model rather than more passes over the same text (Hoffmann et al. 2022 scale
    parameters and tokens together). Returns (config, its seconds per step)."""
    tokens_per_step = cfg.batch_size * config.context_length
    for layers, width in MODEL_LADDER:
        if (layers, width) < (config.n_layers, config.emb_dim):
            continue
        if (layers, width) != (config.n_layers, config.emb_dim):
            config = dataclasses.replace(config, n_layers=layers, emb_dim=width, n_heads=width // 32)
            step_s = time_steps(GPT(config), corpus, cfg, device, config.context_length, n=2)
        if seconds / step_s * tokens_per_step <= max_passes * len(corpus.train):
            break
    return config, step_s


def tokenizer_sample(docs: list[str], max_bytes: int = 2_000_000) -> list[str]:
    """Evenly spaced documents adding up to about max_bytes of text (all of them when they are fewer):
    BPE merges for a small vocabulary settle within a few MB, and training on all of a large corpus
    would spend the budget on counting."""
    sizes = [len(d) for d in docs]
    if sum(sizes) <= max_bytes:
        return docs
    chosen, total = [], 0
    stride = max(1, round(sum(sizes) / max_bytes))
    for start in range(stride):  # a second sweep at an offset when the first falls short
        for d in docs[start::stride]:
            chosen.append(d)
            total += len(d)
            if total >= max_bytes:
                return chosen
    return chosen


def corpus_figures(corpus: TokenData) -> dict[str, Any]:
    """Tokens, bytes and bytes per token of each split (what the run record and the demo print)."""
    meta = corpus.meta
    return {
        "documents": meta.get("documents"),
        "train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
        "train_bytes": meta["train"]["bytes"], "val_bytes": meta["val"]["bytes"],
        "train_bytes_per_token": corpus.split_bytes_per_token("train"),
        "val_bytes_per_token": corpus.split_bytes_per_token("val"),
    }


def time_steps(model: nn.Module, corpus, cfg: TrainConfig, device: torch.device, context_length: int, n: int = 4) -> float:
    """Seconds per training step of `model` here: the fastest of n after one warm-up step (a busy
    machine slows some steps down; the fastest is the least disturbed)."""
    model.to(device).train()
    loader = RandomWindowLoader(corpus.train, cfg.batch_size, context_length, 0, device=device)
    amp = autocast_dtype(cfg.dtype, device)
    optimizer = make_optimizer(model, cfg, device, amp_dtype=amp)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        x, y = loader.next_batch()
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            loss = model.loss(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return min(times)


# ------------------------------------------------------------------------------------------------
# Text: the embedded corpus, and splits that keep validation text unseen


# Python's own library is the embedded corpus: PSF-licensed source and documentation that every
# CPython installation carries. Test suites (not always installed), generated codec tables and
# installed third-party packages are left out.
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"})


def python_corpus() -> list[tuple[str, str]]:
    """(path relative to the standard library, text) of every .py file of this Python's standard
    library, sorted by path; pydoc_data/topics.py holds the documentation that `help()` shows."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if set(relative.parts[:-1]) & SKIPPED_DIRS or relative.name.startswith("_sysconfigdata"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            docs.append((relative.as_posix(), text))
    if not docs:
        raise ScratchLLMError(f"{root}: no Python sources found for the demo corpus; pass --data FILE")
    return docs


def split_documents(docs: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Whole documents to validation with probability val_fraction (seeded; at least one), the rest
    to training: validation text is text the model and its tokenizer never saw."""
    if len(docs) < 2:
        raise ScratchLLMError(f"split_documents: need at least 2 documents, got {len(docs)}")
    rng = random.Random(seed)
    to_val = [rng.random() < val_fraction for _ in docs]
    if not any(to_val):
        to_val[rng.randrange(len(docs))] = True
    if all(to_val):
        to_val[rng.randrange(len(docs))] = False
    return [d for d, v in zip(docs, to_val) if not v], [d for d, v in zip(docs, to_val) if v]


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """The first (1 - val_fraction) of the characters for training, the rest for validation (the
    split nanoGPT's character-level Shakespeare uses, so byte and BPE models see the same text)."""
    if not 0 < val_fraction < 1:
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in (0, 1)")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def split_stretches(text: str, val_fraction: float = 0.1, pieces: int = 20) -> tuple[list[str], list[str]]:
    """(training parts, validation stretches) of one text: `pieces` stretches adding up to about
    val_fraction of its characters, one in the middle of each 1/pieces of the text, each cut at line
    breaks where the text has them; the rest, in order, for training (empty parts dropped).

    Held out from across the text rather than from its end, validation takes no part of the text away
    whole: tinyshakespeare's last 10% begins mid-play, and a model trained on the first 90% of a file
    that ends 10% before it never read the first acts or its speakers' names (measured: +0.28 bits per
    byte on the text that follows, at equal steps; docs/LOG.md 2026-12-08)."""
    if not 0 < val_fraction < 1:
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in (0, 1)")
    n = len(text)
    length = int(n * val_fraction / pieces)
    if length < 1:  # too short to spread: its end, as split_text
        train, val = split_text(text, val_fraction)
        return [train], [val]
    train, val, done = [], [], 0
    for i in range(pieces):
        lo, hi = n * i // pieces, n * (i + 1) // pieces
        start = lo + (hi - lo - length) // 2
        start = next_line(text, start, hi)
        end = next_line(text, start + length, hi)
        if end <= start:
            continue
        train.append(text[done:start])
        val.append(text[start:end])
        done = end
    train.append(text[done:])
    return [t for t in train if t], val


def next_line(text: str, position: int, limit: int) -> int:
    """The start of the first line at or after `position` (before `limit`), else `position`."""
    if position <= 0 or text[position - 1] == "\n":
        return position
    found = text.find("\n", position, limit)
    return position if found < 0 else found + 1


# ------------------------------------------------------------------------------------------------
# The demo


def demo(cfg: DemoConfig | str | os.PathLike[str] = "runs/demo", recipe: Recipe = SMALL_BUDGET,
         **model: Any) -> dict[str, Any]:
    """The whole pipeline in a few minutes on a CPU, as the DemoConfig `cfg` says: `recipe` trained
    for cfg.minutes of wall time (or cfg.max_steps) on Python's standard library (or the UTF-8 text
    file cfg.data, 10% of whose characters are held out in 20 stretches: `split_stretches`), samples
    before and after, and a run directory that `scratchllm generate --model OUT` loads. cfg.shape, cfg.batch_size and cfg.lr
    (AdamW's peak) override the recipe's; None keeps it; keyword arguments that are other GPTConfig
    fields (n_kv_heads=2, ...) change the recipe's model too. On the built-in corpus, with the
    recipe's model, a machine fast enough to read the training text more than once in the budget
    trains a larger model instead.

    The earlier form still works: `demo(out, data=..., max_steps=6, n_layers=2, ...)`, DemoConfig
    fields (its shape's too) by name beside the model's."""
    if not isinstance(cfg, DemoConfig):
        fields = {k: model.pop(k) for k in list(model) if k in flat_routes(DemoConfig)}
        fields = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in fields.items()}
        cfg = DemoConfig(out=os.fspath(cfg), **fields)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ScratchLLMError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
        if not (out / "run_config.json").is_file():
            raise ScratchLLMError(f"{out}: not a scratchllm run directory (no run_config.json); refusing to delete it")
        shutil.rmtree(out)
    start = time.perf_counter()
    prompt = cfg.prompt
    if cfg.data is None:
        files = python_corpus()
        train_docs, val_docs = split_documents([text for _, text in files], 0.1, seed=0)
        source = f"Python {sysconfig.get_python_version()}'s standard library ({len(files)} files)"
        prompt = "def " if prompt is None else prompt
    else:
        train_docs, val_docs = split_stretches(read_text(cfg.data, "demo data"), 0.1)
        source = cfg.data
        prompt = "The" if prompt is None else prompt
    n_bytes = sum(len(d.encode("utf-8")) for d in train_docs), sum(len(d.encode("utf-8")) for d in val_docs)
    log(f"demo: {source}: {n_bytes[0]:,} bytes of training and {n_bytes[1]:,} of validation text")
    model = {**{k: v for k, v in model.items() if v is not None}, **cfg.shape.changes()}
    vocab_size = model.pop("vocab_size", None)  # the tokenizer's size, which the model's follows
    train = {k: v for k, v in (("batch_size", cfg.batch_size), ("lr", cfg.lr)) if v is not None}
    if "lr" in train:
        train["min_lr"] = train["lr"] / 10
    recipe = recipe.replace(vocab_size=vocab_size, model=model, train=train)
    remaining = cfg.minutes - (time.perf_counter() - start) / 60
    summary = train_recipe(recipe, train_docs, val_docs, out, minutes=None if cfg.max_steps else remaining,
                           max_steps=cfg.max_steps, device=cfg.device, dtype=cfg.dtype, checkpoints=1,
                           sample_prompt=prompt, source=source, max_passes=1.0 if cfg.data is None and not model else None)
    write_atomic(out / "corpus_source.txt", source + "\n")
    c = summary["corpus"]
    log(f"demo: {c['train_tokens']:,} training tokens ({c['train_bytes_per_token']:.2f} bytes each), "
        f"{c['val_tokens']:,} validation tokens ({c['val_bytes_per_token']:.2f}); trained on "
        f"{summary['tokens']:,} tokens = {summary['tokens'] / c['train_tokens']:.2f} passes")
    samples = (out / "samples.txt").read_text(encoding="utf-8") if (out / "samples.txt").is_file() else ""
    log(f"\ndemo: samples before and after training (prompt {prompt!r}):\n{samples}")
    if summary["eval"]:
        e = summary["eval"]
        log(f"demo: validation loss {e['val_loss']:.3f} nats/token, {e.get('val_bpb', float('nan')):.3f} bits/byte")
    if (out / "loss.png").is_file():
        log(f"demo: loss curve {out / 'loss.png'}")
    log(f"demo: try  scratchllm generate --model {out} --prompt {prompt!r}")
    return summary

