"""The one training loop: pretraining, classification, instruction and preference tuning all run here.

`fit(model, task, cfg, out_dir)` orchestrates; the components decide when they act:

    Task           what is learned: micro-batches, the loss, validation metrics, samples (recipes/)
    Parallel       where the model runs: one process, DDP or FSDP2 under torchrun, compiled (parallel.py)
    RunDir         the run directory: checkpoints, metrics.jsonl, loss.png, run_config.json (run_dir.py)
    train_step     one optimizer step: grad_accum micro-batches, the all-reduced loss, clipping, AdamW
    Validator      evaluation every eval_every steps, the best metric, RUNDIR/best/, early stopping
    Checkpointer   step checkpoints every save_every steps (model directory + trainer.pt), exact resume
    Logger         a line and a metrics.jsonl row every log_every steps, tokens/s and MFU
    Sampler        text samples every sample_every steps

The optimizer is AdamW (Loshchilov & Hutter 2019) with linear warmup and cosine decay (optim.py).
Evaluation and samples run under a forked RNG, so switching them on or off leaves the training
losses unchanged; a resumed run restores every RNG and the task's data position, so it continues
with exactly the losses an uninterrupted run has.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from scratchllm.checkpoint.model_dir import CONFIG_FILE, load_weights, read_model_config, save_model
from scratchllm.core.console import log
from scratchllm.core.device import DistInfo, autocast_dtype, init_distributed, measure_matmul_peak, peak_flops
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.config import TrainConfig, derive_grad_accum
from scratchllm.training.optim import learning_rate, make_optimizer, weight_decay_groups
from scratchllm.training.parallel import Parallel
from scratchllm.training.run_dir import TRAINER_FILE, RunDir, rng_state, set_rng_state

# --------------------------------------------------------------------------------------------------
# What a recipe provides


class Task:
    """What is learned. Recipes subclass it; the loop calls nothing else.

    Required: `next_batch`, `loss`, `batch_tokens`. The rest has defaults: no validation metrics, no
    samples, no resumable state (override `state_dict` / `load_state_dict` when the task holds a
    data position, which exact resume needs). `best_metric` / `higher_is_better` choose RUNDIR/best/;
    `save_extra` is added to every saved model directory's config.json (e.g. {"prompt_style": ...}).
    """

    best_metric: str = "val_loss"
    higher_is_better: bool = False
    save_extra: Mapping[str, Any] = MappingProxyType({})  # a recipe assigns its own dict

    def next_batch(self) -> Any:
        """The next micro-batch, already on the training device."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The scalar mean loss of a batch (a tensor with grad)."""
        raise NotImplementedError

    def batch_tokens(self, batch: Any) -> int:
        """Tokens in the batch that count towards throughput."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics {"val_loss": ..., ...}; called under no_grad with the model in eval mode."""
        return {}

    def sample(self, model: nn.Module) -> str:
        """A text sample to show and keep in samples.txt ("" for none)."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# The run's state and its components


@dataclass
class Progress:
    """What a checkpoint carries besides weights, optimizer and RNG: where the run is."""

    step: int = 0
    tokens: int = 0
    best: float | None = None
    since_best: int = 0  # evaluations since the best one (early stopping counts these)
    elapsed_before: float = 0.0  # seconds of training in earlier processes (max_time counts them)
    resumed: bool = False


class Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint after the current step and returns.
    A second signal interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
            "(send it again to stop at once)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Context:
    """The precision and RNG rules every component runs the model under."""

    def __init__(self, device: torch.device, amp_dtype: torch.dtype | None):
        self.device, self.amp_dtype = device, amp_dtype

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    def quiet_rng(self):
        """Evaluation and samples must not move the training RNG: toggling them keeps the losses."""
        return torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else [])

    def inference(self, parallel: Parallel, fn):
        """fn(model) in eval mode, without gradients, under autocast and a forked RNG."""
        parallel.raw.eval()
        with torch.no_grad(), self.autocast(), self.quiet_rng():
            result = parallel.call(fn)
        parallel.raw.train()
        return result


class Saver:
    """Writes model directories of the run: step checkpoints (with trainer.pt), best/ and final/."""

    def __init__(self, run: RunDir, parallel: Parallel, tokenizer: Tokenizer | None, save_extra: dict[str, Any]):
        self.run, self.parallel, self.tokenizer, self.save_extra = run, parallel, tokenizer, save_extra

    def model_dir(self, name: str, info: dict[str, Any]) -> None:
        """RUNDIR/NAME as a model directory (collective under FSDP: every rank calls it)."""
        model = self.parallel.full_model()
        if self.run.main:
            save_model(model, self.run.path / name, tokenizer=self.tokenizer, extra={**self.save_extra, "training": info})


class Checkpointer:
    """Step checkpoints every `save_every` steps, and the state exact resume needs."""

    def __init__(self, saver: Saver, optimizer: torch.optim.Optimizer, task: Task, cfg: TrainConfig, env: DistInfo,
                 device: torch.device):
        self.saver, self.optimizer, self.task, self.cfg, self.env, self.device = saver, optimizer, task, cfg, env, device
        self.saved_at = -1

    def should_save(self, step: int) -> bool:
        return self.cfg.save_every > 0 and step % self.cfg.save_every == 0

    def save(self, progress: Progress, elapsed: float) -> None:
        mine = {"task": self.task.state_dict(), "rng": rng_state(self.device)}
        ranks = [mine]
        if self.env.world_size > 1:
            ranks = [None] * self.env.world_size
            torch.distributed.all_gather_object(ranks, mine)
        optim_state = self.saver.parallel.optimizer_state(self.optimizer)
        model = self.saver.parallel.full_model()
        run = self.saver.run
        if run.main:
            trainer = {
                "format": 1, "step": progress.step, "tokens": progress.tokens, "best": progress.best,
                "since_best": progress.since_best,
                "elapsed_s": elapsed, "world_size": self.env.world_size, "optimizer": optim_state, "ranks": ranks,
                "train_config": self.cfg.to_dict(),
            }
            info = {"step": progress.step, "tokens": progress.tokens}
            # The model directory and trainer.pt appear together: both are written into the temporary
            # directory that atomic_directory renames into place, so a crash leaves the old ones.
            save_model(model, run.step_dir(progress.step), tokenizer=self.saver.tokenizer,
                       extra={**self.saver.save_extra, "training": info},
                       add_files=lambda tmp: torch.save(trainer, tmp / TRAINER_FILE))
            run.prune(self.cfg.keep_last)
        if self.env.world_size > 1:
            torch.distributed.barrier()
        self.saved_at = progress.step

    def restore(self, state: dict[str, Any]) -> Progress:
        """Optimizer and task state from a trainer.pt; returns where the run was."""
        self.saver.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
        self.task.load_state_dict(state["ranks"][self.env.rank]["task"])
        self.saved_at = state["step"]
        return Progress(state["step"], state["tokens"], state["best"], state.get("since_best", 0),
                        state.get("elapsed_s", 0.0), resumed=True)


class Validator:
    """Evaluates every `eval_every` steps; keeps RUNDIR/best/ at the best `task.best_metric`. With
    `patience` it stops the run after that many evaluations without a new best (early stopping,
    Prechelt 1998) and puts the best weights back before final/ is written."""

    def __init__(self, task: Task, saver: Saver, context: Context, cfg: TrainConfig, show):
        self.task, self.saver, self.context, self.cfg, self.show = task, saver, context, cfg, show
        self.evaluated_at = -1
        self.last: dict[str, float] = {}

    def should_validate(self, step: int) -> bool:
        return self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0

    def validate(self, progress: Progress) -> dict[str, float]:
        result = self.context.inference(self.saver.parallel, self.task.evaluate)
        name, higher = self.task.best_metric, self.task.higher_is_better
        improved = name in result and (
            progress.best is None or (result[name] > progress.best if higher else result[name] < progress.best)
        )
        if improved:
            progress.best, progress.since_best = result[name], 0
            if progress.step > 0:
                self.saver.model_dir("best", {"step": progress.step, "tokens": progress.tokens, **result})
        elif name in result:
            progress.since_best += 1
        if result:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
            self.show(f"step {progress.step:>6} | {shown}{' (best)' if improved else ''}")
        self.evaluated_at, self.last = progress.step, result
        return result

    def should_stop(self, progress: Progress) -> bool:
        return self.cfg.patience > 0 and progress.since_best >= self.cfg.patience

    def restore_best(self, env: DistInfo) -> dict[str, Any] | None:
        """Copy RUNDIR/best/'s weights into the model; returns its training info (step, metrics), or
        None when there is no best/ (the best evaluation was the one before training)."""
        best = self.saver.run.path / "best"
        if env.world_size > 1:
            torch.distributed.barrier()  # rank 0 wrote best/
        if not (best / CONFIG_FILE).is_file():
            self.show("early stopping: no best/ (no evaluation after step 0 improved); final/ keeps the last weights")
            return None
        load_weights(self.saver.parallel.raw, best)
        info = read_model_config(best).get("training", {})
        self.show(f"early stopping: final/ gets the weights of step {info.get('step')} "
                  f"({self.task.best_metric} {info.get(self.task.best_metric, float('nan')):.4f})")
        return info


class Sampler:
    """Text samples at step 0, every `sample_every` steps and at the end."""

    def __init__(self, task: Task, parallel: Parallel, context: Context, run: RunDir, cfg: TrainConfig, show):
        self.task, self.parallel, self.context, self.run, self.cfg, self.show = task, parallel, context, run, cfg, show

    def should_sample(self, step: int) -> bool:
        return self.cfg.sample_every > 0 and step % self.cfg.sample_every == 0

    def sample(self, step: int) -> None:
        text = self.context.inference(self.parallel, self.task.sample)
        if text:
            self.show(f"--- sample at step {step} ---\n{text}\n---")
            self.run.append_sample(step, text)


class Logger:
    """A progress line and a metrics.jsonl row every `log_every` steps (and with every evaluation):
    loss, learning rate, tokens/s over the steps since the last row, MFU and the gradient norm.

    A measured peak (every CPU) is a lower bound, and a busy neighbour at start can pull it far
    down; when a row's MFU comes out above 100%, `remeasure` is asked for the peak again (it keeps
    the best figure seen) and the row uses that, so the figure is never silently impossible."""

    def __init__(self, run: RunDir, cfg: TrainConfig, flops_per_token: float | None, peak: float, progress: Progress,
                 remeasure: Callable[[], float] | None = None):
        self.run, self.cfg, self.flops_per_token, self.peak = run, cfg, flops_per_token, peak
        self.remeasure = remeasure
        self.train_time = 0.0  # seconds spent in train steps (not evaluation, samples or saves)
        self._last_time, self._last_tokens = 0.0, progress.tokens
        self.bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="train", unit="step", file=sys.stderr,
                        dynamic_ncols=True, disable=None if (cfg.progress and run.main) else True)

    def show(self, message: str) -> None:
        if self.run.main:
            tqdm.write(message, file=sys.stderr)

    def should_log(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or step == 1 or step == self.cfg.max_steps

    def row(self, progress: Progress, loss: float, lr: float, grad_norm: float | None, elapsed: float) -> dict[str, Any]:
        dt = self.train_time - self._last_time
        tps = (progress.tokens - self._last_tokens) / dt if dt > 0 else 0.0
        self._last_time, self._last_tokens = self.train_time, progress.tokens
        mfu = round(self.flops_per_token * tps / self.peak, 5) if self.flops_per_token else None
        if mfu is not None and mfu > 1.0 and self.remeasure is not None:
            old, self.peak = self.peak, max(self.peak, self.remeasure())
            self.show(f"note: {self.flops_per_token * tps / 1e9:,.0f} GFLOP/s is above the matmul peak measured at "
                      f"start ({old / 1e9:,.0f}); measured again: {self.peak / 1e9:,.0f} GFLOP/s")
            mfu = round(self.flops_per_token * tps / self.peak, 5)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        return {"step": progress.step, "loss": loss, "lr": lr, "tokens": progress.tokens, "tokens_per_s": round(tps, 1),
                "mfu": mfu, "grad_norm": grad_norm, "elapsed_s": round(elapsed, 3)}

    def print_row(self, row: dict[str, Any]) -> None:
        mfu = f" | mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
        self.show(f"step {row['step']:>6}/{self.cfg.max_steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | "
                  f"{row['tokens_per_s']:,.0f} tok/s{mfu} | {format_count(row['tokens'])} tokens")


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


# --------------------------------------------------------------------------------------------------
# One optimizer step


@dataclass
class StepResult:
    loss: float  # mean over micro-batches and processes
    tokens: int  # summed over processes
    stop_votes: float  # processes that received SIGINT / SIGTERM
    time_votes: float  # processes whose time budget is spent
    grad_norm: float | None


def train_step(parallel: Parallel, task: Task, optimizer: torch.optim.Optimizer, accum: int, context: Context,
               env: DistInfo, lr: float, grad_clip: float, votes: Callable[[], tuple[bool, bool]], step: int,
               run: RunDir) -> StepResult:
    """`accum` micro-batches, each `loss / accum` backpropagated, then one optimizer step at `lr`.

    One all-reduce carries the loss for logging, the tokens, and each process's votes to stop
    (`votes()` after the micro-batches: a signal arrived, the time budget is spent), so that every
    process stops after the same step. A NaN or infinite loss raises before the weights are
    touched, naming the step and the last good checkpoint.
    """
    for group in optimizer.param_groups:  # Muon's groups run at muon_lr / lr times the schedule
        group["lr"] = lr * group.get("lr_scale", 1.0)
    device = context.device
    loss_sum = torch.zeros((), device=device)
    step_tokens = 0
    for micro in range(accum):
        batch = task.next_batch()
        step_tokens += int(task.batch_tokens(batch))
        with parallel.no_sync(last_micro_batch=micro == accum - 1):
            with context.autocast():
                loss = parallel.train_call(task.loss, batch)
            (loss / accum).backward()
        loss_sum += loss.detach().float()
    stop_signal, time_up = votes()
    summary = torch.tensor([0.0, step_tokens, float(stop_signal), float(time_up)],
                           dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    summary[0] = loss_sum / accum
    if env.world_size > 1:
        torch.distributed.all_reduce(summary)
        summary[0] /= env.world_size
    loss_value, tokens, stop_votes, time_votes = summary.tolist()
    if not math.isfinite(loss_value):
        good = run.checkpoints()
        where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written"
        raise ScratchLLMError(f"loss is {loss_value} at step {step + 1}; stopping ({where}); "
                              f"try a lower lr (now {lr:.3g}) or more warmup")
    grad_norm = parallel.clip_grad_norm(grad_clip) if grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, int(tokens), stop_votes, time_votes, grad_norm)


# --------------------------------------------------------------------------------------------------
# The loop


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False,
        tokenizer: Tokenizer | None = None, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `model` (a GPT, Classifier or EncoderDecoder) on `task` as `cfg` says, writing the run
    directory `out_dir`. Returns a summary.

    resume=True continues from the newest checkpoint in out_dir (a fresh start when there is none):
    model, optimizer, step, RNG states and the task's data position are restored, and metrics.jsonl
    lines after that step are dropped, so the losses continue exactly as an uninterrupted run's.
    SIGINT/SIGTERM save a checkpoint after the current step; the summary then has "stopped" set to
    the signal's name and "exit_code" 130 / 143. A NaN or infinite loss raises ScratchLLMError naming
    the step; the checkpoints written before it stay. extra_config is saved in run_config.json.
    """
    cfg = TrainConfig.from_dict(cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg)
    cfg.check_derived()
    env, device = init_distributed(cfg.device)
    context = Context(device, autocast_dtype(cfg.dtype, device))
    run = RunDir(out_dir, main=env.is_main)
    latest = run.start(resume, tokenizer)  # also writes RUNDIR/tokenizer.json, for a resume before the first checkpoint
    seq_len = cfg.context_length or model.config.context_length
    accum, accum_formula = derive_grad_accum(cfg, seq_len, env.world_size)

    # ---- weights first (resume), then DDP / FSDP / compile, then the optimizer
    model.to(device)
    state = RunDir.read_trainer(latest, env.world_size) if latest is not None else None
    if latest is not None:
        load_weights(model, latest)
    else:
        torch.manual_seed(cfg.seed + env.rank)  # dropout masks differ across processes, as they should
        random.seed(cfg.seed + env.rank)
    parallel = Parallel(model, cfg, env, device)
    optimizer = make_optimizer(model, cfg, device, fused=False if cfg.fsdp else None, amp_dtype=context.amp_dtype)
    saver = Saver(run, parallel, tokenizer, dict(task.save_extra))
    checkpointer = Checkpointer(saver, optimizer, task, cfg, env, device)
    progress = checkpointer.restore(state) if state is not None else Progress()
    run.keep_metrics(progress.step if progress.resumed else -1)

    # ---- the resolved configuration, printed and saved
    flops_per_token = float(model.flops_per_token(seq_len))
    peak = peak_flops(device, context.amp_dtype)
    run_config = describe_run(model, cfg, env, device, context.amp_dtype, seq_len, accum, accum_formula,
                              flops_per_token, peak.flops, peak.source, extra_config, progress)
    run.write_run_config(run_config)
    if run.main:
        print_run_config(run.path, run_config, resumed_at=progress.step if progress.resumed else None)

    remeasure = None
    if peak.measured:  # a datasheet figure is not re-measured
        def remeasure() -> float:
            return measure_matmul_peak(device, context.amp_dtype or torch.float32, again=True) * env.world_size
    logger = Logger(run, cfg, flops_per_token, peak.flops * env.world_size, progress, remeasure)
    validator = Validator(task, saver, context, cfg, logger.show)
    sampler = Sampler(task, parallel, context, run, cfg, logger.show)

    model.train()
    if state is not None:  # last, so that nothing above (model init, loaders) moves the restored RNG
        set_rng_state(state["ranks"][env.rank]["rng"], device)
    start_step = progress.step
    stopped = "max_steps"
    last_loss = None
    restored = None  # with patience: the training info of the best/ weights put back before final/
    try:
        with Stop() as stop:
            if not progress.resumed and cfg.eval_every > 0:
                if result := validator.validate(progress):
                    run.append_metrics({"step": 0, "tokens": 0, **result})
            if not progress.resumed and cfg.sample_every > 0:
                sampler.sample(0)
            t_start = time.perf_counter()  # max_time and the time schedule count training, not the step-0 look

            def elapsed() -> float:
                return progress.elapsed_before + time.perf_counter() - t_start

            def votes() -> tuple[bool, bool]:
                return stop.signum is not None, cfg.max_time is not None and elapsed() >= cfg.max_time

            while progress.step < cfg.max_steps:
                t0 = time.perf_counter()
                if cfg.schedule == "time":  # the schedule spans the wall-clock budget
                    lr = learning_rate(min(1.0, elapsed() / cfg.max_time) * cfg.max_steps, cfg)
                else:
                    lr = learning_rate(progress.step, cfg)
                result = train_step(parallel, task, optimizer, accum, context, env, lr, cfg.grad_clip, votes,
                                    progress.step, run)
                progress.step += 1
                progress.tokens += result.tokens
                last_loss = result.loss
                logger.train_time += time.perf_counter() - t0
                logger.bar.update(1)
                if logger.should_log(progress.step) or validator.should_validate(progress.step):
                    row = logger.row(progress, result.loss, lr, result.grad_norm, elapsed())
                    if logger.should_log(progress.step):
                        logger.print_row(row)
                    if validator.should_validate(progress.step):
                        row.update(validator.validate(progress))
                        run.plot(run.rows + [row])
                    run.append_metrics(row)
                if sampler.should_sample(progress.step):
                    sampler.sample(progress.step)
                if checkpointer.should_save(progress.step):
                    checkpointer.save(progress, elapsed())
                if result.stop_votes > 0:
                    stopped = signal.Signals(stop.signum).name if stop.signum else "SIGTERM"
                    break
                if result.time_votes > 0 and progress.step < cfg.max_steps:
                    stopped = "max_time"
                    break
                if validator.should_stop(progress) and progress.step < cfg.max_steps:
                    stopped = "patience"
                    break
            logger.bar.close()
            finished = stopped in ("max_steps", "max_time", "patience")
            if finished and validator.evaluated_at != progress.step:
                if result := validator.validate(progress):
                    run.append_metrics({"step": progress.step, "tokens": progress.tokens, **result})
            run.plot()
            if checkpointer.saved_at != progress.step and (progress.step > start_step or not progress.resumed):
                checkpointer.save(progress, elapsed())
            if finished and cfg.patience > 0:
                restored = validator.restore_best(env)
            if finished:
                info = {"step": progress.step, "tokens": progress.tokens, **validator.last}
                saver.model_dir("final", info if restored is None else {**info, **restored, "stopped_at_step": progress.step})
                if cfg.sample_every > 0 and progress.step % cfg.sample_every != 0:
                    sampler.sample(progress.step)
    finally:
        logger.bar.close()

    train_time = logger.train_time
    summary = {
        "run_dir": str(run.path),
        "rank": env.rank,
        "steps": progress.step,
        "tokens": progress.tokens,
        "loss": last_loss,
        "eval": validator.last,
        "best_metric": task.best_metric,
        "best": progress.best,
        "restored_best": restored,
        "stopped": stopped,
        "exit_code": 128 + int(getattr(signal, stopped)) if stopped.startswith("SIG") else 0,
        "train_time_s": round(train_time, 3),
        "tokens_per_s": round((progress.tokens - (state or {}).get("tokens", 0)) / train_time, 1) if train_time > 0 else None,
    }
    verb = "stopped by " + stopped if stopped.startswith("SIG") else "finished"
    logger.show(f"{verb} at step {progress.step}: {format_count(progress.tokens)} tokens in {train_time:.1f} s of training; "
                f"run directory {run.path}" + (f" (resume with --resume {run.path})" if stopped.startswith("SIG") else ""))
    return summary


def describe_run(model: nn.Module, cfg: TrainConfig, env: DistInfo, device: torch.device, amp_dtype: torch.dtype | None,
                 seq_len: int, accum: int, accum_formula: str, flops_per_token: float, peak: float, peak_source: str,
                 extra_config: dict[str, Any] | None, progress: Progress) -> dict[str, Any]:
    """run_config.json: the model and train configs, and the values derived from them."""
    decay, no_decay = weight_decay_groups(model)
    derived = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "context_length": seq_len,
        "grad_accum": accum,
        "tokens_per_step": cfg.batch_size * seq_len * accum * env.world_size,
        "tokens_per_step_formula": accum_formula,
        "flops_per_token": flops_per_token,
        "flops_per_token_formula": "3 * (2 * matmul weights + 4 * n_layers * context_length * n_heads * head_dim)",
        "world_size": env.world_size,
        "device": str(device),
        "autocast_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "peak_flops": peak * env.world_size,
        "peak_flops_source": peak_source + (f" x {env.world_size} processes" if env.world_size > 1 else ""),
        "weight_decay_tensors": len(decay),
        "no_weight_decay_tensors": len(no_decay),
    }
    run_config = {"model": model.config.to_dict(), "train": cfg.to_dict(), "derived": derived, **(extra_config or {})}
    if progress.resumed:
        run_config["resumed_from_step"] = progress.step
    return run_config


def print_run_config(out: Path, run_config: dict[str, Any], resumed_at: int | None) -> None:
    """The resolved configuration and its derived values, on stderr as a run starts."""
    d = run_config["derived"]
    lines = [f"run directory {out}" + (f" (resuming at step {resumed_at})" if resumed_at is not None else "")]
    lines.append("model   " + " ".join(f"{k}={v}" for k, v in run_config["model"].items()))
    lines.append("train   " + " ".join(f"{k}={v!r}" for k, v in run_config["train"].items()))
    lines.append(f"derived parameters {d['parameters']:,} (trainable {d['trainable_parameters']:,})")
    lines.append(f"        {d['tokens_per_step_formula']}")
    lines.append(f"        FLOPs/token = {d['flops_per_token_formula']} = {d['flops_per_token']:,.0f} "
                 f"(= {d['flops_per_token'] * d['tokens_per_step']:.3g} per step)")
    lines.append(f"        device {d['device']} x {d['world_size']}, autocast {d['autocast_dtype'] or 'off (float32)'}, "
                 f"peak {d['peak_flops'] / 1e9:,.0f} GFLOP/s ({d['peak_flops_source']})")
    if "precision" in run_config:  # a recipe that chose the dtype says which and why
        p = run_config["precision"]
        lines.append(f"        dtype {p['requested']} -> {p['dtype']}: {p['reason']}")
    log("\n".join(lines))
