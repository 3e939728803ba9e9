"""Pretraining: next-token prediction on a text file or prepared DATADIR (`scratchllm pretrain`).

`PretrainTask` is the objective as a task of the shared loop (training/loop.py): random windows of
the token stream, the chunked next-token loss, validation loss, perplexity and bits per byte.
`pretrain` resolves a run's settings (flags, a run file, or the run directory being resumed), builds
the model and hands it to `fit`; the other objectives, a BERT-style encoder (`mlm`) and an
encoder-decoder (`seq2seq`), are looked up in `OBJECTIVES` and run on the same settings.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.loader import load_tokenizer, read_config, resolve_tokenizer
from scratchllm.core.device import init_distributed
from scratchllm.data.loaders import RandomWindowLoader, eval_batches
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate
from scratchllm.models.gpt import GPT
from scratchllm.recipes.config import PretrainConfig
from scratchllm.recipes.mlm import pretrain_mlm
from scratchllm.recipes.seq2seq import pretrain_seq2seq
from scratchllm.training.config import TrainConfig, read_run_file
from scratchllm.training.loop import Task, fit
from scratchllm.training.run_dir import checkpoint_dirs

class PretrainTask(Task):
    """Next-token prediction on random windows of a token stream (the pretraining objective).

    Each process draws its own share of every global batch (rank / world_size); validation loss is
    averaged over up to `eval_batches` fixed batches, also split across processes. Reported too:
    perplexity exp(loss) and bits per byte, which compares models with different tokenizers: the
    summed loss in bits over the UTF-8 bytes of the evaluated target tokens (when the tokenizer is
    known; else over validation's own bytes per token times the tokens).
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, data, batch_size: int, context_length: int, seed: int = 1337, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", eval_batches: int = 20,
                 tokenizer=None, sample_prompt: str = "\n", sample_tokens: int = 64):
        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.eval_batches, self.tokenizer = eval_batches, tokenizer
        self.sample_prompt, self.sample_tokens, self.seed = sample_prompt, sample_tokens, seed
        if len(data.train) < context_length + 1:
            raise ScratchLLMError(
                f"training split has {len(data.train)} tokens, fewer than context_length + 1 = {context_length + 1}"
            )
        self.loader = RandomWindowLoader(data.train, batch_size, context_length, seed, rank=rank,
                                         world_size=world_size, device=self.device)
        self.token_bytes = None  # id -> UTF-8 bytes of its text, for exact bits per byte
        if tokenizer is not None and getattr(tokenizer, "vocab_size", None) == getattr(data, "vocab_size", None):
            self.token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), dtype=torch.float64, device=self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loader.next_batch()  # x, y: (B, T) on device

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model.loss(x, y)  # chunked linear + cross-entropy: no (B, T, V) logits

    def batch_tokens(self, batch) -> int:
        return batch[1].numel()

    def evaluate(self, model) -> dict[str, float]:
        total = torch.zeros(3, dtype=torch.float64, device=self.device)  # summed loss, tokens, their bytes
        max_batches = self.eval_batches or None
        for i, (x, y) in enumerate(eval_batches(self.data.val, self.batch_size, self.context_length, max_batches)):
            if i % self.world_size != self.rank:
                continue
            x, y = x.to(self.device), y.to(self.device)
            total[0] += model.loss(x, y).double() * y.numel()
            total[1] += y.numel()
            if self.token_bytes is not None:
                total[2] += self.token_bytes[y].sum()
        if self.world_size > 1:
            torch.distributed.all_reduce(total)
        if total[1] == 0:
            return {}  # validation split shorter than one window
        loss = (total[0] / total[1]).item()
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        n_bytes = total[2].item()
        if not n_bytes and hasattr(self.data, "split_bytes_per_token"):
            n_bytes = (self.data.split_bytes_per_token("val") or 0.0) * total[1].item()
        if n_bytes:
            metrics["val_bpb"] = total[0].item() / math.log(2) / n_bytes
        return metrics

    def sample(self, model) -> str:
        if self.tokenizer is None:
            return ""
        return self.sample_prompt + generate(model, self.tokenizer, self.sample_prompt, max_new_tokens=self.sample_tokens,
                                             temperature=0.8, top_k=50, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])



def pretrain(data: str | os.PathLike[str] | None = None, model: Any = None, out: str | os.PathLike[str] | None = None,
             **options: Any) -> dict[str, Any]:
    """Pretrain a GPT on a text file or prepared data directory; returns fit's summary.

    model: a preset name, a config.json path, a GPTConfig or a dict (vocab_size always comes from the
    tokenizer; train context_length, if set, replaces the model's). `options` are PretrainConfig
    fields (tokenizer, config, val_fraction, resume, objective) and TrainConfig fields (max_steps,
    lr, ...). config: a run file (run.toml / .yaml / .json) holding train config fields and
    optionally data, model, tokenizer, out; keyword arguments win over the file. resume=True (or a
    run directory) continues the newest checkpoint of `out`; settings not given again are taken
    from that run's run_config.json, the tokenizer from its checkpoint. objective: "lm" (next token,
    the default), "mlm" (a BERT-style encoder, recipes/mlm.py) or "seq2seq" (an encoder-decoder on
    source<TAB>target pairs, recipes/seq2seq.py); a resumed run keeps its own.
    """
    run_fields = {f.name for f in dataclasses.fields(PretrainConfig)} - {"data", "model", "out"}
    run = PretrainConfig(**{k: (os.fspath(v) if isinstance(v, os.PathLike) else v)
                            for k, v in options.items() if k in run_fields})
    train_flags = {k: v for k, v in options.items() if k not in run_fields}
    tokenizer, resume, config_file, val_fraction, objective = run.tokenizer, run.resume, run.config, run.val_fraction, run.objective
    if isinstance(resume, (str, os.PathLike)):
        out = out or resume
        resume = True
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings = read_run_file(config_file)
    data = data if data is not None else settings.pop("data", None)
    model = model if model is not None else settings.pop("model", None)
    out = out if out is not None else settings.pop("out", None)
    file_tokenizer = settings.pop("tokenizer", None)
    val_fraction = settings.pop("val_fraction", val_fraction)
    file_objective = settings.pop("objective", None)
    if out is None:
        raise ScratchLLMError("pretrain: an output run directory is required (--out RUNDIR)")
    out = Path(out)
    previous: dict[str, Any] = {}
    latest = checkpoint_dirs(out)[-1][1] if resume and checkpoint_dirs(out) else None
    if resume and (out / "run_config.json").is_file():
        previous = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    train_settings = {**previous.get("train", {}), **settings,
                      **{k: v for k, v in train_flags.items() if v is not None}}
    cfg = TrainConfig.from_dict(train_settings, source=str(config_file) if config_file else "pretrain")
    if latest is not None:
        tok = load_tokenizer(latest)  # ids must mean what they meant when the run started
    else:
        tok = resolve_tokenizer(file_tokenizer if tokenizer == "gpt2" and file_tokenizer else tokenizer)
    if data is None:
        data = previous.get("data", {}).get("path")
    if model is None:
        model = previous.get("model")
    if data is None:
        raise ScratchLLMError("pretrain: training data is required (--data FILE.txt or DATADIR)")
    if model is None:
        raise ScratchLLMError("pretrain: a model is required (--model PRESET or config.json)")
    objective = objective or file_objective or previous.get("objective") or "lm"
    if objective not in OBJECTIVES:
        raise ScratchLLMError(f"pretrain: objective {objective!r}: expected {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective](data, model, out, tok, cfg, resume=resume, val_fraction=val_fraction)


def pretrain_lm(data, model, out, tok, cfg: TrainConfig, resume: bool = False, val_fraction: float = 0.1) -> dict[str, Any]:
    """Next-token pretraining of a GPT once `pretrain` has resolved the run's settings."""
    model_cfg = read_config(model, vocab_size=tok.vocab_size, context_length=cfg.context_length)
    env, device = init_distributed(cfg.device)
    corpus = load_corpus(data, tok, val_fraction=val_fraction)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts them)
    net = GPT(model_cfg)
    task = PretrainTask(corpus, cfg.batch_size, model_cfg.context_length, seed=cfg.seed, rank=env.rank,
                        world_size=env.world_size, device=device, eval_batches=cfg.eval_batches, tokenizer=tok,
                        sample_prompt=cfg.sample_prompt, sample_tokens=cfg.sample_tokens)
    meta = dict(getattr(corpus, "meta", {}) or {})
    extra = {
        "data": {"path": str(Path(data).resolve()), "val_fraction": val_fraction, **meta,
                 "bytes_per_token": getattr(corpus, "bytes_per_token", None),
                 "val_bytes_per_token": corpus.split_bytes_per_token("val")},
        "tokenizer": {"vocab_size": tok.vocab_size, **{k: v for k, v in tok.spec.items() if k != "merges"}},
    }
    finished = False
    try:
        summary = fit(net, task, cfg, out, resume=resume, tokenizer=tok, extra_config=extra)
        finished = True
        return summary
    finally:
        if env.world_size > 1:
            dist = torch.distributed
            if dist.is_initialized():
                # Free the DDP/FSDP wrappers (their communication hooks hold the process group) before
                # destroying it: a group left to interpreter shutdown can abort the process there.
                del net, task
                gc.collect()
                if finished:
                    dist.barrier()  # only on success: after a failure the other ranks may be gone
                dist.destroy_process_group()



# What `pretrain --objective NAME` runs, each with the same settings.
OBJECTIVES = {"lm": pretrain_lm, "mlm": pretrain_mlm, "seq2seq": pretrain_seq2seq}
