"""Multiple choice (HellaSwag/ARC-style JSONL) scored the way lm-evaluation-harness scores
`loglikelihood` requests: the summed log-probability of each choice given the context, raw (acc) and
divided by the choice's length in characters (acc_norm; Gao et al. 2021) or in tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.core.files import json_lines, read_text
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.runner import EvalModel, Evaluation, Request
from scratchllm.evaluation.scoring import encode_request
from scratchllm.evaluation.tasks import ChoiceTask


def read_choice_tasks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Multiple-choice rows {"context": str, "choices": [str, ...], "label": int} from a JSONL file."""
    path = Path(path)
    raw = read_text(path, "data file")
    tasks = []
    for num, obj in json_lines(raw, path):
        where = f"{path} line {num}"
        if not isinstance(obj, dict):
            raise ScratchLLMError(f"{where}: expected a JSON object with context, choices, label")
        for key in ("context", "choices", "label"):
            if key not in obj:
                raise ScratchLLMError(f"{where}: missing field {key!r}")
        context, choices, label = obj["context"], obj["choices"], obj["label"]
        if not isinstance(context, str):
            raise ScratchLLMError(f"{where}: field 'context' must be a string, got {type(context).__name__}")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ScratchLLMError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings, "
                                  f"got {json.dumps(choices)[:60]}")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise ScratchLLMError(f"{where}: field 'label' must be an index 0..{len(choices) - 1}, got {label!r}")
        tasks.append({"context": context, "choices": choices, "label": label})
    if not tasks:
        raise ScratchLLMError(f"data file {path}: empty, expected JSON lines with context, choices, label")
    return tasks


class ChoiceEvaluation(Evaluation):
    """A `ChoiceTask` with its rows read: one request per row, its choices the continuations."""

    name = "choice"

    def __init__(self, task: ChoiceTask) -> None:
        self.task = task
        self.rows = read_choice_tasks(task.data)[:task.limit]

    def requests(self, model: EvalModel) -> list[Request]:
        return [Request(*encode_request(model.tokenizer, row["context"], row["choices"])) for row in self.rows]

    def report(self, model: EvalModel, scores: list[list[dict[str, Any]]]) -> dict[str, Any]:
        hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
        records, n_truncated = [], 0
        for i, (row, scored) in enumerate(zip(self.rows, scores)):
            ll = np.array([s["logprob"] for s in scored])
            chars = np.array([len(c) for c in row["choices"]])
            ntok = np.array([s["tokens"] for s in scored])
            picks = {"acc": int(np.argmax(ll)), "acc_norm": int(np.argmax(ll / chars)),
                     "acc_norm_tokens": int(np.argmax(ll / ntok))}
            for key, pick in picks.items():
                hits[key] += pick == row["label"]
            truncated = any(s["truncated"] for s in scored)
            n_truncated += truncated
            records.append({"index": i, "label": row["label"], **{f"pred_{k}": v for k, v in picks.items()},
                            "logprobs": ll.tolist(), "tokens": ntok.tolist(), "truncated": truncated})
        n = len(self.rows)
        return {
            "data": self.task.data,
            "n": n,
            **{key: count / n for key, count in hits.items()},
            "correct": hits,
            "chance": float(np.mean([1 / len(row["choices"]) for row in self.rows])),
            "truncated": n_truncated,
            "context_length": model.context_length,
            "predictions": records,
        }
