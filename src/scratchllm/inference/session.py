"""An inference session: a model ready to decode, its tokenizer, the prompt style its prompts are laid
out in, and its sampling settings, held together; and `load_session`, the one way a model is loaded for
inference (the generate, chat, serve and respond verbs, `respond`, `create_app`, the evaluations).

Everything that decodes takes a session, or its parts, whole: `session.generate(prompt)` and
`session.stream(prompt)` sample by `session.sampling` (or the `SamplingConfig` given), the chat
(chat.py) and the server (app.py, engine.py) read the model, tokenizer and style from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.loader import load, locate
from scratchllm.checkpoint.model_dir import read_model_config
from scratchllm.core.device import resolve_device
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import SamplingConfig
from scratchllm.inference.generation import text_pieces
from scratchllm.models.gpt import GPT
from scratchllm.prompts import PromptStyle, choose_style, stored_style


@dataclass
class InferenceSession:
    """A model to decode with: the GPT (in eval mode), its tokenizer, its prompt style, the name it
    is served under, and the sampling settings used when a call gives none."""

    model: GPT
    tokenizer: Any
    style: PromptStyle
    name: str = "scratchllm"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def of(cls, model: GPT, tokenizer: Any, prompt_style: str | None = None, fallback_style: str = "plain",
           name: str = "scratchllm", sampling: SamplingConfig | None = None) -> "InferenceSession":
        """A session over a model already loaded (left as it is: its layout and mode are the caller's).
        The style is `prompt_style`, else the model's chat template, else `fallback_style`."""
        if tokenizer is None:
            raise ScratchLLMError("tokenizer: a model object was given without its tokenizer")
        style = choose_style(prompt_style, None, tokenizer, fallback_style)
        return cls(model, tokenizer, style, name, sampling or SamplingConfig())

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def generate(self, prompt: str | Sequence[str], sampling: SamplingConfig | None = None,
                 stop: str | Sequence[str] | None = None, use_cache: bool = True) -> str | list[str]:
        """The completion of `prompt` (a list of prompts: a list, decoded as one batch), sampled by
        `sampling` (default: the session's); as `generation.generate`, with the settings whole."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        out = [""] * len(prompts)
        for r, piece in text_pieces(self.model, self.tokenizer, prompts, sampling or self.sampling, stop, use_cache):
            out[r] += piece
        return out[0] if isinstance(prompt, str) else out

    def stream(self, prompt: str, sampling: SamplingConfig | None = None, stop: str | Sequence[str] | None = None,
               use_cache: bool = True) -> Iterator[str]:
        """`generate` for one prompt, piece by piece (whole characters; stop strings held back)."""
        pieces = text_pieces(self.model, self.tokenizer, [prompt], sampling or self.sampling, stop, use_cache)
        return (piece for _, piece in pieces)


def load_session(model: str | os.PathLike[str], device: str = "auto", dtype: str | torch.dtype | None = None,
                 prompt_style: str | None = None, fallback_style: str = "plain",
                 sampling: SamplingConfig | None = None, quantize: str | None = None) -> InferenceSession:
    """Load a model or run directory (LoRA adapters merged in), a Hugging Face directory or a hub name
    for decoding: as a GPT on `device` in `dtype`, `quantize`d ("int8"; CPU only), eval mode, with the
    decode kernels `checkpoint.load` measured fastest for it (bfloat16 only where the CPU has it). The
    style is `prompt_style`, else the one stored with the model (what it was tuned with), else its chat
    template, else `fallback_style`; the name is the directory's."""
    net, tokenizer = load(model, device=resolve_device(device), dtype=dtype, kind="gpt", quantize=quantize)
    net.eval()
    stored = stored_style(read_model_config(model)) if locate(model)[0] == "scratchllm" else None
    style = choose_style(prompt_style, stored, tokenizer, fallback_style)
    name = Path(os.fspath(model)).name or os.fspath(model)
    return InferenceSession(net, tokenizer, style, name, sampling or SamplingConfig())
