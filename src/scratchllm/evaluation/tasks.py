"""What each evaluation task is, as data: one dataclass per task (`PerplexityTask`, `ChoiceTask`,
`FewshotTask`, `ResponsesTask`), and the options every `scratchllm evaluate` task shares
(`EvaluateConfig`: the model and how it runs; `ReportConfig`: the JSON report file).

A task is its data file and the settings that change its figures; the runner (evaluation/runner.py)
and the task's module (perplexity, choice, fewshot) do the work. `scratchllm evaluate TASK` builds its
flags from these fields (type, default and the help text below each field). Torch-free, so
`scratchllm --help` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from scratchllm.checkpoint.config import LoadConfig
from scratchllm.core.options import check_fields
from scratchllm.errors import ScratchLLMError


def _at_least(value: int | float | None, low: int, what: str) -> None:
    if value is not None and value < low:
        raise ScratchLLMError(f"{what} {value}: expected at least {low}")


@dataclass(kw_only=True)
class ReportConfig:
    """Where the full JSON report goes."""

    out: str | None = None
    """write the full JSON report here (default: print the table only)"""
    overwrite: bool = False
    """replace an existing --out file"""

    def __post_init__(self) -> None:
        check_fields(self, "report")


@dataclass(kw_only=True)
class EvaluateConfig(LoadConfig):
    """The model an `evaluate` task scores (as `LoadConfig` loads it) and how many requests share a forward
    pass."""

    batch_size: int = 8
    """requests per forward pass: perplexity windows, or examples (with all their candidates)"""

    def __post_init__(self) -> None:
        check_fields(self, "evaluate")
        _at_least(self.batch_size, 1, "batch_size")


@dataclass
class PerplexityTask:
    """Loss, perplexity and bits per byte on a text, scored with a sliding window."""

    data: str
    """UTF-8 text file, or a prepared data directory (its val split)"""
    context_length: int | None = None
    """window length (default: the model's)"""
    stride: int | None = None
    """new tokens scored per window (default: half the window)"""
    max_tokens: int | None = None
    """score at most this many tokens"""

    def __post_init__(self) -> None:
        self.data = os.fspath(self.data) if isinstance(self.data, os.PathLike) else self.data
        check_fields(self, "perplexity task")
        for name in ("context_length", "stride", "max_tokens"):
            _at_least(getattr(self, name), 1, name)


@dataclass
class ChoiceTask:
    """Multiple choice (HellaSwag/ARC style), scored as lm-evaluation-harness scores it."""

    data: str
    """JSONL, one task a line: {"context": str, "choices": [str, ...], "label": int}"""
    limit: int | None = None
    """evaluate only the first N tasks"""

    def __post_init__(self) -> None:
        self.data = os.fspath(self.data) if isinstance(self.data, os.PathLike) else self.data
        check_fields(self, "choice task")
        _at_least(self.limit, 1, "limit")


DEFAULT_TEMPLATE = "Message: {text}\nLabel:"


@dataclass
class FewshotTask:
    """Classification by prompting with K labelled examples (Brown et al. 2020), on the test part of a
    labelled file cut as `finetune classify` cuts it (data/labelled.py `split_examples`)."""

    data: str
    """labelled examples: .tsv (label<TAB>text, no header, as the SMS spam file), .csv or .jsonl"""
    shots: int = 0
    """labelled examples in each prompt (K)"""
    seed: int = 0
    """seed of the balancing, the train/test split and the shots drawn"""
    text_column: str | None = None
    """text column: a 0-based index (no header) or a header name / JSON key; None means 'text' if the header
    has it, else column 1"""
    label_column: str | None = None
    """label column, as --text-column; None means 'label' if the header has it, else column 0"""
    labels: str | list[str] | None = None
    """candidate labels in order, comma-separated, e.g. 'ham,spam'; None means those in the data, sorted"""
    limit: int | None = None
    """evaluate only the first N test examples"""
    template: str = "Message: {text}\\nLabel:"
    """one example; {text} is replaced, the label follows after a space; \\n means newline"""
    train_fraction: float = 0.7
    """share of each class used as the pool of shots"""
    val_fraction: float = 0.0
    """share of each class set aside unused (with 0.1, --seed 123 and --balance undersample the test split is
    the one `finetune classify` tests on by default)"""
    balance: Literal["none", "undersample"] = "none"
    """undersample: keep a seeded random min(class count) of each class before splitting, as `finetune
    classify` does"""
    train_data: str | None = None
    """draw shots from this file instead, and test on all of --data"""
    keep_duplicates: bool = False
    """keep repeated texts (default: one example per text before splitting, as finetune classify compares
    them: numbers, codes and web addresses masked, near-copies 90% alike word for word; with --train-data,
    shots that copy a text of --data go)"""

    def __post_init__(self) -> None:
        for name in ("data", "train_data"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        for name in ("text_column", "label_column"):  # a position may be given as a number
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, str(value))
        if isinstance(self.labels, tuple):
            self.labels = list(self.labels)
        check_fields(self, "fewshot task")
        if isinstance(self.labels, str):
            self.labels = [label.strip() for label in self.labels.split(",")]
        # As on the command line: "\n" and "\t" written out mean a newline and a tab.
        self.template = self.template.replace("\\n", "\n").replace("\\t", "\t")
        if "{text}" not in self.template:
            raise ScratchLLMError(f"template {self.template!r}: must contain {{text}} where the example text goes")
        if self.shots < 0:
            raise ScratchLLMError(f"shots {self.shots!r}: expected an integer >= 0")
        _at_least(self.limit, 1, "limit")
        if self.train_data is None and not (0.0 < self.train_fraction < 1.0 and 0.0 <= self.val_fraction
                                            and self.train_fraction + self.val_fraction < 1.0):
            raise ScratchLLMError(f"train_fraction {self.train_fraction}, val_fraction {self.val_fraction}: expected "
                                  "train_fraction in (0, 1), val_fraction >= 0, and a sum below 1 (the rest is the "
                                  "test split)")


@dataclass
class ResponsesTask:
    """Scores of model responses against references (ROUGE-L F1, exact match), and optionally an LLM
    judge's (evaluation/responses.py `evaluate_responses`)."""

    data: str
    """responses JSON from `scratchllm respond` (records with output and model_response)"""
    judge_url: str | None = None
    """OpenAI-compatible server, e.g. http://localhost:11434 (Ollama)"""
    judge_model: str | None = None
    """the judge model's name on that server, e.g. llama3"""
    timeout: float = 120.0
    """seconds per judge request"""

    def __post_init__(self) -> None:
        check_fields(self, "responses task")
