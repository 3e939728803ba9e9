"""`scratchllm evaluate TASK`: one sub-verb per evaluation task (perplexity, fewshot, choice, responses).

Every flag comes from a dataclass of evaluation/tasks.py: a task scored on a model composes
`EvaluateConfig` (the model, device, dtype and batch size), its task's fields and `ReportConfig` (the
JSON report file); `responses` composes `ResponsesTask` with `ReportConfig`. A task defined here registers itself with
@evaluate_task (the way verbs use @verb) and appears under `scratchllm evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from scratchllm.cli.base import add_config, add_group, parser_for, verb
from scratchllm.evaluation.tasks import (ChoiceTask, EvaluateConfig, FewshotTask, PerplexityTask, ReportConfig,
                                         ResponsesTask)

EVALUATE_TASKS: list[Callable[[argparse._SubParsersAction], None]] = []


def evaluate_task(add: Callable[[argparse._SubParsersAction], None]):
    """Register an `add_*(tasks)` function that adds one `scratchllm evaluate <task>` sub-verb."""
    EVALUATE_TASKS.append(add)
    return add


@verb('evaluate')
def add_evaluate(sub):
    add_group(sub, "evaluate", "Evaluate a model: perplexity, few-shot classification, multiple choice, responses.",
              "task", EVALUATE_TASKS)


def add_scored_task(tasks: argparse._SubParsersAction, name: str, task_class: type, help: str) -> None:
    """`scratchllm evaluate <name>`: the flags of EvaluateConfig, `task_class` and ReportConfig; runs
    evaluation/lm.py `evaluate`, prints the table and, with --out, writes the JSON report (whose path
    is checked before the evaluation starts: an existing file needs --overwrite)."""
    p = parser_for(tasks, name, help)
    run_flags = add_config(p, EvaluateConfig)
    task_flags = add_config(p, task_class)
    report_flags = add_config(p, ReportConfig)

    def run(args):
        from scratchllm.core.files import check_overwrite
        from scratchllm.evaluation.lm import evaluate
        from scratchllm.evaluation.report import format_report, write_report

        cfg = run_flags.config(args)
        task = task_flags.config(args)
        out = report_flags.config(args)
        if out.out:
            check_overwrite(out.out, out.overwrite, "report file")
        report = evaluate(task, cfg.model, device=cfg.device, dtype=cfg.dtype, quantize=cfg.quantize,
                          batch_size=cfg.batch_size, progress=sys.stderr.isatty())
        if out.out:
            write_report(report, out.out, overwrite=True)
        print(format_report(report))

    p.set_defaults(func=run)


@evaluate_task
def add_evaluate_perplexity(tasks):
    add_scored_task(tasks, "perplexity", PerplexityTask,
                    "Loss, perplexity and bits per byte on a text file or a data directory's val split (sliding window).")


@evaluate_task
def add_evaluate_fewshot(tasks):
    add_scored_task(tasks, "fewshot", FewshotTask,
                    "Classify by prompting with K labelled examples; accuracy, per-class figures, the prompt used.")


@evaluate_task
def add_evaluate_choice(tasks):
    add_scored_task(tasks, "choice", ChoiceTask,
                    "Multiple choice from JSONL (context, choices, label): acc and length-normalised acc_norm.")


@evaluate_task
def add_evaluate_responses(tasks):
    p = parser_for(tasks, "responses", "Score model responses: ROUGE-L F1, exact match, and optionally an LLM judge (0-100).")
    task_flags = add_config(p, ResponsesTask)
    report_flags = add_config(p, ReportConfig)

    def run(args):
        import os

        from scratchllm.evaluation.responses import evaluate_responses, format_evaluation

        task = task_flags.config(args)
        report = report_flags.config(args)
        result = evaluate_responses(task.data, judge_url=task.judge_url, judge_model=task.judge_model, out=report.out,
                                    timeout=task.timeout, api_key=os.environ.get("OPENAI_API_KEY"),
                                    progress=sys.stderr.isatty(), overwrite=report.overwrite)
        print(format_evaluation(result))

    p.set_defaults(func=run)
