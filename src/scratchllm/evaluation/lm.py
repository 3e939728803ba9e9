"""Evaluating a language model in one call: `evaluate(task, model)` for a task object
(evaluation/tasks.py), and the keyword forms `evaluate_perplexity`, `evaluate_fewshot` and
`evaluate_choice`.

This sits after pretraining and fine-tuning in the pipeline. Every evaluation takes a model (a model
directory or name, or a loaded module with its tokenizer: runner.py `load_eval_model`) and returns a
JSON-able report dict; report.py's `format_report` renders the short table the CLI prints and
`write_report` saves the JSON. What each task computes lives in its module (perplexity, choice,
fewshot); the loop that scores them is runner.py's. The names a notebook needs are importable from here.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.choice import ChoiceEvaluation
from scratchllm.evaluation.fewshot import FewshotEvaluation
from scratchllm.evaluation.perplexity import PerplexityEvaluation, Stream, sliding_windows
from scratchllm.evaluation.report import format_report, write_report
from scratchllm.evaluation.runner import EvalModel, Evaluation, ModelSource, load_eval_model, run_evaluation
from scratchllm.evaluation.scoring import continuation_logprobs, encode_request, loglikelihood
from scratchllm.evaluation.tasks import ChoiceTask, FewshotTask, PerplexityTask
from scratchllm.tokenizer import Tokenizer

__all__ = ["ChoiceTask", "EvalModel", "FewshotTask", "PerplexityTask", "continuation_logprobs", "encode_request",
           "evaluate", "evaluate_choice", "evaluate_fewshot", "evaluate_perplexity", "format_report",
           "load_eval_model", "loglikelihood", "sliding_windows", "write_report"]

ScoredTask = PerplexityTask | ChoiceTask | FewshotTask
TokenizerSource = Tokenizer | str | os.PathLike[str] | None
Device = str | torch.device | None

# Each task's data class and the evaluation that runs it.
EVALUATIONS: dict[type, type[Evaluation]] = {PerplexityTask: PerplexityEvaluation, ChoiceTask: ChoiceEvaluation,
                                             FewshotTask: FewshotEvaluation}


def evaluate(task: ScoredTask, model: ModelSource, *, tokenizer: TokenizerSource = None, device: Device = "auto",
             dtype: str | torch.dtype | None = None, batch_size: int = 8, progress: bool = False,
             quantize: str | None = None) -> dict[str, Any]:
    """Run `task` on `model` and return its report.

    The task's data is read and checked first (bad input fails before a model loads), then the model
    is loaded (`load_eval_model`: a directory or name, or a module with its `tokenizer`), then its
    requests are scored, `batch_size` per forward pass.
    """
    if type(task) not in EVALUATIONS:
        raise ScratchLLMError(f"task {type(task).__name__}: expected one of "
                              f"{', '.join(t.__name__ for t in EVALUATIONS)}")
    evaluation = EVALUATIONS[type(task)](task)
    return run_evaluation(evaluation, load_eval_model(model, tokenizer, device, dtype, quantize), batch_size, progress)


def evaluate_perplexity(model: ModelSource, data: str | os.PathLike[str] | Stream, *, tokenizer: TokenizerSource = None,
                        context_length: int | None = None, stride: int | None = None, batch_size: int = 8,
                        max_tokens: int | None = None, device: Device = "auto", dtype: str | torch.dtype | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte of `model` on `data` (`PerplexityTask`).

    data: a UTF-8 text file (encoded whole, after the document start), a prepared data directory
    (its validation split), or any object with `len()` and `window(start, n)`.
    context_length defaults to the model's; stride to half of it. max_tokens caps the scored tokens.
    Bits per byte = total nats / scored UTF-8 bytes / ln 2 (special tokens count 0 bytes).
    """
    if isinstance(data, (str, os.PathLike)):
        return evaluate(PerplexityTask(data, context_length, stride, max_tokens), model, tokenizer=tokenizer,
                        device=device, dtype=dtype, batch_size=batch_size, progress=progress)
    task = PerplexityTask("<stream>", context_length, stride, max_tokens)
    return run_evaluation(PerplexityEvaluation(task, stream=data), load_eval_model(model, tokenizer, device, dtype),
                          batch_size, progress)


def evaluate_choice(model: ModelSource, data: str | os.PathLike[str], *, tokenizer: TokenizerSource = None,
                    limit: int | None = None, batch_size: int = 8, device: Device = "auto",
                    dtype: str | torch.dtype | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy on multiple-choice tasks, lm-evaluation-harness style (`ChoiceTask`).

    For each row, every choice is scored by log p(choice | context) summed over its tokens. acc takes
    the argmax of the raw sums, which favours short choices; acc_norm divides by the choice's length in
    characters (lm-eval's acc_norm; Gao et al. 2021) and acc_norm_tokens by its length in tokens.
    """
    return evaluate(ChoiceTask(data, limit), model, tokenizer=tokenizer, device=device, dtype=dtype,
                    batch_size=batch_size, progress=progress)


def evaluate_fewshot(model: ModelSource, data: str | os.PathLike[str], shots: int = 0, *,
                     tokenizer: TokenizerSource = None, batch_size: int = 8, device: Device = "auto",
                     dtype: str | torch.dtype | None = None, progress: bool = False, **task: Any) -> dict[str, Any]:
    """Classify the test split of `data` by prompting with `shots` labelled examples: `task` holds the
    other fields of `FewshotTask` (labels, seed, limit, template, train_fraction, ...), which checks them.

    The file is cut as `finetune classify` cuts it (data/labelled.py `split_examples`): labels checked,
    repeated texts dropped (one example per normalised text, copies with conflicting labels all gone)
    so that no query is also a shot, optionally balanced, then split per class into a pool of shots
    (train_fraction) and a test set, seeded; with `train_data` the whole of `data` is the test set and
    the shots come from `train_data`, less the texts that are in `data`. For each test example, `shots`
    examples are drawn without replacement from the pool, each rendered with the template and its
    label, joined by a blank line, and the query (template without label) follows. Every candidate
    " label" is scored by its summed log-likelihood; the argmax is the prediction. If the prompt does
    not fit the context, the examples part is left-truncated (the query is kept) and the example counts
    as truncated.
    """
    return evaluate(FewshotTask(data, shots, **task), model, tokenizer=tokenizer, device=device, dtype=dtype,
                    batch_size=batch_size, progress=progress)
