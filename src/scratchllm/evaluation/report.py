"""Evaluation reports: the short table `scratchllm evaluate` prints (`format_report`) and the JSON file
(`write_report`). A report is the dict an evaluation returns, keyed by its "task"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchllm.core.files import check_overwrite, write_json


def write_report(report: dict[str, Any], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the report as indented JSON, atomically (temp file + rename); an existing `out` is an
    error unless `overwrite` (check_overwrite before the evaluation saves its time)."""
    check_overwrite(out, overwrite, "report file")
    return write_json(out, report, "report file")


def format_report(report: dict[str, Any]) -> str:
    """A short aligned table of a report's headline figures (what the CLI prints)."""
    task = report.get("task")
    lines: list[tuple[str, str]] = []
    if task == "perplexity":
        lines = [("source", report["source"]), ("context / stride", f"{report['context_length']} / {report['stride']}"),
                 ("tokens", f"{report['tokens']:,}"), ("bytes", f"{report['bytes']:,}"),
                 ("loss", f"{report['loss']:.4f}"), ("perplexity", f"{report['perplexity']:.3f}"),
                 ("bits per byte", "n/a" if report["bits_per_byte"] is None else f"{report['bits_per_byte']:.4f}")]
    elif task == "fewshot":
        lines = [("shots", str(report["shots"])), ("examples", f"{report['n']:,}"),
                 ("accuracy", f"{report['accuracy']:.4f}  ({report['correct']}/{report['n']})"),
                 ("macro F1", f"{report['macro']['f1']:.4f}"),
                 ("majority baseline", f"{report['majority_accuracy']:.4f}  ({report['majority_label']})"),
                 ("truncated prompts", str(report["truncated"])),
                 ("duplicates removed", "none (kept)" if report["duplicates"]["kept"] else str(report["duplicates"]["removed"]))]
    elif task == "choice":
        lines = [("examples", f"{report['n']:,}"), ("acc", f"{report['acc']:.4f}"),
                 ("acc_norm (chars)", f"{report['acc_norm']:.4f}"),
                 ("acc_norm (tokens)", f"{report['acc_norm_tokens']:.4f}"), ("chance", f"{report['chance']:.4f}"),
                 ("truncated", str(report["truncated"]))]
    else:
        lines = [(k, str(v)) for k, v in report.items() if isinstance(v, (int, float, str))]
    width = max(len(k) for k, _ in lines)
    out = [f"{task}: {report.get('data') or ''}".rstrip()] + [f"  {k:<{width}}  {v}" for k, v in lines]
    if task == "fewshot":
        labels = report["labels"]
        lw = max(5, *(len(label) for label in labels))
        out.append(f"  {'label':<{lw}}  precision  recall      f1  support")
        for label in labels:
            c = report["per_class"][label]
            out.append(f"  {label:<{lw}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
        matrix = report["confusion_matrix"]
        cw = max(lw, *(len(str(v)) for row in matrix for v in row))
        out.append("  confusion (rows true, columns predicted)")
        out.append("  " + " " * lw + "".join(f"  {label:>{cw}}" for label in labels))
        for label, row in zip(labels, matrix):
            out.append(f"  {label:<{lw}}" + "".join(f"  {v:>{cw}}" for v in row))
    return "\n".join(out)
