"""The generic evaluation runner: the model under evaluation (loaded in one place), scoring requests in
batches, and the loop every task runs through.

An evaluation task (evaluation/tasks.py says what it is, as data) becomes an `Evaluation` once its data
is read: it turns into `Request`s, each a context and the continuations to score after it (the shape of
lm-evaluation-harness's `loglikelihood` requests). `run_evaluation` scores them, `batch_size` requests
per forward pass, and hands the scores back to the evaluation for its report. Perplexity windows,
multiple-choice rows and few-shot prompts are all requests, so all three tasks run through one loop.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from scratchllm.checkpoint.loader import for_decoding
from scratchllm.core.device import parse_dtype, resolve_device
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.scoring import score_rows
from scratchllm.inference.logprobs import model_context_length, model_device
from scratchllm.inference.session import load_session
from scratchllm.tokenizer import Tokenizer


@dataclass
class EvalModel:
    """A causal language model ready to score: the module (our GPT, or any module that returns logits or
    an object with `.logits`), its tokenizer, and the name its reports carry."""

    module: nn.Module
    tokenizer: Tokenizer
    name: str

    @property
    def context_length(self) -> int:
        return model_context_length(self.module)

    @property
    def device(self) -> torch.device:
        return model_device(self.module)


ModelSource = str | os.PathLike[str] | nn.Module | EvalModel
"""What an evaluation takes as its model: a model or run directory, a Hugging Face directory or hub name,
a module already built (with its tokenizer given beside it), or an `EvalModel`."""


def load_eval_model(model: ModelSource, tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
                    device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None,
                    quantize: str | None = None) -> EvalModel:
    """The one place an evaluation gets its model, in eval mode.

    A path or name is loaded as every inference path loads it (`inference.session.load_session`: a GPT,
    so a classifier directory gives its body) onto `device`, cast to `dtype`, `quantize`d ("int8"; CPU
    only); its own tokenizer is used unless `tokenizer` is given. A module is moved to `device` (unless
    "auto" or None), cast to `dtype` and quantized in place (`checkpoint.loader.for_decoding`), and
    needs `tokenizer` (a `Tokenizer`, "gpt2", or a tokenizer file). An `EvalModel` is returned as it is.
    """
    if isinstance(model, EvalModel):
        return model
    wanted_dtype = parse_dtype(dtype)  # a bad name is a one-line error before anything loads
    if isinstance(model, (str, os.PathLike)):
        session = load_session(str(model), device, wanted_dtype, quantize=quantize)
        module, name = session.model, str(model)
        tokenizer = session.tokenizer if tokenizer is None else tokenizer
    elif isinstance(model, nn.Module):
        module, name = model, type(model).__name__
        if device is not None and str(device) != "auto":
            module.to(resolve_device(device))
        if wanted_dtype is not None:
            module.to(wanted_dtype)
        if quantize is not None:
            for_decoding(module, quantize, name)
        if tokenizer is None:
            raise ScratchLLMError("tokenizer: a model object was given without its tokenizer")
    else:
        raise ScratchLLMError(f"model {type(model).__name__}: expected a model directory or name, a module, "
                              "or an EvalModel")
    module.eval()
    return EvalModel(module, Tokenizer.from_spec(tokenizer), name)


@dataclass
class Request:
    """Continuations to score after one context (token ids); each is scored by its summed log-probability."""

    context: Sequence[int]
    continuations: Sequence[Sequence[int]]


class Evaluation(ABC):
    """A task with its data read: the requests it asks of a model, and the report their scores make.

    Subclasses read and check their data in `__init__` (so that bad input fails before a model is
    loaded), build requests in `requests` (the tokenizer and context length are the model's) and turn
    the scores, one list per request in request order, into a JSON-able report in `report`, which is
    called after `requests` (what a report needs to know of its requests is kept then).
    """

    name: ClassVar[str]  # the task's name in reports and progress bars

    @abstractmethod
    def requests(self, model: EvalModel) -> Sequence[Request]:
        """What to score."""

    @abstractmethod
    def report(self, model: EvalModel, scores: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """The figures, from the scores of `requests` (per request, one dict per continuation)."""


def score_requests(model: EvalModel, requests: Sequence[Request], batch_size: int = 8, desc: str = "scoring",
                   progress: bool = False) -> Iterator[list[dict[str, Any]]]:
    """Scores of each request in order (one dict per continuation: see `scoring.score_rows`); the rows
    of `batch_size` requests share one right-padded forward pass."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ScratchLLMError(f"batch_size {batch_size!r}: expected an integer >= 1")
    max_length = model.context_length
    with tqdm(total=len(requests), desc=desc, disable=not progress) as bar:
        for start in range(0, len(requests), batch_size):
            batch = requests[start:start + batch_size]
            rows = [(r.context, c) for r in batch for c in r.continuations]
            scored = iter(score_rows(model.module, rows, max_length))
            for r in batch:
                yield [next(scored) for _ in r.continuations]
            bar.update(len(batch))


def run_evaluation(evaluation: Evaluation, model: EvalModel, batch_size: int = 8,
                   progress: bool = False) -> dict[str, Any]:
    """Score the evaluation's requests on `model` and return its report, headed by the task and model."""
    requests = evaluation.requests(model)
    scores = list(score_requests(model, requests, batch_size, evaluation.name, progress))
    return {"task": evaluation.name, "model": model.name, **evaluation.report(model, scores)}
