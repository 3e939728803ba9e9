"""`scratchllm demo`: the whole pipeline in a few minutes on a laptop CPU, with nothing to download.

A byte-level BPE tokenizer trained on an embedded corpus (or `--data`), a small GPT pretrained for a
wall-clock budget on the shared loop, samples before and after, and a run directory that
`scratchllm generate --model runs/demo` loads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from pydoc_data.topics import topics

from scratchllm.core.console import log
from scratchllm.core.device import autocast_dtype, resolve_device
from scratchllm.data.loaders import RandomWindowLoader
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits
from scratchllm.recipes.pretrain import PretrainTask
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import fit
from scratchllm.training.optim import make_optimizer

def demo_text() -> str:
    """The embedded demo corpus: the documentation topics that ship with Python (~465 kB)."""
    return "\n\n".join(topics[k] for k in sorted(topics))


def demo(out: str | os.PathLike[str] = "runs/demo", data: str | os.PathLike[str] | None = None, minutes: float = 3.0,
         device: str = "auto", vocab_size: int = 4096, n_layers: int = 4, emb_dim: int = 256, n_heads: int = 4,
         context_length: int = 128, batch_size: int = 16, lr: float = 2e-3, dtype: str = "auto",
         overwrite: bool = False, max_steps: int | None = None, prompt: str = "The") -> dict[str, Any]:
    """The whole pipeline on a built-in corpus, in a few minutes on a laptop CPU.

    Trains a byte-level BPE tokenizer on Python's own documentation (or `data`), keeps 90/10 for
    training/validation, pretrains a small GPT for `minutes` (or max_steps), prints the loss falling,
    samples before and after, and leaves a run directory that `scratchllm generate --model OUT` loads.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ScratchLLMError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
        if not (out / "run_config.json").is_file():
            raise ScratchLLMError(f"{out}: not a scratchllm run directory (no run_config.json); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        text, source = demo_text(), "pydoc_data.topics (Python's documentation)"
    else:
        try:
            text, source = Path(data).read_text(encoding="utf-8"), str(data)
        except (OSError, UnicodeDecodeError) as exc:
            raise ScratchLLMError(f"{data}: cannot read as UTF-8 text ({exc})") from None
    corpus_path = out / "corpus.txt"  # kept so that --resume and the run record name the exact text
    corpus_path.write_text(text, encoding="utf-8")
    t = time.perf_counter()
    tok = Tokenizer.train([text], vocab_size)
    tok.save(out / "tokenizer.json")
    log(f"demo: trained a {tok.vocab_size:,}-token byte-level BPE tokenizer on {len(text.encode()):,} bytes of "
          f"{source} in {time.perf_counter() - t:.1f} s")
    corpus = load_corpus(corpus_path, tok, val_fraction=0.1)
    log(f"demo: {len(corpus.train):,} training and {len(corpus.val):,} validation tokens "
          f"({corpus.bytes_per_token:.2f} bytes/token)")
    dev = resolve_device(device)
    model_cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=context_length, emb_dim=emb_dim,
                          n_layers=n_layers, n_heads=n_heads, drop_rate=0.1)
    check_fits(model_cfg, dev, TRAINING_BYTES_PER_PARAMETER, what="demo")
    probe = TrainConfig(batch_size=batch_size, device=device, dtype=dtype)
    schedule, expected = "steps", max_steps
    if max_steps is None:
        # A time budget: the learning-rate schedule follows the clock (schedule="time"), so it decays
        # fully even when the machine is busier than when we measured; the step estimate only spaces
        # the evaluations, and three times it caps a machine that turns out faster.
        step_s = time_steps(GPT(model_cfg), corpus, probe, dev, context_length)
        expected = max(20, int(minutes * 60 * 0.85 / step_s))  # ~15% goes to evaluation and samples
        schedule, max_steps = "time", 3 * expected
        log(f"demo: {step_s * 1000:.0f} ms per step here -> about {expected} steps in {minutes:g} minute(s)")
    cfg = TrainConfig(
        max_steps=max_steps, max_time=minutes * 60, schedule=schedule, batch_size=batch_size, lr=lr, min_lr=lr / 10,
        warmup_steps=min(100, max_steps // 10), eval_every=max(1, expected // 8), eval_batches=8,
        log_every=max(1, expected // 40), save_every=max(1, expected // 2), keep_last=1,
        sample_every=max_steps, sample_prompt=prompt, sample_tokens=80, device=device, dtype=dtype,
    )
    torch.manual_seed(cfg.seed)
    net = GPT(model_cfg)
    task = PretrainTask(corpus, cfg.batch_size, context_length, seed=cfg.seed, device=dev,
                        eval_batches=cfg.eval_batches, tokenizer=tok, sample_prompt=prompt, sample_tokens=80)
    extra = {"data": {"path": str(corpus_path.resolve()), "source": source, "val_fraction": 0.1,
                      **dict(getattr(corpus, "meta", {}) or {}), "bytes_per_token": corpus.bytes_per_token},
             "tokenizer": {"vocab_size": tok.vocab_size, "file": str((out / "tokenizer.json").resolve())}}
    summary = fit(net, task, cfg, out, tokenizer=tok, extra_config=extra)
    samples = (out / "samples.txt").read_text(encoding="utf-8") if (out / "samples.txt").is_file() else ""
    log(f"\ndemo: samples before and after training (prompt {prompt!r}):\n{samples}")
    if (out / "loss.png").is_file():
        log(f"demo: loss curve {out / 'loss.png'}")
    log(f"demo: try  scratchllm generate --model {out} --prompt {prompt!r}")
    return summary


def time_steps(model: nn.Module, corpus, cfg: TrainConfig, device: torch.device, context_length: int, n: int = 4) -> float:
    """Seconds per training step of `model` here: the fastest of n after one warm-up step (a busy
    machine slows some steps down; the fastest is the least disturbed)."""
    model.to(device).train()
    loader = RandomWindowLoader(corpus.train, cfg.batch_size, context_length, 0, device=device)
    optimizer = make_optimizer(model, cfg, device)
    amp = autocast_dtype(cfg.dtype, device)
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

