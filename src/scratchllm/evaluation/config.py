"""The options of the verbs that look at a model, declared once: `scratchllm inspect` (attention,
next-token, tokens; evaluation/inspect.py) and `scratchllm info` (evaluation/info.py). The model is
checkpoint/config.py's `LoadConfig`. Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchllm.checkpoint.config import LoadConfig
from scratchllm.core.options import check_fields, composed, group, option
from scratchllm.errors import ScratchLLMError

# A model to look inside: a scratchllm directory or a GPT-2 name, on a device, as stored.
_MODEL_HELP = {"model": "model directory, run directory or GPT-2 name"}


@composed
@dataclass(kw_only=True)
class InspectAttentionConfig:
    """`scratchllm inspect attention`: the attention weights of a text as heat maps (`inspect_attention`)."""

    load: LoadConfig = group(LoadConfig, flags=("model", "device"), help=_MODEL_HELP)
    text: str
    """the text whose attention to draw"""
    out: str
    """PNG file to write"""
    layers: str = "all"
    """'all' or comma-separated layer indices, e.g. 0,1"""
    heads: str = "all"
    """'all' or comma-separated head indices"""

    def __post_init__(self) -> None:
        check_fields(self, "inspect attention")


@composed
@dataclass(kw_only=True)
class InspectNextTokenConfig:
    """`scratchllm inspect next-token`: the likeliest next tokens after a text (`inspect_next_token`)."""

    load: LoadConfig = group(LoadConfig, flags=("model", "device"), help=_MODEL_HELP)
    text: str
    """the text to continue"""
    top_k: int = 10
    """how many candidates to show"""
    out: str | None = None
    """also draw a bar chart to this PNG"""

    def __post_init__(self) -> None:
        check_fields(self, "inspect next-token")


@dataclass(kw_only=True)
class InspectTokensConfig:
    """`scratchllm inspect tokens`: a text with its token boundaries marked (`inspect_tokens`)."""

    tokenizer: str = "gpt2"
    """gpt2 or a tokenizer .json file"""
    text: str
    """the text to tokenize"""
    color: Literal["auto", "always", "never"] = "auto"
    """colour the tokens (auto: when stdout is a terminal)"""

    def __post_init__(self) -> None:
        check_fields(self, "inspect tokens")


@dataclass(kw_only=True)
class InfoConfig:
    """`scratchllm info`: parameters, memory and FLOPs of one model or several (`model_info`)."""

    model: str | None = None
    """preset name, config.json or model directory"""
    compare: list[str] | None = option(None, metavar="MODEL")
    """several presets/configs/directories side by side"""
    json: bool = False
    """print the figures as JSON"""
    out: str | None = None
    """also draw a chart to this PNG: the parameter breakdown, or with --compare the parameter counts"""

    def __post_init__(self) -> None:
        check_fields(self, "info")
        if bool(self.model) == bool(self.compare):
            raise ScratchLLMError("give either --model or --compare (not both, not neither)")
