"""Classification fine-tuning (`scratchllm finetune classify`): a pretrained GPT becomes a text classifier.

    labelled file -> load_labelled -> balance (undersample) -> stratified split 70/10/20
    -> encode (truncate to the context) -> Classifier (GPT body + head on the last real token)
    -> ClassificationTask on the shared loop -> test report (accuracy, per-class F1, confusion matrix)

The model is models/classifier.py, the data data/labelled.py and the report evaluation/metrics.py;
here: `ClassificationTask` (the task interface of the loop), `ClassifyConfig` (every option, which
the CLI's flags are generated from) and `finetune_classifier`, the recipe.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.checkpoint.loader import load
from scratchllm.checkpoint.model_dir import HEAD_FILE, read_model_config
from scratchllm.core.console import log
from scratchllm.core.device import resolve_device
from scratchllm.core.files import write_json
from scratchllm.data.labelled import Examples, check_labels, class_weights, load_labelled, load_sms_spam, stratified_split, undersample
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.metrics import classification_report
from scratchllm.models.classifier import Classifier, encode_texts, pad_batch
from scratchllm.recipes.config import ClassifyConfig
from scratchllm.training.config import TrainConfig
from scratchllm.training.loop import Task, fit

METRICS_FILE = "metrics.json"


@torch.no_grad()
def evaluate_split(model: Classifier, ids: Sequence[Sequence[int]], targets: Sequence[int],
                   batch_size: int = 32, weight: torch.Tensor | None = None) -> tuple[float, dict[str, Any]]:
    """(mean cross-entropy, classification_metrics) of `model` on encoded texts."""
    probs = model.probabilities(ids, batch_size)  # (N, K)
    y = torch.tensor(list(targets), dtype=torch.long)
    w = weight.cpu() if weight is not None else None
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, weight=w).item()
    truth = [model.labels[i] for i in y.tolist()]
    return loss, classification_report(truth, [model.labels[i] for i in probs.argmax(-1).tolist()], model.labels)



class ClassificationTask(Task):
    """Classification as a task of `scratchllm.train.fit`: batches of labelled texts, cross-entropy on
    the pooled logits, validation loss and accuracy.

    One epoch is one pass over the training split in a seeded order (a fresh permutation per epoch),
    so `state_dict` (epoch, position, running sums) resumes exactly. Training loss and accuracy are
    accumulated over the batches since the last evaluation (with evaluation once per epoch, they are
    the epoch's), and each evaluation appends a row to `history` for the per-epoch report and plots.
    """

    best_metric = "val_accuracy"
    higher_is_better = True

    def __init__(self, train_ids: list[list[int]], train_targets: list[int], val_ids: list[list[int]],
                 val_targets: list[int], batch_size: int, pad_id: int, device: Any = "cpu", seed: int = 123,
                 weight: torch.Tensor | None = None, eval_batch_size: int = 32, lm_weight: float = 0.0):
        if not train_ids:
            raise ScratchLLMError("classification: the training split is empty")
        self.train_ids, self.train_targets = train_ids, train_targets
        self.val_ids, self.val_targets = val_ids, val_targets
        self.batch_size, self.pad_id, self.device, self.seed = batch_size, pad_id, device, seed
        self.weight = weight.to(device) if weight is not None else None
        self.eval_batch_size = eval_batch_size
        self.lm_weight = lm_weight  # auxiliary next-token loss weight (0 = classification loss only)
        self.steps_per_epoch = math.ceil(len(train_ids) / batch_size)
        self.epoch, self.position, self.batches = 0, 0, 0  # position: batches served in this epoch
        self._order = self._permutation(0)
        self._sum_loss = self._sum_correct = self._sum_n = 0.0
        self.history: list[dict[str, float]] = []

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_ids)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self):
        if self.position == self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        rows = self._order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
        self.position += 1
        self.batches += 1
        idx, lengths = pad_batch([self.train_ids[i] for i in rows], self.pad_id, self.device)
        targets = torch.tensor([self.train_targets[i] for i in rows], dtype=torch.long, device=self.device)
        return idx, lengths, targets

    def loss(self, model: Classifier, batch) -> torch.Tensor:
        """Cross-entropy of the pooled logits (+ lm_weight x the next-token loss of the texts)."""
        idx, lengths, targets = batch
        if self.lm_weight:
            logits, lm = model(idx, lengths, lm_loss=True)
        else:
            logits, lm = model(idx, lengths), None
        logits = logits.float()  # (B, K)
        loss = F.cross_entropy(logits, targets, weight=self.weight)
        if model.training:
            with torch.no_grad():
                n = targets.numel()
                self._sum_loss += loss.item() * n
                self._sum_correct += (logits.argmax(-1) == targets).sum().item()
                self._sum_n += n
        return loss if lm is None else loss + self.lm_weight * lm

    def batch_tokens(self, batch) -> int:
        return int(batch[1].sum())

    def evaluate(self, model: Classifier) -> dict[str, float]:
        epoch = self.batches / self.steps_per_epoch
        if self.history and self.history[-1]["epoch"] == epoch:
            return dict(self.history[-1])  # asked again at the same step (e.g. the final evaluation)
        val_loss, m = evaluate_split(model, self.val_ids, self.val_targets, self.eval_batch_size, self.weight)
        row = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": m["accuracy"]}
        if self._sum_n:
            row["train_loss"] = self._sum_loss / self._sum_n
            row["train_accuracy"] = self._sum_correct / self._sum_n
        self._sum_loss = self._sum_correct = self._sum_n = 0.0
        self.history.append(row)
        return dict(row)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "batches": self.batches, "seed": self.seed,
                "sums": [self._sum_loss, self._sum_correct, self._sum_n], "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.batches = state["epoch"], state["position"], state["batches"]
        self.seed = state["seed"]
        self._sum_loss, self._sum_correct, self._sum_n = state["sums"]
        self.history = [dict(r) for r in state["history"]]
        self._order = self._permutation(self.epoch)



# --------------------------------------------------------------------------------------------------
# The recipe: `scratchllm finetune classify`


def prepare_splits(cfg: ClassifyConfig) -> tuple[Examples, Examples, Examples]:
    def read(path: str) -> Examples:
        return load_labelled(path, cfg.text_column, cfg.label_column, cfg.format, cfg.header)

    if cfg.data is None or cfg.data == "sms-spam":
        data = load_sms_spam(progress=cfg.progress)
    else:
        data = read(cfg.data)
    val = read(cfg.val) if cfg.val else None
    test = read(cfg.test) if cfg.test else None
    check_labels(data, [x for x in (val, test) if x is not None])  # one class, or unseen labels: fail early
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.balance == "undersample" and len(set(data.counts().values())) > 1:
        before = data.counts()
        data = undersample(data, split_seed)
        log(f"balance: undersampled {before} -> {data.counts()}")
    # The parts not given as files are carved from `data`, keeping their relative sizes.
    fractions = [cfg.split[0], 0.0 if val else cfg.split[1], 0.0 if test else cfg.split[2]]
    total = sum(fractions)
    train, val_part, test_part = stratified_split(data, [f / total for f in fractions], split_seed)
    train.source = f"{data.source} (train split)"
    val, test = val or val_part, test or test_part
    for name, part in (("validation", val), ("test", test)):
        if not len(part):
            raise ScratchLLMError(
                f"{data.source}: the {name} split is empty ({len(data)} examples); give more data or --{'val' if name == 'validation' else 'test'} FILE"
            )
    return train, val, test


def finetune_classifier(cfg: ClassifyConfig) -> dict[str, Any]:
    """Fine-tune a pretrained GPT as a classifier; returns (and writes to OUT/metrics.json) the report.

    Loads and balances the data, splits it, loads the model, swaps in a classification head, trains
    with the shared loop (evaluating once per epoch; OUT/best/ keeps the best validation
    accuracy, OUT/final/ the last model), then reports test accuracy, per-class precision, recall and
    F1 and the confusion matrix of the final model, and plots loss and accuracy per epoch.
    """
    if not cfg.epochs > 0:
        raise ScratchLLMError(f"epochs {cfg.epochs!r}: expected a number > 0")
    if cfg.batch_size < 1:
        raise ScratchLLMError(f"batch_size {cfg.batch_size!r}: expected an integer >= 1")
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ScratchLLMError(f"max_length {cfg.max_length!r}: expected an integer >= 1")
    t_start = time.perf_counter()
    out = Path(cfg.out)
    train, val, test = prepare_splits(cfg)
    labels = check_labels(train, [val, test])
    log(f"data: {len(train)} train {train.counts()}, {len(val)} validation {val.counts()}, "
         f"{len(test)} test {test.counts()}; labels {labels}")

    device = resolve_device(cfg.device)
    body, tokenizer = load(cfg.model, device=device, kind="gpt")
    if cfg.dropout is not None:
        _set_dropout(body, cfg.dropout)
    if cfg.lm_weight and not getattr(body.config, "causal", True):
        raise ScratchLLMError(f"lm_weight {cfg.lm_weight}: {cfg.model} is a bidirectional encoder; it has no next-token loss")
    torch.manual_seed(cfg.seed)  # the head's initial weights (and LoRA's A matrices)
    context = body.config.context_length
    max_length = min(cfg.max_length or context, context)
    model = Classifier(body, labels, cfg.pooling, tokenizer, max_length)
    n_train, n_total = model.set_trainable(cfg.trainable, cfg.lora_rank, cfg.lora_alpha)
    log(f"model: {cfg.model}, {len(labels)} classes, pooling {cfg.pooling}; trainable {cfg.trainable}: "
         f"{n_train:,} of {n_total:,} parameters ({100 * n_train / n_total:.2f}%)")

    index = {name: k for k, name in enumerate(labels)}
    encoded = {}
    for name, part in (("train", train), ("validation", val), ("test", test)):
        encoded[name] = (encode_texts(tokenizer, part.texts, max_length, f"{name} split"), [index[y] for y in part.labels])
    weight = class_weights(train.labels, labels) if cfg.balance == "weights" else None
    if weight is not None:
        log(f"balance: class weights {dict(zip(labels, [round(w, 4) for w in weight.tolist()]))}")
    task = ClassificationTask(*encoded["train"], *encoded["validation"], batch_size=cfg.batch_size,
                              pad_id=tokenizer.eot_id, device=device, seed=cfg.seed, weight=weight,
                              eval_batch_size=cfg.eval_batch_size, lm_weight=cfg.lm_weight)
    spe = task.steps_per_epoch
    max_steps = max(1, round(cfg.epochs * spe))
    train_cfg = TrainConfig(
        max_steps=max_steps, max_time=cfg.max_time, batch_size=cfg.batch_size, lr=cfg.lr,
        min_lr=cfg.lr if cfg.min_lr is None else cfg.min_lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, eval_every=spe, eval_batches=0,
        log_every=max(1, spe // 4), save_every=spe, keep_last=1, seed=cfg.seed, device=cfg.device,
        dtype=cfg.dtype, progress=cfg.progress, context_length=max_length,
    )
    log(f"schedule: {cfg.epochs:g} epochs x {spe} steps of {cfg.batch_size} texts = {max_steps} steps")
    extra = {"classification": {**{k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress")},
                                "labels": labels, "max_length": max_length, "steps_per_epoch": spe,
                                "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()}}}
    summary = fit(model, task, train_cfg, out, resume=cfg.resume, tokenizer=tokenizer, extra_config=extra)
    train_time = time.perf_counter() - t_start

    test_loss, test_metrics = evaluate_split(model, *encoded["test"], cfg.eval_batch_size, weight)
    # The final model is what `classify --model OUT` loads; best/ (highest validation accuracy, the
    # earliest on ties) is the early-stopping alternative, reported beside it.
    best_report = None
    if (out / "best" / HEAD_FILE).is_file():
        best, _ = load(out / "best", device=device, kind="classifier")
        info = read_model_config(out / "best").get("training", {})
        best_loss, best_metrics = evaluate_split(best, *encoded["test"], cfg.eval_batch_size, weight)
        best_report = {"epoch": info.get("epoch"), "val_accuracy": info.get("val_accuracy"),
                       "test_loss": best_loss, "test_accuracy": best_metrics["accuracy"]}
        del best
    report = {
        "model": cfg.model,
        "data": cfg.data or "sms-spam",
        "labels": labels,
        "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()},
        "trainable": cfg.trainable,
        "trainable_parameters": n_train,
        "parameters": n_total,
        "epochs": task.history,  # per evaluation: epoch, train/val loss and accuracy
        "test_loss": test_loss,
        "test": test_metrics,
        "best": best_report,  # the best/ checkpoint's epoch, validation and test accuracy
        "steps": summary["steps"],
        "stopped": summary["stopped"],
        "time_s": round(train_time, 1),
        "run_dir": str(out),
    }
    write_json(out / METRICS_FILE, report, ensure_ascii=True)
    plots = plot_epochs(task.history, out)
    log(f"wrote {out / METRICS_FILE}" + "".join(f", {p}" for p in plots) + f"; classifier in {out / 'final'}")
    return report


def _set_dropout(model: nn.Module, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ScratchLLMError(f"dropout {rate!r}: expected a number in [0, 1)")
    model.config.drop_rate = rate
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = rate
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = rate  # CausalSelfAttention keeps its attention-dropout rate as a float


def format_history(history: list[dict[str, float]]) -> str:
    """The per-epoch table: train/validation loss and accuracy."""
    lines = [f"{'epoch':>7}{'train loss':>12}{'train acc':>11}{'val loss':>10}{'val acc':>9}"]
    for r in history:
        tl = f"{r['train_loss']:.4f}" if "train_loss" in r else "-"
        ta = f"{100 * r['train_accuracy']:.2f}%" if "train_accuracy" in r else "-"
        lines.append(f"{r['epoch']:>7.2f}{tl:>12}{ta:>11}{r['val_loss']:>10.4f}{100 * r['val_accuracy']:>8.2f}%")
    return "\n".join(lines)


def plot_epochs(history: list[dict[str, float]], out: Path) -> list[Path]:
    """OUT/classify-loss.png and OUT/classify-accuracy.png: train and validation curves per epoch
    ([] when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log("note: matplotlib is not installed, so no plots (pip install matplotlib)")
        return []
    written = []
    for key, ylabel, name in (("loss", "cross-entropy loss", "classify-loss.png"),
                              ("accuracy", "accuracy", "classify-accuracy.png")):
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for split, style in (("train", "o-"), ("val", "s--")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in history if f"{split}_{key}" in r]
            if pts:
                ax.plot(*zip(*pts), style, label="train" if split == "train" else "validation", markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / name
        tmp = out / f".{name}.tmp-{os.getpid()}.png"
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
        written.append(path)
    return written

