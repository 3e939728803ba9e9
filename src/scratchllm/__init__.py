"""scratchllm: GPT-style language models built from scratch, from tokenizer to serving.

The public names are imported lazily so that `scratchllm --help` and small tools start fast.
The layers, bottom to top (a module imports only from its own layer or the ones below):

    core/  ->  tokenizer/, data/, prompts.py  ->  models/  ->  checkpoint/  ->  inference/
           ->  evaluation/  ->  training/  ->  recipes/  ->  cli/
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scratchllm.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ScratchLLMError": "scratchllm.errors",
    "GPTConfig": "scratchllm.models.config",
    "GPT": "scratchllm.models.gpt",
    "Tokenizer": "scratchllm.tokenizer",
    "generate": "scratchllm.inference.generation",
    "stream": "scratchllm.inference.generation",
    "load": "scratchllm.checkpoint.loader",
    "save_model": "scratchllm.checkpoint.model_dir",
}

__all__ = ["GPT", "GPTConfig", "ScratchLLMError", "Tokenizer", "generate", "load", "save_model", "stream"]


lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for editors and type checkers
    from scratchllm.checkpoint.loader import load
    from scratchllm.checkpoint.model_dir import save_model
    from scratchllm.errors import ScratchLLMError
    from scratchllm.inference.generation import generate, stream
    from scratchllm.models.config import GPTConfig
    from scratchllm.models.gpt import GPT
    from scratchllm.tokenizer import Tokenizer
