"""Few-shot classification: classification by prompting (Brown et al. 2020, "Language Models are
Few-Shot Learners"). K labelled examples, then the query; each candidate label is scored by its
log-likelihood as the continuation and the most likely one is the prediction.

The labelled file is read and cut by data/labelled.py, the reader and `split_examples` that
`finetune classify` uses (label checks, de-duplication, balancing, the seeded stratified split), so
that the same settings test both on the same texts; the report is evaluation/metrics.py's
classification report.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scratchllm.data.labelled import Examples, load_labelled, split_examples
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.metrics import classification_report
from scratchllm.evaluation.runner import EvalModel, Evaluation, Request
from scratchllm.evaluation.tasks import FewshotTask

SHOT_SEPARATOR = "\n\n"


def format_shot(template: str, text: str, label: str | None = None) -> str:
    """One example in the prompt: the template with {text} filled, then " label" for a shot."""
    filled = template.replace("{text}", text)
    return filled if label is None else f"{filled} {label}"


@dataclass
class FewshotPrompt:
    """One test example as the model sees it: the shots drawn for it, the prompt, and the context ids
    (the prompt's, left-truncated to fit when `truncated`)."""

    text: str
    label: str
    shots: list[tuple[str, str]]
    prompt: str
    context: list[int]
    truncated: bool


def read_examples(task: FewshotTask, path: str) -> Examples:
    """A labelled file with the task's columns (unset: 'text' and 'label', else the SMS layout)."""
    return load_labelled(path, "text" if task.text_column is None else task.text_column,
                         "label" if task.label_column is None else task.label_column)


class FewshotEvaluation(Evaluation):
    """A `FewshotTask` with its file read and cut into a pool of shots and a test set."""

    name = "fewshot"

    def __init__(self, task: FewshotTask) -> None:
        self.task = task
        examples = read_examples(task, task.data)
        balance = task.balance == "undersample"
        if task.train_data is not None:
            # All of `data` is tested; the pool is train_data, less the texts that are in `data`.
            cut = split_examples(read_examples(task, task.train_data), (1.0, 0.0, 0.0), task.seed, test=examples,
                                 keep_duplicates=task.keep_duplicates, balance=balance, labels=task.labels)
            self.split = "train_data"
        else:
            fractions = (task.train_fraction, task.val_fraction, 1.0 - task.train_fraction - task.val_fraction)
            cut = split_examples(examples, fractions, task.seed, keep_duplicates=task.keep_duplicates,
                                 balance=balance, labels=task.labels)
            shares = "/".join(f"{f:g}" for f in (fractions if task.val_fraction else fractions[::2]))
            self.split = f"stratified {shares} (seed {task.seed})" + (", undersampled" if balance else "")
        self.duplicates: dict[str, Any] = {"kept": task.keep_duplicates}
        if cut.duplicates is not None:
            self.duplicates.update(asdict(cut.duplicates), removed=cut.duplicates.removed)
        self.labels = cut.labels
        self.pool = list(zip(cut.train.texts, cut.train.labels))
        self.test = list(zip(cut.test.texts, cut.test.labels))[:task.limit]
        if task.shots > len(self.pool):
            raise ScratchLLMError(f"shots {task.shots}: the train split has only {len(self.pool)} examples")
        if not self.test:
            raise ScratchLLMError(f"data file {task.data}: no test examples after the split")

    def requests(self, model: EvalModel) -> list[Request]:
        tokenizer, max_length, template = model.tokenizer, model.context_length, self.task.template
        self.candidates = [f" {label}" for label in self.labels]
        cand_ids = [tokenizer.encode(c, disallowed_special=()) for c in self.candidates]
        self.longest = longest = max(map(len, cand_ids))
        rng = random.Random(self.task.seed)
        self.prompts = []
        for text, label in self.test:
            drawn = rng.sample(self.pool, self.task.shots) if self.task.shots else []
            examples = "".join(format_shot(template, t, lab) + SHOT_SEPARATOR for t, lab in drawn)
            query = format_shot(template, text)
            # The prompt is encoded as one string (so its ids are exactly those of the reported text);
            # only when it is too long are the examples and the query encoded apart, and the examples
            # left-truncated to the room the query and the longest label leave.
            context = tokenizer.encode(examples + query, disallowed_special=())
            truncated = False
            if len(context) + longest > max_length + 1:
                shot_ids = tokenizer.encode(examples, disallowed_special=()) if examples else []
                query_ids = tokenizer.encode(query, disallowed_special=())
                room = max(0, max_length + 1 - longest - len(query_ids))
                truncated = len(shot_ids) > room or len(query_ids) + longest > max_length + 1
                context = shot_ids[max(0, len(shot_ids) - room):] if room else []
                context += query_ids  # still too long only if the query alone is: then it loses its start
            self.prompts.append(FewshotPrompt(text, label, drawn, examples + query, context, truncated))
        return [Request(p.context, cand_ids) for p in self.prompts]

    def report(self, model: EvalModel, scores: list[list[dict[str, Any]]]) -> dict[str, Any]:
        truth, predicted, records = [], [], []
        for i, (prompt, scored) in enumerate(zip(self.prompts, scores)):
            logprobs = [s["logprob"] for s in scored]
            guess = self.labels[int(np.argmax(logprobs))]
            truth.append(prompt.label)
            predicted.append(guess)
            records.append({"index": i, "text": prompt.text, "label": prompt.label, "predicted": guess,
                            "logprobs": dict(zip(self.labels, logprobs)), "truncated": prompt.truncated})
        metrics = classification_report(truth, predicted, self.labels)
        majority = max(self.labels, key=truth.count)
        return {
            "data": self.task.data,
            "shots": self.task.shots,
            "seed": self.task.seed,
            "split": self.split,
            "duplicates": self.duplicates,  # removed before splitting (or from the train_data pool)
            "train_examples": len(self.pool),
            "labels": self.labels,
            "candidates": self.candidates,
            "template": self.task.template,
            "separator": SHOT_SEPARATOR,
            "context_length": model.context_length,
            "truncated": sum(p.truncated for p in self.prompts),
            **metrics,
            "majority_label": majority,
            "majority_accuracy": truth.count(majority) / len(truth),
            "first_example": self.first_example(model),
            "predictions": records,
        }

    def first_example(self, model: EvalModel) -> dict[str, Any]:
        """The first test example's shots and the exact prompt the model read before the label."""
        first = self.prompts[0]
        seen = first.context[-max(1, model.context_length + 1 - self.longest):]
        return {"text": first.text, "label": first.label, "shots": [{"text": t, "label": lab} for t, lab in first.shots],
                "prompt": first.prompt if not first.truncated else model.tokenizer.decode(seen),
                "prompt_tokens": len(seen), "truncated": first.truncated}
