"""The options of using a model, one dataclass per verb, declared once: `scratchllm generate`, `chat`
and `serve` build their flags from these fields (type, default and the help text below each
field). Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchllm.core.options import check_fields
from scratchllm.errors import ScratchLLMError

API_KEY_ENV = "SCRATCHLLM_API_KEY"

# prompts.STYLE_NAMES, spelled out so that the configs (and `--help`) need not import the prompts
PromptStyleName = Literal["alpaca", "phi3", "plain", "template"]


@dataclass(kw_only=True)
class SamplingConfig:
    """How the next token is chosen (inference/generation.py `sample_next`)."""

    max_new_tokens: int = 256
    """most tokens to generate"""
    temperature: float = 0.7
    """0 = greedy"""
    top_k: int | None = None
    """sample among the k most likely tokens"""
    top_p: float | None = None
    """nucleus sampling: the smallest set of tokens with this much probability"""
    seed: int | None = None
    """seed the sampling for a reproducible output"""


@dataclass(kw_only=True)
class LoadConfig:
    """Which model, where, in what precision."""

    model: str
    """model or run directory (LoRA adapters are merged in), Hugging Face directory or hub name"""
    device: str = "auto"
    """auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """cast the weights (default: as stored)"""


@dataclass(kw_only=True)
class GenerateConfig(LoadConfig, SamplingConfig):
    """`scratchllm generate`: continue a prompt and print the prompt and its completion."""

    prompt: str = ""
    """text to continue (empty: start from the end-of-text token)"""
    max_new_tokens: int = 50
    """most tokens to generate"""
    temperature: float = 0.8
    """0 = greedy"""
    top_k: int | None = 50
    """sample among the k most likely tokens (0 or none: no limit)"""
    stop: list[str] = field(default_factory=list)
    """stop before this text (repeat the flag for several)"""
    stream: bool = False
    """print the completion as it is decoded"""
    no_cache: bool = False
    """recompute the whole window every step (slow; for checking the KV cache)"""

    def __post_init__(self) -> None:
        check_fields(self, "generate")


@dataclass(kw_only=True)
class RespondConfig(LoadConfig, SamplingConfig):
    """`scratchllm respond`: answer every record of an instruction file (evaluation/responses.py `respond`)."""

    data: str
    """JSON/JSONL records: {instruction, input, output} or {messages}, e.g. RUNDIR/test.json"""
    out: str
    """responses JSON file to write"""
    temperature: float = 0.0
    """0 = greedy"""
    seed: int = 123
    """sampling seed (temperature > 0)"""
    batch_size: int = 8
    """prompts decoded together"""
    prompt_style: PromptStyleName | None = None
    """default: the one stored with the model, else its chat template (template), else alpaca"""
    limit: int | None = None
    """only the first N records"""
    overwrite: bool = False
    """replace --out if it exists (without this an existing file is an error, before any generation)"""

    def __post_init__(self) -> None:
        check_fields(self, "respond")


@dataclass(kw_only=True)
class ChatSettings(SamplingConfig):
    """A conversation's settings (inference/chat.py `ChatSession`)."""

    system: str | None = None
    """system prompt, kept when old turns are dropped; /system TEXT changes it"""
    token_delay: float = 0.0
    """seconds slept after each token (tests and demos; $SCRATCHLLM_TOKEN_DELAY)"""


@dataclass(kw_only=True)
class ChatConfig(LoadConfig, ChatSettings):
    """`scratchllm chat`: talk to a model in the terminal, or answer one line of standard input each."""

    prompt_style: PromptStyleName | None = None
    """default: the one stored with the model, else its chat template (template), else plain"""

    def __post_init__(self) -> None:
        check_fields(self, "chat")


@dataclass(kw_only=True)
class ServeSettings:
    """How `scratchllm serve` answers (inference/serve.py `create_app`)."""

    host: str = "127.0.0.1"
    """address to listen on (0.0.0.0 serves the network: set an API key)"""
    port: int = 8000
    """TCP port"""
    api_key: str | None = None
    """require 'Authorization: Bearer KEY' on /v1 routes; prefer $SCRATCHLLM_API_KEY (a flag shows in ps)"""
    max_tokens_cap: int = 512
    """a request's max_tokens is lowered to this"""
    default_max_tokens: int = 256
    """max_tokens when a request gives none (then capped too)"""
    queue_size: int = 8
    """requests that may wait while one decodes; more get 503"""
    max_body_bytes: int = 1_000_000
    """larger request bodies get 413"""
    retry_after_s: int = 1
    """Retry-After of a 503, in seconds"""
    model_name: str | None = None
    """model id in /v1/models (default: the directory's name)"""
    prompt_style: PromptStyleName | None = None
    """default: the one stored with the model, else its chat template (template), else plain"""
    token_delay: float = 0.0
    """seconds slept after each token (tests and demos; $SCRATCHLLM_TOKEN_DELAY)"""
    header_timeout_s: float = 10.0
    """a request's headers must arrive within this many seconds, or the connection is closed (slow clients)"""
    body_timeout_s: float = 30.0
    """a request's body must arrive within this many seconds after its headers (408 otherwise)"""
    max_connections: int = 256
    """connections served at once; beyond, uvicorn answers 503"""

    def check(self) -> None:
        for name in ("max_tokens_cap", "default_max_tokens", "max_body_bytes", "retry_after_s", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScratchLLMError(f"serve setting {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ScratchLLMError(f"serve setting queue_size must be an integer >= 0, got {self.queue_size!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ScratchLLMError(f"serve setting port must be in 0..65535, got {self.port!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ScratchLLMError("serve setting api_key is empty; give a key or leave it out")
        if not self.token_delay >= 0:
            raise ScratchLLMError(f"serve setting token_delay must be >= 0, got {self.token_delay!r}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if isinstance(getattr(self, name), bool) or not 0 < getattr(self, name) < float("inf"):
                raise ScratchLLMError(f"serve setting {name} must be a number of seconds > 0, got {getattr(self, name)!r}")


@dataclass(kw_only=True)
class ServeConfig(LoadConfig, ServeSettings):
    """`scratchllm serve`: an OpenAI-compatible HTTP API and a web chat page for one model."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """uvicorn's log level"""
