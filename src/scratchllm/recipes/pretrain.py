"""Pretraining: next-token prediction on a text file or prepared DATADIR (`scratchllm pretrain`).

`PretrainTask` is the objective as a task of the shared loop (training/loop.py): random windows of
the token stream, the chunked next-token loss, validation loss, perplexity and bits per byte.
`pretrain` takes a recipes/config.py `PretrainConfig` (or the earlier data, model, out and keywords),
resolves it against a run file and the run directory being resumed (`resolve_pretrain`, on
core/options.py's one order of precedence), builds the model and hands it to `fit` with its
TrainConfig; the other objectives, a BERT-style encoder (`mlm`) and an encoder-decoder (`seq2seq`),
are looked up in `OBJECTIVES` and run on the same settings.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.loader import load_tokenizer, read_config, resolve_tokenizer
from scratchllm.core.console import log, warn
from scratchllm.core.device import init_distributed
from scratchllm.core.options import changed_values, flat_values, resolve
from scratchllm.data.loaders import RandomWindowLoader, eval_batches
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate
from scratchllm.models.gpt import GPT
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits
from scratchllm.recipes.config import PretrainConfig
from scratchllm.recipes.mlm import pretrain_mlm
from scratchllm.recipes.seq2seq import pretrain_seq2seq
from scratchllm.training.config import read_run_file
from scratchllm.training.loop import Task, fit
from scratchllm.training.run_dir import RUN_CONFIG_FILE, checkpoint_dirs, read_run_config, run_tokenizer

class PretrainTask(Task):
    """Next-token prediction on random windows of a token stream (the pretraining objective).

    Each process draws its own share of every global batch (rank / world_size); validation loss is
    averaged over up to `eval_batches` fixed batches, also split across processes. Reported too:
    perplexity exp(loss) and bits per byte, which compares models with different tokenizers: the
    summed loss in bits over the UTF-8 bytes of the evaluated target tokens, `val_bpb`. Without the
    data's tokenizer those bytes are unknown, and the figure over the validation split's average
    bytes per token times the tokens is an estimate, reported as `val_bpb_est` (never as val_bpb:
    a run's figures stay comparable with other runs' exact ones only under the same name).
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
        elif tokenizer is not None:
            warn(f"the tokenizer has {tokenizer.vocab_size} ids but the data {getattr(data, 'vocab_size', None)}: "
                 "bits per byte are estimated from the average bytes per token (val_bpb_est), not val_bpb")

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
        bits = total[0].item() / math.log(2)
        if self.token_bytes is not None:
            if total[2].item():
                metrics["val_bpb"] = bits / total[2].item()
        elif hasattr(self.data, "split_bytes_per_token") and self.data.split_bytes_per_token("val"):
            metrics["val_bpb_est"] = bits / (self.data.split_bytes_per_token("val") * total[1].item())
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



def pretrain(cfg: PretrainConfig | str | os.PathLike[str] | None = None, model: Any = None,
             out: str | os.PathLike[str] | None = None, **options: Any) -> dict[str, Any]:
    """Pretrain a GPT (or, by cfg.objective, an encoder or encoder-decoder) on a text file or prepared
    data directory as the PretrainConfig `cfg` says; returns fit's summary.

    The earlier form still works: `pretrain(data, model, out, **options)` with PretrainConfig fields
    and its TrainConfig's by name (`pretrain("the-verdict.txt", "gpt-tiny", "runs/v", max_steps=200)`).
    model: a preset name, a config.json path, a GPTConfig or a dict (vocab_size always comes from the
    tokenizer; train context_length, if set, replaces the model's).

    What is given (keywords, or the fields of `cfg` that differ from the defaults) wins over the run
    being resumed, which wins over the run file cfg.config, which wins over the defaults
    (`resolve_pretrain`). resume=True (or a run directory) continues the newest checkpoint of `out`:
    the run keeps what it started with, its tokenizer (from the checkpoint, or before the first
    checkpoint from RUNDIR/tokenizer.json / run_config.json), model, objective, validation split and
    data; a model, tokenizer or objective given again must be the same. A run killed before its first
    checkpoint starts again from step 0 (it says so).
    """
    if isinstance(cfg, PretrainConfig):
        if model is not None or out is not None or options:
            raise ScratchLLMError("pretrain: give a PretrainConfig alone, or data, model, out and keywords")
        given = changed_values(cfg)
    else:
        given = {k: v for k, v in {"data": cfg, "model": model, "out": out, **options}.items() if v is not None}
    cfg, tok, resume = resolve_pretrain(given)
    return OBJECTIVES[cfg.objective](cfg, tok, resume=resume)


def resolve_pretrain(given: Mapping[str, Any]) -> tuple[PretrainConfig, Any, bool]:
    """(config, tokenizer, whether a checkpoint is resumed) of a pretraining run from what was given
    (flags or keywords, by flat name: "max_steps", "data"), the run being resumed (its run_config.json)
    and the run file, in that order of precedence, over the defaults (core/options.py `resolve`)."""
    given = dict(given)
    resume = given.pop("resume", False)
    if isinstance(resume, (str, os.PathLike)):
        given.setdefault("out", resume)
        resume = True
    config_file = given.pop("config", None)
    settings = read_run_file(config_file) if config_file is not None else {}
    out = given.get("out", settings.get("out"))
    if out is None:
        raise ScratchLLMError("pretrain: an output run directory is required (--out RUNDIR)")
    out = Path(out)
    layers = [(str(config_file), settings)] if config_file is not None else []
    previous: dict[str, Any] = {}
    if resume:
        found = read_run_config(out)
        stated = {**settings, **given}
        if found is None and (stated.get("data") is None or stated.get("model") is None):
            raise ScratchLLMError(f"pretrain --resume {out}: no run to resume there (no run_config.json, no "
                                  "checkpoints); start one with --data and --model")
        if found is None:
            log(f"{out}: no run to resume yet; starting a new one")
            resume = False
        previous = found or {}
        layers.append((str(out / RUN_CONFIG_FILE), previous_settings(previous)))
    layers.append(("pretrain", given))
    cfg, sources = resolve(PretrainConfig, layers, what="train config", where=str(config_file) if config_file else None,
                           exclude=("config", "resume"))
    cfg = replace(cfg, config=None if config_file is None else str(config_file), resume=resume)
    if resume:
        stated = {k: v for k, v in {**settings, **given}.items() if k in ("tokenizer", "model", "data", "val_fraction",
                                                                           "objective")}
        tok = check_resumed_run(out, previous, stated, cfg)
        for key, value in settings.items():
            if sources.get(key) == str(out / RUN_CONFIG_FILE) and value != flat_values(cfg).get(key) and key not in stated:
                warn(f"{config_file}: {key} = {value!r} is not the resumed run's {flat_values(cfg)[key]!r}; the run keeps "
                     "its own (a flag changes it)")
    else:
        tok = resolve_tokenizer(cfg.tokenizer)
    if cfg.data is None:
        raise ScratchLLMError("pretrain: training data is required (--data FILE.txt or DATADIR)")
    if cfg.model is None:
        raise ScratchLLMError("pretrain: a model is required (--model PRESET or config.json)")
    return cfg, tok, resume


def previous_settings(previous: Mapping[str, Any]) -> dict[str, Any]:
    """A resumed run's run_config.json as flat PretrainConfig settings: its train config, model,
    data, validation share and objective."""
    run_data = previous.get("data") if isinstance(previous.get("data"), dict) else {}
    out = dict(previous.get("train", {}))
    found = {"model": previous.get("model"), "data": run_data.get("path"), "val_fraction": run_data.get("val_fraction"),
             "objective": previous.get("objective", "lm" if previous else None)}
    out.update({k: v for k, v in found.items() if v is not None})
    return out


def check_resumed_run(out: Path, previous: Mapping[str, Any], stated: Mapping[str, Any], cfg: PretrainConfig):
    """The tokenizer of the run being resumed, after checking that what is given again agrees with the
    run (a resume never trains a different model); a different --data is a warning, not an error."""
    where = f"pretrain --resume {out}"
    checkpoints = checkpoint_dirs(out)
    if checkpoints:
        tok = load_tokenizer(checkpoints[-1][1])  # ids must mean what they meant when the run started
    else:
        tok = run_tokenizer(out, previous)
        log(f"{out}: no checkpoint yet (the run stopped before its first save); starting again from step 0 "
            "with the settings in its run_config.json")
    tokenizer = stated.get("tokenizer")
    if tokenizer is not None:
        given = resolve_tokenizer(tokenizer)
        same = given.merges == tok.merges and given.pattern == tok.pattern and all(
            tok.special_tokens.get(k) == v for k, v in given.special_tokens.items())  # mlm adds <|mask|>
        if not same:
            raise ScratchLLMError(f"{where}: --tokenizer {tokenizer} is not the run's tokenizer ({tok.vocab_size} ids); "
                                  "a resumed run keeps its own (leave --tokenizer out)")
    model, run_model = stated.get("model"), previous.get("model")
    if model is not None and run_model is not None:
        overrides = {"vocab_size": tok.vocab_size, "context_length": cfg.train.context_length}
        mine = read_config(run_model, **overrides).to_dict()
        theirs = read_config(model, **overrides).to_dict()
        differ = [k for k in mine if k != "causal" and mine[k] != theirs.get(k)]  # mlm sets causal itself
        if differ:
            k = differ[0]
            raise ScratchLLMError(f"{where}: --model {model} has {k}={theirs.get(k)!r}, the run has {mine[k]!r}; "
                                  "a resumed run keeps its model (leave --model out)")
    run_data = previous.get("data") if isinstance(previous.get("data"), dict) else {}
    data = stated.get("data")
    if data is not None and run_data.get("path") and Path(data).resolve() != Path(run_data["path"]):
        warn(f"{where}: --data {data} is not the run's {run_data['path']}; continuing on {data}")
    val_fraction, run_fraction = stated.get("val_fraction"), run_data.get("val_fraction")
    if val_fraction is not None and run_fraction is not None and val_fraction != run_fraction:
        raise ScratchLLMError(f"{where}: --val-fraction {val_fraction} is not the run's {run_fraction}; "
                              "a resumed run keeps its validation split (leave --val-fraction out)")
    objective, run_objective = stated.get("objective"), previous.get("objective", "lm" if previous else None)
    if objective is not None and run_objective is not None and objective != run_objective:
        raise ScratchLLMError(f"{where}: --objective {objective} is not the run's {run_objective}")
    return tok


def pretrain_lm(run: PretrainConfig, tok, resume: bool = False) -> dict[str, Any]:
    """Next-token pretraining of a GPT once `pretrain` has resolved the run's settings."""
    data, out, val_fraction, cfg = run.data, Path(run.out), run.val_fraction, run.train
    model_cfg = read_config(run.model, vocab_size=tok.vocab_size, context_length=cfg.context_length)
    env, device = init_distributed(cfg.device)
    check_fits(model_cfg, device, TRAINING_BYTES_PER_PARAMETER, what="pretrain")
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
        "tokenizer": {"vocab_size": tok.vocab_size, **tok.describe()},
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
