"""The one training loop: pretraining, classification, instruction and preference tuning all run here.

`fit(model, task, cfg, out_dir)` runs AdamW with linear warmup and cosine decay, gradient
accumulation and clipping, optional bf16 autocast, periodic evaluation / text samples /
checkpoints, exact resume, and DDP or FSDP under `torchrun`. *What* is learned belongs to the
`task` (see `Task`): it hands out micro-batches, turns a batch into a scalar loss and evaluates the
model. Recipes (scratchllm.recipes) bring their own task and reuse this loop unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from scratchllm.checkpoint.model_dir import load_weights, save_model
from scratchllm.core.device import DistInfo, autocast_dtype, init_distributed, join_single_process_group, peak_flops
from scratchllm.core.files import write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.training.config import TrainConfig, derive_grad_accum
from scratchllm.training.optim import learning_rate, make_optimizer, weight_decay_groups
from scratchllm.training.run_dir import TRAINER_FILE, checkpoint_dirs, plot_losses, read_metrics, rng_state, set_rng_state

class Task(Protocol):
    """What `fit` needs from a training task (pretraining, classification, instruction, DPO...).

    next_batch()            the next micro-batch, already on the training device
    loss(model, batch)      scalar mean loss (a tensor with grad)
    batch_tokens(batch)     tokens in the batch that count towards the loss (for throughput)
    evaluate(model)         {"val_loss": ..., ...}; called under no_grad with the model in eval mode
    state_dict()            what exact resume needs (the data loader position) ...
    load_state_dict(state)  ... and restores

    Optional attributes: `sample(model) -> str`; `best_metric` (default "val_loss") and
    `higher_is_better` (default False) choose RUNDIR/best/; `save_extra` (dict) is added to every
    saved model directory's config.json (e.g. {"prompt_style": "alpaca"}).

    The model is a GPT, or a module wrapping one that writes and reads itself: see `save_model`
    (its `save_pretrained(directory, tokenizer=, extra=, add_files=)`) and `_load_weights` (its
    `load_weights(directory)`, exact and in place, used on resume).
    """

    def next_batch(self) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...
    def batch_tokens(self, batch: Any) -> int: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _TaskModule(nn.Module):
    """Routes every use of the model through `forward`, where DDP hangs its gradient hooks and FSDP
    its parameter all-gathers; tasks call methods such as `model.loss(...)`, not `model(...)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


class _Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint after the current step and returns.
    A second signal interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _fmt_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False,
        tokenizer=None, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `model` on `task` as `cfg` says, writing the run directory `out_dir`. Returns a summary.

    resume=True continues from the newest checkpoint in out_dir (a fresh start when there is none):
    model, optimizer, step, RNG states and the task's data position are restored, and metrics.jsonl
    lines after that step are dropped, so the losses continue exactly as an uninterrupted run's.
    SIGINT/SIGTERM save a checkpoint after the current step; the summary then has "stopped" set to
    the signal's name and "exit_code" 130 / 143. A NaN or infinite loss raises ScratchLLMError naming
    the step; the checkpoints written before it stay. extra_config is saved in run_config.json.
    """
    cfg = TrainConfig.from_dict(cfg.to_dict()) if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    env, device = init_distributed(cfg.device)
    amp_dtype = autocast_dtype(cfg.dtype, device)
    out = Path(out_dir)
    main = env.is_main
    raw = model
    existing = checkpoint_dirs(out)
    if existing and not resume:
        raise ScratchLLMError(
            f"{out}: already holds checkpoints (up to step {existing[-1][0]}); resume it (--resume) or choose another output directory"
        )
    latest = existing[-1][1] if (resume and existing) else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        # temporary directories left by a crash during a save (see checkpoint.atomic_directory)
        for stale in [*(out / "checkpoints").glob(".step-*"), *out.glob(".best.*"), *out.glob(".final.*")]:
            shutil.rmtree(stale, ignore_errors=True)

    model_cfg = getattr(raw, "config", None)
    seq_len = cfg.context_length or getattr(model_cfg, "context_length", None) or getattr(task, "context_length", None)
    if seq_len is None:
        raise ScratchLLMError("train config: context_length is not set and the model has no config.context_length")
    accum, accum_formula = derive_grad_accum(cfg, seq_len, env.world_size)

    # ---- model placement: weights first (resume), then DDP / FSDP, then compile
    raw.to(device)
    state: dict[str, Any] | None = None
    if latest is not None:
        state = torch.load(latest / TRAINER_FILE, map_location="cpu", weights_only=True)
        if state.get("world_size", 1) != env.world_size:
            raise ScratchLLMError(
                f"{latest}: written by {state.get('world_size')} process(es); resume with the same number (now {env.world_size})"
            )
        load_weights(raw, latest)
    if not resume or latest is None:
        torch.manual_seed(cfg.seed + env.rank)  # dropout masks differ across processes, as they should
        random.seed(cfg.seed + env.rank)
    wrapper = _TaskModule(raw)
    runner: nn.Module = wrapper
    shadow = None  # FSDP: a full copy on rank 0 that checkpoints are written from
    if cfg.fsdp:
        runner, shadow = _shard(raw, wrapper, env, device)
    elif env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        runner = DDP(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    train_runner = torch.compile(runner) if cfg.compile else runner
    optimizer = make_optimizer(raw, cfg, device, fused=False if cfg.fsdp else None)

    def on_model(fn):
        """Run fn(model) for evaluation/sampling; under FSDP through the root's forward (all-gathers)."""
        return runner(fn) if cfg.fsdp else fn(raw)

    # ---- state that checkpoints carry
    step, tokens, elapsed_before = 0, 0, 0.0
    best = None
    if state is not None:
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(runner, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        step, tokens, best = state["step"], state["tokens"], state["best"]
        elapsed_before = state.get("elapsed_s", 0.0)
        task.load_state_dict(state["ranks"][env.rank]["task"])
    best_name = getattr(task, "best_metric", "val_loss")
    higher = bool(getattr(task, "higher_is_better", False))

    metrics_path = out / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if main:
        rows = read_metrics(metrics_path, step if state is not None else -1)
        tmp = metrics_path.with_name(f".{metrics_path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, metrics_path)

    # ---- the resolved configuration, printed and saved
    n_params = sum(p.numel() for p in raw.parameters())
    n_trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    flops_fn = getattr(raw, "flops_per_token", None)
    flops_per_token = float(flops_fn(seq_len)) if callable(flops_fn) else None
    peak, peak_source = peak_flops(device, amp_dtype)
    peak_total = peak * env.world_size
    decay, no_decay = weight_decay_groups(raw)
    derived = {
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "context_length": seq_len,
        "grad_accum": accum,
        "tokens_per_step": cfg.batch_size * seq_len * accum * env.world_size,
        "tokens_per_step_formula": accum_formula,
        "flops_per_token": flops_per_token,
        "flops_per_token_formula": "3 * (2 * matmul weights + 4 * n_layers * context_length * emb_dim)",
        "world_size": env.world_size,
        "device": str(device),
        "autocast_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "peak_flops": peak_total,
        "peak_flops_source": peak_source + (f" x {env.world_size} processes" if env.world_size > 1 else ""),
        "weight_decay_tensors": len(decay),
        "no_weight_decay_tensors": len(no_decay),
    }
    run_config = {
        "model": model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else None,
        "train": cfg.to_dict(),
        "derived": derived,
        **(extra_config or {}),
    }
    if state is not None:
        run_config["resumed_from_step"] = step
    if main:
        write_json(out / "run_config.json", run_config, default=str, ensure_ascii=True)
        _print_config(out, run_config, resumed_at=step if state is not None else None)

    # ---- helpers that use the loop's state

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def quiet_rng():
        """Evaluation and samples must not move the training RNG: toggling them keeps the losses."""
        return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])

    def evaluate() -> dict[str, float]:
        raw.eval()
        with torch.no_grad(), autocast(), quiet_rng():
            result = on_model(task.evaluate)
        raw.train()
        return result

    def full_model() -> nn.Module:
        """The model with full weights, for save_pretrained (collective under FSDP)."""
        if shadow is None and not cfg.fsdp:
            return raw
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(runner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if shadow is not None:
            shadow.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=False)
        return shadow

    save_extra = dict(getattr(task, "save_extra", None) or {})

    def save_model_dir(target: Path, model_to_save: nn.Module, info: dict[str, Any]) -> None:
        save_model(model_to_save, target, tokenizer=tokenizer, extra={**save_extra, "training": info})

    def save_checkpoint(at_step: int, elapsed: float) -> Path | None:
        import torch.distributed as dist

        mine = {"task": task.state_dict(), "rng": rng_state(device)}
        ranks = [mine]
        if env.world_size > 1:
            ranks = [None] * env.world_size
            dist.all_gather_object(ranks, mine)
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            optim_state = get_optimizer_state_dict(runner, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optim_state = optimizer.state_dict()
        model_to_save = full_model()
        target = None
        if main:
            trainer = {
                "format": 1, "step": at_step, "tokens": tokens, "best": best, "elapsed_s": elapsed,
                "world_size": env.world_size, "optimizer": optim_state, "ranks": ranks, "train_config": cfg.to_dict(),
            }
            target = out / "checkpoints" / f"step-{at_step:07d}"
            info = {"step": at_step, "tokens": tokens}
            # The model directory and trainer.pt appear together: both are written into the temporary
            # directory that atomic_directory renames into place, so a crash leaves the old ones.
            save_model(model_to_save, target, tokenizer=tokenizer, extra={**save_extra, "training": info},
                       add_files=lambda tmp: torch.save(trainer, tmp / TRAINER_FILE))
            for _, old in checkpoint_dirs(out)[: -cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        if env.world_size > 1:
            dist.barrier()
        return target

    def write_row(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def show(message: str) -> None:
        if main:
            tqdm.write(message, file=sys.stderr)

    def do_sample(at_step: int) -> None:
        if not hasattr(task, "sample"):
            return
        raw.eval()
        with torch.no_grad(), autocast(), quiet_rng():
            text = on_model(task.sample)
        raw.train()
        if main and text:
            show(f"--- sample at step {at_step} ---\n{text}\n---")
            with open(out / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"--- step {at_step} ---\n{text}\n\n")

    def do_eval(at_step: int) -> dict[str, float]:
        nonlocal best
        result = evaluate()
        improved = best_name in result and (
            best is None or (result[best_name] > best if higher else result[best_name] < best)
        )
        if improved:
            best = result[best_name]
        if improved and at_step > 0:
            model_to_save = full_model()
            if main:
                save_model_dir(out / "best", model_to_save, {"step": at_step, "tokens": tokens, **result})
        if main and result:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
            show(f"step {at_step:>6} | {shown}{' (best)' if improved else ''}")
        return result

    # ---- training
    from tqdm.auto import tqdm

    raw.train()
    if state is not None:  # last, so that nothing above (model init, loaders) moves the restored RNG
        set_rng_state(state["ranks"][env.rank]["rng"], device)
    start_step = step
    t_start = time.perf_counter()
    train_time = 0.0
    last = {"time": 0.0, "tokens": tokens}
    stopped = "max_steps"
    last_loss = None
    last_eval: dict[str, float] = {}
    saved_at = evaluated_at = -1
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None if (cfg.progress and main) else True)
    try:
        with _Stop() as stop:
            if state is None and cfg.eval_every > 0:
                last_eval = do_eval(0)
                evaluated_at = 0
                if main and last_eval:
                    write_row({"step": 0, "tokens": 0, **last_eval})
            if state is None and cfg.sample_every > 0:
                do_sample(0)
            t_start = time.perf_counter()  # max_time and the time schedule count training, not the step-0 look
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                if cfg.schedule == "time":
                    spent = (elapsed_before + time.perf_counter() - t_start) / cfg.max_time
                    lr = learning_rate(min(1.0, spent) * cfg.max_steps, cfg)
                else:
                    lr = learning_rate(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                for micro in range(accum):
                    batch = task.next_batch()
                    step_tokens += int(task.batch_tokens(batch))
                    # DDP all-reduces gradients in backward; skip that on all but the last micro-batch.
                    sync = micro == accum - 1 or not hasattr(runner, "no_sync")
                    with (contextlib.nullcontext() if sync else runner.no_sync()):
                        with autocast():
                            loss = train_runner(task.loss, batch)
                        (loss / accum).backward()
                    loss_sum += loss.detach().float()
                # One all-reduce carries the loss for logging, the tokens, and the votes to stop (a
                # signal, the time budget), so that every process stops after the same step.
                time_up = cfg.max_time is not None and elapsed_before + time.perf_counter() - t_start >= cfg.max_time
                summary = torch.tensor([0.0, step_tokens, 1.0 if stop.signum else 0.0, float(time_up)],
                                       dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
                summary[0] = loss_sum / accum
                if env.world_size > 1:
                    import torch.distributed as dist

                    dist.all_reduce(summary)
                    summary[0] /= env.world_size
                loss_value, step_tokens, stop_votes, time_votes = summary.tolist()
                if not math.isfinite(loss_value):
                    good = checkpoint_dirs(out)
                    where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written"
                    raise ScratchLLMError(
                        f"loss is {loss_value} at step {step + 1}; stopping ({where}); try a lower lr (now {lr:.3g}) or more warmup"
                    )
                grad_norm = None
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_([p for p in raw.parameters() if p.requires_grad], cfg.grad_clip)
                    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += int(step_tokens)
                last_loss = loss_value
                train_time += time.perf_counter() - t0
                bar.update(1)
                do_log = step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps
                do_evaluate = cfg.eval_every > 0 and step % cfg.eval_every == 0
                if do_log or do_evaluate:
                    dt = train_time - last["time"]
                    tps = (tokens - last["tokens"]) / dt if dt > 0 else 0.0
                    last.update(time=train_time, tokens=tokens)
                    row = {
                        "step": step, "loss": loss_value, "lr": lr, "tokens": tokens, "tokens_per_s": round(tps, 1),
                        "mfu": round(flops_per_token * tps / peak_total, 5) if flops_per_token else None,
                        "grad_norm": grad_norm, "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 3),
                    }
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                    if do_log and main:
                        mfu = f" | mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
                        show(f"step {step:>6}/{cfg.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | "
                             f"{tps:,.0f} tok/s{mfu} | {_fmt_count(tokens)} tokens")
                    if do_evaluate:
                        last_eval = do_eval(step)
                        evaluated_at = step
                        row.update(last_eval)
                        if main:
                            plot_losses(rows + [row], out / "loss.png")
                    if main:
                        write_row(row)
                if cfg.sample_every > 0 and step % cfg.sample_every == 0:
                    do_sample(step)
                if cfg.save_every > 0 and step % cfg.save_every == 0:
                    save_checkpoint(step, elapsed_before + time.perf_counter() - t_start)
                    saved_at = step
                if stop_votes > 0:
                    stopped = signal.Signals(stop.signum).name if stop.signum else "SIGTERM"
                    break
                if time_votes > 0 and step < cfg.max_steps:
                    stopped = "max_time"
                    break
            bar.close()
            elapsed = elapsed_before + time.perf_counter() - t_start
            finished = stopped in ("max_steps", "max_time")
            if finished and evaluated_at != step:
                last_eval = do_eval(step)
                if main and last_eval:
                    write_row({"step": step, "tokens": tokens, **last_eval})
            if main and rows:
                plot_losses(rows, out / "loss.png")
            if saved_at != step and (step > start_step or state is None):
                save_checkpoint(step, elapsed)
            if finished:
                model_to_save = full_model()
                if main:
                    save_model_dir(out / "final", model_to_save, {"step": step, "tokens": tokens, **last_eval})
                if cfg.sample_every > 0 and step % cfg.sample_every != 0:
                    do_sample(step)
    finally:
        bar.close()

    summary_out = {
        "run_dir": str(out),
        "rank": env.rank,
        "steps": step,
        "tokens": tokens,
        "loss": last_loss,
        "eval": last_eval,
        "best_metric": best_name,
        "best": best,
        "stopped": stopped,
        "exit_code": 128 + int(getattr(signal, stopped)) if stopped.startswith("SIG") else 0,
        "train_time_s": round(train_time, 3),
        "tokens_per_s": round((tokens - (state or {}).get("tokens", 0)) / train_time, 1) if train_time > 0 else None,
    }
    if main:
        verb = "stopped by " + stopped if stopped.startswith("SIG") else "finished"
        show(f"{verb} at step {step}: {_fmt_count(tokens)} tokens in {train_time:.1f} s of training; "
             f"run directory {out}" + (f" (resume with --resume {out})" if stopped.startswith("SIG") else ""))
    return summary_out


def _shard(raw: nn.Module, wrapper: nn.Module, env: DistInfo, device: torch.device):
    """FSDP2: shard every transformer block, then the root (embeddings, final norm, head).

    Returns (sharded root, full-precision copy on rank 0 for writing checkpoints). Each block's
    parameters are all-gathered just before its forward and freed after (ZeRO-3, Rajbhandari et al.
    2020); gradients are reduce-scattered so each process keeps the optimizer state of its shard.
    A single process (plain `scratchllm pretrain --fsdp`, or torchrun --nproc_per_node=1) becomes a
    group of one and runs the same code, so a configuration can be checked on one GPU first.
    """
    if env.world_size == 1:
        join_single_process_group(device)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise ScratchLLMError(f"fsdp: this PyTorch ({torch.__version__}) has no FSDP2 fully_shard; needs torch >= 2.4") from None
    import copy

    shadow = copy.deepcopy(raw).to("cpu") if env.is_main else None
    for block in getattr(raw, "blocks", []):
        fully_shard(block)
    fully_shard(wrapper)
    return wrapper, shadow


def _print_config(out: Path, run_config: dict[str, Any], resumed_at: int | None) -> None:
    d = run_config["derived"]
    lines = [f"run directory {out}" + (f" (resuming at step {resumed_at})" if resumed_at is not None else "")]
    if run_config.get("model"):
        lines.append("model   " + " ".join(f"{k}={v}" for k, v in run_config["model"].items()))
    lines.append("train   " + " ".join(f"{k}={v!r}" for k, v in run_config["train"].items()))
    lines.append(f"derived parameters {d['parameters']:,} (trainable {d['trainable_parameters']:,})")
    lines.append(f"        {d['tokens_per_step_formula']}")
    if d["flops_per_token"]:
        lines.append(f"        FLOPs/token = {d['flops_per_token_formula']} = {d['flops_per_token']:,.0f} "
                     f"(= {d['flops_per_token'] * d['tokens_per_step']:.3g} per step)")
    lines.append(f"        device {d['device']} x {d['world_size']}, autocast {d['autocast_dtype'] or 'off (float32)'}, "
                 f"peak {d['peak_flops'] / 1e9:,.0f} GFLOP/s ({d['peak_flops_source']})")
    print("\n".join(lines), file=sys.stderr, flush=True)

