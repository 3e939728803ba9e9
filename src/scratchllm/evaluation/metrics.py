"""The one classification report: accuracy, per-class precision / recall / F1, their macro averages
and the confusion matrix, and the table that prints it. `finetune classify` (test split) and
`evaluate fewshot` both report with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scratchllm.errors import ScratchLLMError


def classification_report(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Scores of `predicted` labels against `truth` (both label names, from `labels`).

    Returns {"n", "correct", "accuracy", "per_class": {label: {"precision", "recall", "f1",
    "support"}}, "macro": {"precision", "recall", "f1"}, "labels", "confusion_matrix"}, the matrix's
    rows being the true label and its columns the predicted one, both in `labels` order. A class
    never predicted (or absent) has precision (or recall) 0.
    """
    labels = [str(label) for label in labels]
    pos = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        if t not in pos or p not in pos:
            bad = t if t not in pos else p
            raise ScratchLLMError(f"label {bad!r} is not one of the labels {', '.join(labels)}")
        matrix[pos[t]][pos[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted_i = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(truth)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    k = max(len(labels), 1)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "per_class": per_class,
        "macro": {m: sum(c[m] for c in per_class.values()) / k for m in ("precision", "recall", "f1")},
        "labels": labels,
        "confusion_matrix": matrix,
    }


def format_classification(m: dict[str, Any], title: str = "test") -> str:
    """A plain-text table: accuracy, precision / recall / F1 per class and their macro average, and
    the confusion matrix."""
    labels = m["labels"]
    w = max(10, *(len(x) + 2 for x in labels))
    lines = [f"{title} accuracy: {100 * m['accuracy']:.2f}% ({m['correct']}/{m['n']})", ""]
    lines.append(f"{'class':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, v in m["per_class"].items():
        lines.append(f"{name:<{w}}{v['precision']:>10.4f}{v['recall']:>10.4f}{v['f1']:>10.4f}{v['support']:>10d}")
    mac = m["macro"]
    lines.append(f"{'macro avg':<{w}}{mac['precision']:>10.4f}{mac['recall']:>10.4f}{mac['f1']:>10.4f}{m['n']:>10d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cw = max(8, *(len(x) + 2 for x in labels))
    lines.append(" " * w + "".join(f"{x:>{cw}}" for x in labels))
    for name, row in zip(labels, m["confusion_matrix"]):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)
