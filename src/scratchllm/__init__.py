"""scratchllm: GPT-style language models built from scratch, from tokenizer to serving.

The public names are imported lazily so that `scratchllm --help` and small tools start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "ScratchLLMError": "scratchllm.errors",
    "GPTConfig": "scratchllm.config",
    "GPT": "scratchllm.model",
    "Tokenizer": "scratchllm.tokenizer",
    "generate": "scratchllm.generation",
    "stream": "scratchllm.generation",
    "load": "scratchllm.checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchllm' has no attribute {name!r}")


if TYPE_CHECKING:  # for editors and type checkers
    from scratchllm.checkpoint import load
    from scratchllm.config import GPTConfig
    from scratchllm.errors import ScratchLLMError
    from scratchllm.generation import generate, stream
    from scratchllm.model import GPT
    from scratchllm.tokenizer import Tokenizer
