"""Classification fine-tuning (`scratchllm finetune classify`): a pretrained GPT becomes a text classifier.

    labelled file -> load_labelled -> drop duplicate texts -> balance (undersample)
    -> stratified split 70/10/20 -> encode (truncate to the context)
    -> Classifier (GPT body + head on the last real token) -> ClassificationTask on the shared loop,
       stopped early on validation loss -> test report (accuracy, per-class F1, confusion matrix)

The model is models/classifier.py, the data data/labelled.py and the report evaluation/metrics.py;
here: `ClassificationTask` (the task interface of the loop) and `finetune_classifier`, the recipe,
which takes a recipes/config.py `ClassifyConfig` whole (its labelled data, LoRA and training groups).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.checkpoint.kinds import HEAD_FILE
from scratchllm.checkpoint.loader import load
from scratchllm.checkpoint.model_dir import read_model_config
from scratchllm.core.console import log, warn
from scratchllm.core.device import resolve_device
from scratchllm.core.files import write_json
from scratchllm.core.options import flat_values, option_fields
from scratchllm.data.duplicates import NEAR_COPY_SIMILARITY
from scratchllm.data.labelled import (Examples, check_labels, class_weights, load_labelled, load_sms_spam, overlap,
                                      split_examples)
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.metrics import classification_report
from scratchllm.models.classifier import Classifier, encode_texts, pad_batch
from scratchllm.recipes.config import ClassifyConfig
from scratchllm.training.loop import Task, fit
from scratchllm.training.run_dir import read_run_config

METRICS_FILE = "metrics.json"
# What run_config.json records under "classification": the options of `finetune classify`, by flag name.
CLASSIFICATION_RECORD = frozenset(f.name for f in option_fields(ClassifyConfig)) - {"resume"}

# How texts are compared (data/duplicates.py), for the log.
SAME_TEXT = f"numbers, codes and web addresses masked, near-copies {NEAR_COPY_SIMILARITY:.0%} alike word for word"

# The book's learning rate for GPT-2 small (Raschka 2024, ch. 6), and that model's width.
BOOK_LR, BOOK_WIDTH = 5e-5, 768


def default_trainable(width: int) -> str:
    """What trains unless --trainable says: the last block (+ final norm + head) from GPT-2 small's width up,
    the book's choice for GPT-2; every weight of a narrower model. A small base's frozen features are
    the bottleneck: from a 4 x 128 base pretrained 300 steps on tinyshakespeare, the last block reaches
    81.6% validation accuracy on SMS spam (3 seeds) and all weights 93.8% (10 seeds) at the same lr
    (docs/LOG.md, 2026-12-08), and training them all costs little at that size."""
    return "last-block" if width >= BOOK_WIDTH else "all"


def default_min_lr(width: int, lr: float) -> float:
    """Where the rate ends unless --min-lr says: lr itself (the book's constant rate) from GPT-2 small's
    width up; a cosine decay to lr / 10 for a narrower model, whose weights all train (default_trainable).
    From the 4 x 128 base above, all weights at 3e-4: 93.8% validation accuracy constant, 95.6% decayed
    to 3e-5, with the lowest validation loss of the sweep (10 seeds each; docs/LOG.md, 2026-12-08)."""
    return lr if width >= BOOK_WIDTH else lr / 10


def default_lr(width: int) -> float:
    """5e-5 x 768 / width: the book's rate at GPT-2's width, inversely proportional to the width
    elsewhere. With Adam every weight moves by about lr per step, so a layer's output moves by about
    lr x fan-in; keeping that constant across widths is muP's rule for hidden matrices (Yang et al.
    2022, "Tensor Programs V"). At 128 wide this gives 3e-4 (docs/LOG.md has the measurements)."""
    return BOOK_LR * BOOK_WIDTH / width



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

    best_metric = "val_loss"  # smoother than accuracy on a few hundred texts: early stopping reads it
    higher_is_better = False

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


class Splits(NamedTuple):
    """The three parts `finetune classify` uses, and what removing duplicates did (for metrics.json)."""

    train: Examples
    val: Examples
    test: Examples
    duplicates: dict[str, Any]


def prepare_splits(cfg: ClassifyConfig) -> Splits:
    """Read the data, drop duplicate texts (unless keep_duplicates), balance, split 70/10/20.

    The cut is data/labelled.py's `split_examples` (the one `evaluate fewshot` uses too): duplicates go
    before balancing and splitting, so that no text is on two sides of the split (one example per group
    of copies and near-copies, data/duplicates.py; groups that disagree on the label are all dropped; no
    training example that copies a text of a given --val/--test file). Here: what was done is logged, and the overlap of the final
    splits with train is counted either way (0 unless duplicates were kept).
    """
    labelled = cfg.labelled

    def read(path: str) -> Examples:
        return load_labelled(path, labelled.text_column, labelled.label_column, labelled.format, labelled.header)

    if labelled.data is None or labelled.data == "sms-spam":
        data = load_sms_spam(progress=cfg.train.progress)
    else:
        data = read(labelled.data)
    given = {"val": read(labelled.val) if labelled.val else None, "test": read(labelled.test) if labelled.test else None}
    split_seed = cfg.train.seed if labelled.split_seed is None else labelled.split_seed
    cut = split_examples(data, labelled.split, split_seed, **given, keep_duplicates=labelled.keep_duplicates,
                         balance=labelled.balance == "undersample")
    train, val, test = cut.train, cut.val, cut.test
    duplicates: dict[str, Any] = {"kept": labelled.keep_duplicates, "examples": cut.read}
    if cut.duplicates is None:
        duplicates["repeats"] = cut.repeats
        log(f"duplicates: kept (--keep-duplicates); {cut.repeats} of {cut.read} examples copy or nearly copy "
            f"an earlier text ({SAME_TEXT})")
    else:
        stats = cut.duplicates
        duplicates.update(asdict(stats), removed=stats.removed)
        held = f", {stats.held_out} whose text is in --val/--test" if any(given.values()) else ""
        left = cut.read - stats.removed
        log(f"duplicates: removed {stats.removed} of {cut.read} examples ({stats.repeated} repeats and "
            f"{stats.near} near-copies of an earlier text: {SAME_TEXT}; {stats.conflicting} copies of "
            f"{stats.conflicting_texts} texts with conflicting labels{held}); {left} left (--keep-duplicates keeps them)")
    if cut.balanced is not None:
        log(f"balance: undersampled {cut.balanced[0]} -> {cut.balanced[1]}")
    for name, part in (("validation", val), ("test", test)):
        if not len(part):
            raise ScratchLLMError(
                f"{data.source}: the {name} split is empty ({cut.carved} examples); give more data or --{'val' if name == 'validation' else 'test'} FILE"
            )
    duplicates["overlap"] = {"validation_in_train": overlap(train, val), "test_in_train": overlap(train, test),
                             "test_in_validation": overlap(val, test)}
    if any(duplicates["overlap"].values()):
        o = duplicates["overlap"]
        warn(f"texts on two sides of the split (copies or near-copies): {o['validation_in_train']} of {len(val)} validation "
             f"and {o['test_in_train']} of {len(test)} test texts are in train, {o['test_in_validation']} test texts "
             "in validation")
    return Splits(train, val, test, duplicates)


def resumed_choices(cfg: ClassifyConfig, out: Path) -> dict[str, Any]:
    """What the run that --resume continues recorded for the options whose default depends on the width
    and that were not given now (`trainable`, `min_lr`): its checkpoint's optimizer state fits only the
    weights it trained. A run from before those defaults recorded trainable as chosen then and min_lr
    None (a constant rate); {} without --resume or a recorded run."""
    if not cfg.resume:
        return {}
    record = (read_run_config(out) or {}).get("classification") or {}
    found: dict[str, Any] = {}
    if cfg.trainable is not None and record.get("trainable") not in (None, cfg.trainable):
        raise ScratchLLMError(f"--trainable {cfg.trainable}: the run in {out} trained {record['trainable']}, and its "
                              f"optimizer state fits only those weights; resume with --trainable "
                              f"{record['trainable']} (or leave it out), or start a new --out")
    if cfg.trainable is None and record.get("trainable"):
        found["trainable"] = record["trainable"]
    if cfg.train.min_lr is None and "min_lr" in record:
        found["min_lr"] = record["min_lr"]
    return found


def finetune_classifier(cfg: ClassifyConfig) -> dict[str, Any]:
    """Fine-tune a pretrained GPT as a classifier; returns (and writes to OUT/metrics.json) the report.

    Loads the data, drops duplicate texts, balances and splits it, loads the model, swaps in a
    classification head, trains with the shared loop (evaluating once per epoch; OUT/best/ keeps the
    lowest validation loss; with patience the run stops after that many epochs without a lower one and
    OUT/final/ gets best/'s weights, else OUT/final/ is the last model), then reports test accuracy,
    per-class precision, recall and F1 and the confusion matrix of final/, and plots loss and accuracy
    per epoch.
    """
    if not cfg.epochs > 0:
        raise ScratchLLMError(f"epochs {cfg.epochs!r}: expected a number > 0")
    if cfg.max_length is not None and cfg.max_length < 1:
        raise ScratchLLMError(f"max_length {cfg.max_length!r}: expected an integer >= 1")
    t_start = time.perf_counter()
    out = Path(cfg.out)
    train, val, test, duplicates = prepare_splits(cfg)
    labels = check_labels(train, [val, test])
    log(f"data: {len(train)} train {train.counts()}, {len(val)} validation {val.counts()}, "
         f"{len(test)} test {test.counts()}; labels {labels}")

    device = resolve_device(cfg.train.device)
    body, tokenizer = load(cfg.model, device=device, kind="gpt", decode=False)
    if cfg.dropout is not None:
        _set_dropout(body, cfg.dropout)
    if cfg.lm_weight and not getattr(body.config, "causal", True):
        raise ScratchLLMError(f"lm_weight {cfg.lm_weight}: {cfg.model} is a bidirectional encoder; it has no next-token loss")
    width = body.config.emb_dim
    given_lr = cfg.train.lr
    lr = given_lr if given_lr is not None else default_lr(width)
    log(f"lr: {lr:.3g}" + (" (--lr)" if given_lr is not None else f" = {BOOK_LR:g} x {BOOK_WIDTH} / width {width} (--lr sets it)"))
    resumed = resumed_choices(cfg, out)
    default_why = f"the default at width {width}: constant from {BOOK_WIDTH} up, else lr / 10"
    if cfg.train.min_lr is not None:
        min_lr = cfg.train.min_lr
    elif "min_lr" in resumed:  # None: a run from before this default, at the then constant rate
        min_lr, default_why = resumed["min_lr"] if resumed["min_lr"] is not None else lr, "as the resumed run chose"
    else:
        min_lr = default_min_lr(width, lr)
    if cfg.train.min_lr is None:
        log(f"min_lr: {min_lr:.3g}, " + ("constant" if min_lr == lr else "cosine decay from lr") +
            f" ({default_why}; --min-lr sets it)")
    torch.manual_seed(cfg.train.seed)  # the head's initial weights (and LoRA's A matrices)
    context = body.config.context_length
    max_length = min(cfg.max_length or context, context)
    model = Classifier(body, labels, cfg.pooling, tokenizer, max_length)
    trainable = cfg.trainable or resumed.get("trainable") or default_trainable(width)
    if cfg.trainable is None:
        why = ("as the resumed run chose" if "trainable" in resumed
               else f"the default at width {width}: last-block from {BOOK_WIDTH} up, else all")
        log(f"trainable: {trainable} ({why}; --trainable sets it)")
    n_train, n_total = model.set_trainable(trainable, cfg.lora.rank, cfg.lora.alpha)
    log(f"model: {cfg.model}, {len(labels)} classes, pooling {cfg.pooling}; trainable {trainable}: "
         f"{n_train:,} of {n_total:,} parameters ({100 * n_train / n_total:.2f}%)")

    index = {name: k for k, name in enumerate(labels)}
    encoded = {}
    for name, part in (("train", train), ("validation", val), ("test", test)):
        encoded[name] = (encode_texts(tokenizer, part.texts, max_length, f"{name} split"), [index[y] for y in part.labels])
    weight = class_weights(train.labels, labels) if cfg.labelled.balance == "weights" else None
    if weight is not None:
        log(f"balance: class weights {dict(zip(labels, [round(w, 4) for w in weight.tolist()]))}")
    task = ClassificationTask(*encoded["train"], *encoded["validation"], batch_size=cfg.train.batch_size,
                              pad_id=tokenizer.eot_id, device=device, seed=cfg.train.seed, weight=weight,
                              eval_batch_size=cfg.eval_batch_size, lm_weight=cfg.lm_weight)
    spe = task.steps_per_epoch
    max_steps = max(1, round(cfg.epochs * spe))
    # One evaluation and one checkpoint per epoch; the rate decays over all epochs' steps (patience may stop earlier).
    train_cfg = replace(cfg.train.derive(max_steps=max_steps, lr=lr, min_lr=min_lr), eval_every=spe, eval_batches=0,
                        log_every=max(1, spe // 4), save_every=spe, keep_last=1, context_length=max_length)
    stop = f", stopping after {train_cfg.patience} without a lower validation loss" if train_cfg.patience else ""
    log(f"schedule: at most {cfg.epochs:g} epochs x {spe} steps of {train_cfg.batch_size} texts = "
        f"{train_cfg.max_steps} steps{stop}")
    recorded = flat_values(cfg)  # the options as flags name them (--lr, --lora-rank), as earlier runs recorded them
    extra = {"classification": {**{k: v for k, v in recorded.items() if k in CLASSIFICATION_RECORD},
                                "lr": lr, "min_lr": min_lr, "trainable": trainable, "labels": labels, "max_length": max_length,
                                "steps_per_epoch": spe,
                                "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()},
                                "duplicates": duplicates}}
    summary = fit(model, task, train_cfg, out, resume=cfg.resume, tokenizer=tokenizer, extra_config=extra)
    train_time = time.perf_counter() - t_start

    test_loss, test_metrics = evaluate_split(model, *encoded["test"], cfg.eval_batch_size, weight)
    # The final model is what `classify --model OUT` loads. best/ (lowest validation loss, the earliest
    # on ties) is reported beside it; with patience, final/ holds best/'s weights.
    best_report = None
    if (out / "best" / HEAD_FILE).is_file():
        info = read_model_config(out / "best").get("training", {})
        best_report = {"epoch": info.get("epoch"), "val_loss": info.get("val_loss"),
                       "val_accuracy": info.get("val_accuracy"), "test_loss": test_loss,
                       "test_accuracy": test_metrics["accuracy"]}
        if summary["restored_best"] is None:
            best, _ = load(out / "best", device=device, kind="classifier")
            best_loss, best_metrics = evaluate_split(best, *encoded["test"], cfg.eval_batch_size, weight)
            best_report.update(test_loss=best_loss, test_accuracy=best_metrics["accuracy"])
            del best
    restored = summary["restored_best"]
    finished = summary["stopped"] in ("max_steps", "max_time", "patience")
    final_epoch = restored.get("epoch") if restored else (task.history[-1]["epoch"] if finished and task.history else None)
    report = {
        "model": cfg.model,
        "data": cfg.labelled.data or "sms-spam",
        "labels": labels,
        "counts": {"train": train.counts(), "validation": val.counts(), "test": test.counts()},
        "duplicates": duplicates,  # what was removed before splitting, and the splits' overlap with train
        "lr": lr,
        "min_lr": min_lr,
        "trainable": trainable,
        "trainable_parameters": n_train,
        "parameters": n_total,
        "epochs": task.history,  # per evaluation: epoch, train/val loss and accuracy
        "test_loss": test_loss,
        "test": test_metrics,
        "best": best_report,  # the best/ checkpoint's epoch, validation loss and accuracy, test accuracy
        "final_epoch": final_epoch,  # the epoch whose weights final/ holds (None: stopped by a signal, no final/)
        "steps": summary["steps"],
        "stopped": summary["stopped"],  # max_steps (all epochs), patience (early), max_time or a signal
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
            m.dropout = rate  # ScaledDotProductAttention keeps its attention-dropout rate as a float


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

