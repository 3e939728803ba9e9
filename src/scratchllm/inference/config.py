"""The options of using a model, declared once: the sampling group (`SamplingConfig`, with the checks
every decoding path runs), the prompt-style option, a conversation's and a server's settings, and one
config per verb (`generate`, `chat`, `serve`, `respond`, `classify`, `fill-mask`, `translate`), each
composing the groups it needs (checkpoint/config.py's `LoadConfig` for the model). The verbs build their
flags from these fields (type, default and the help text below each field). Torch-free, so
`scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from scratchllm.checkpoint.config import LoadConfig
from scratchllm.core.limits import TemplateLimits
from scratchllm.core.options import check_fields, composed, group, option
from scratchllm.errors import ScratchLLMError

API_KEY_ENV = "SCRATCHLLM_API_KEY"

# prompts.STYLE_NAMES, spelled out so that the configs (and `--help`) need not import the prompts
PromptStyleName = Literal["alpaca", "phi3", "plain", "template"]


def prompt_style_field(fallback: str) -> Any:
    """The --prompt-style option of every verb that lays out prompts: one help, the verb's last resort named."""
    return option(None, help=f"prompt layout (default: the one stored with the model, else its chat template "
                             f"(template), else {fallback})")


# ------------------------------------------------------------------------------------------------
# Sampling

# What torch.Generator.manual_seed accepts: a signed or unsigned 64-bit integer.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
DECODERS = ("auto", "eager", "static")

# Below this temperature sampling is greedy: two logits 1e-4 apart already differ by a factor of
# e^100 in probability, and dividing by a still smaller number overflows float32 (inf, then NaN).
GREEDY_BELOW = 1e-6


def check_seed(seed: int | None, n: int = 1) -> None:
    """Raise ScratchLLMError unless `seed` (and seed + n - 1, the batch's last row) is a 64-bit seed."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX - (n - 1):
        raise ScratchLLMError(f"seed must be an integer in [-2**63, 2**64 - {n}], got {seed!r}")


def check_decoder(decoder: str) -> None:
    """Raise ScratchLLMError unless `decoder` names a decode loop (generation.py)."""
    if decoder not in DECODERS:
        raise ScratchLLMError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")


def check_top_k(top_k: int | None) -> None:
    """Raise ScratchLLMError unless top_k is an integer >= 1 or None."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ScratchLLMError(f"top_k must be an integer >= 1 or None, got {top_k!r}")


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                   seed: int | None = None) -> None:
    """Raise ScratchLLMError for a sampling parameter outside its range (`SamplingConfig` runs it)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ScratchLLMError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ScratchLLMError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    check_top_k(top_k)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ScratchLLMError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    check_seed(seed)


@dataclass(kw_only=True)
class SamplingConfig:
    """How the next token is chosen (inference/sampling.py `sample_next`), and how many: the settings
    every decoding path takes whole (generate, stream, chat, serve, respond), checked once, here."""

    max_new_tokens: int = 256
    """most tokens to generate"""
    temperature: float = 0.7
    """0 = greedy"""
    top_k: int | None = None
    """sample among the k most likely tokens (0 or none: no limit)"""
    top_p: float | None = None
    """nucleus sampling: the smallest set of tokens with this much probability"""
    seed: int | None = None
    """seed the sampling for a reproducible output"""

    def __post_init__(self) -> None:
        if self.top_k == 0 and not isinstance(self.top_k, bool):
            self.top_k = None
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)

    @property
    def greedy(self) -> bool:
        """Whether the next token is the argmax (temperature 0, or below what float32 can divide by)."""
        return self.temperature < GREEDY_BELOW


# ------------------------------------------------------------------------------------------------
# The verbs that decode


@composed
@dataclass(kw_only=True)
class GenerateConfig:
    """`scratchllm generate`: continue a prompt and print the prompt and its completion."""

    load: LoadConfig = group(LoadConfig)
    prompt: str = ""
    """text to continue (empty: start from the end-of-text token)"""
    sampling: SamplingConfig = group(SamplingConfig, max_new_tokens=50, temperature=0.8, top_k=50)
    stop: list[str] = field(default_factory=list)
    """stop before this text (repeat the flag for several)"""
    stream: bool = False
    """print the completion as it is decoded"""
    no_cache: bool = False
    """recompute the whole window every step (slow; for checking the KV cache)"""

    def __post_init__(self) -> None:
        check_fields(self, "generate")


@composed
@dataclass(kw_only=True)
class RespondConfig:
    """`scratchllm respond`: answer every record of an instruction file (evaluation/responses.py `respond`)."""

    load: LoadConfig = group(LoadConfig)
    data: str
    """JSON/JSONL records: {instruction, input, output} or {messages}, e.g. RUNDIR/test.json"""
    out: str
    """responses JSON file to write"""
    sampling: SamplingConfig = group(SamplingConfig, temperature=0.0, seed=123)
    batch_size: int = 8
    """prompts decoded together"""
    prompt_style: PromptStyleName | None = prompt_style_field("alpaca")
    limit: int | None = None
    """only the first N records"""
    overwrite: bool = False
    """replace --out if it exists (without this an existing file is an error, before any generation)"""

    def __post_init__(self) -> None:
        check_fields(self, "respond")


@dataclass(kw_only=True)
class ChatSettings(SamplingConfig, TemplateLimits):
    """A conversation's settings (inference/chat.py `ChatSession`): how it samples, its system prompt, and
    the limits on the model's chat template (core/limits.py)."""

    system: str | None = None
    """system prompt, kept when old turns are dropped; /system TEXT changes it"""
    token_delay: float = 0.0
    """seconds slept after each token (tests and demos; $SCRATCHLLM_TOKEN_DELAY)"""

    def __post_init__(self) -> None:
        check_fields(self, "chat")
        super().__post_init__()
        self.check_template_limits()


@composed
@dataclass(kw_only=True)
class ChatConfig:
    """`scratchllm chat`: talk to a model in the terminal, or answer one line of standard input each."""

    load: LoadConfig = group(LoadConfig)
    settings: ChatSettings = group(ChatSettings)
    prompt_style: PromptStyleName | None = prompt_style_field("plain")

    def __post_init__(self) -> None:
        check_fields(self, "chat")


@dataclass(kw_only=True)
class ServeSettings(TemplateLimits):
    """How `scratchllm serve` answers (inference/serve.py `create_app`), with the limits on the model's
    chat template (core/limits.py)."""

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
    """requests that may wait while others decode (for a free row; with --batching off, for the one
    decoding); more get 503"""
    batching: Literal["on", "off"] = "on"
    """on: a request joins the running batch at the next step (continuous batching); off: one request
    decodes at a time, the rest wait (the engine before batching, kept for comparison)"""
    max_batch: int = 8
    """rows decoded together; a request takes one per choice (`n`), and n may not exceed this"""
    prefill_chunk: int = 64
    """prompt tokens fed per step while other rows decode (smaller: running streams pause less)"""
    max_body_bytes: int = 1_000_000
    """larger request bodies get 413"""
    retry_after_s: int = 1
    """Retry-After of a 503, in seconds"""
    model_name: str | None = None
    """model id in /v1/models (default: the directory's name)"""
    prompt_style: PromptStyleName | None = prompt_style_field("plain")
    token_delay: float = 0.0
    """seconds slept after each token (tests and demos; $SCRATCHLLM_TOKEN_DELAY)"""
    header_timeout_s: float = 10.0
    """a request's headers must arrive within this many seconds, or the connection is closed (slow clients)"""
    body_timeout_s: float = 30.0
    """a request's body must arrive within this many seconds after its headers (408 otherwise)"""
    max_connections: int = 256
    """connections served at once; beyond, uvicorn answers 503"""

    def __post_init__(self) -> None:
        check_fields(self, "serve")
        self.check()

    def check(self) -> None:
        """The ranges, checked when made and again by `create_app` (the CLI fills api_key from the environment)."""
        for name in ("max_tokens_cap", "default_max_tokens", "max_body_bytes", "retry_after_s", "max_connections",
                     "max_batch", "prefill_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScratchLLMError(f"serve setting {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ScratchLLMError(f"serve setting queue_size must be an integer >= 0, got {self.queue_size!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ScratchLLMError(f"serve setting port must be in 0..65535, got {self.port!r}")
        if self.api_key is not None:
            check_api_key(self.api_key)
        if not self.token_delay >= 0:
            raise ScratchLLMError(f"serve setting token_delay must be >= 0, got {self.token_delay!r}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if isinstance(getattr(self, name), bool) or not 0 < getattr(self, name) < float("inf"):
                raise ScratchLLMError(f"serve setting {name} must be a number of seconds > 0, got {getattr(self, name)!r}")
        self.check_template_limits()


def check_api_key(key: str) -> str:
    """The API key a server compares requests with: `key` without surrounding whitespace (a key read from a
    file or a variable often ends in a newline), the same stripping a request's header gets. A key that is
    empty, holds a control character (which no HTTP header can carry) or a non-ASCII character (which the
    openai client and browsers refuse to send, and others send in differing encodings) is a one-line error."""
    if not isinstance(key, str) or not key.strip():
        raise ScratchLLMError("serve setting api_key is empty; give a key or leave it out")
    key = key.strip()
    bad = next((c for c in key if not " " <= c <= "~"), None)
    if bad is not None:
        what = "a control character" if ord(bad) < 32 or ord(bad) == 127 else "a non-ASCII character"
        raise ScratchLLMError(f"serve setting api_key holds {what}, {bad!r}, at index {key.index(bad)}; HTTP clients "
                              "send only printable ASCII keys (the openai client and browsers refuse others): choose "
                              "one, e.g. openssl rand -hex 16")
    return key


@composed
@dataclass(kw_only=True)
class ServeConfig:
    """`scratchllm serve`: an OpenAI-compatible HTTP API and a web chat page for one model."""

    load: LoadConfig = group(LoadConfig)
    settings: ServeSettings = group(ServeSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """uvicorn's log level"""

    def __post_init__(self) -> None:
        check_fields(self, "serve")


# ------------------------------------------------------------------------------------------------
# The verbs of the other kinds of model


@composed
@dataclass(kw_only=True)
class ClassifyTextsConfig:
    """`scratchllm classify`: label texts with a fine-tuned classifier (inference/classify.py `classify_texts`)."""

    load: LoadConfig = group(LoadConfig, flags=("model", "device"),
                             help={"model": "classifier directory or `finetune classify` run directory"})
    text: list[str] | None = option(None, repeat=True, one_of="texts")
    """a text to classify (repeat for several); prints label<TAB>probability"""
    input: str | None = option(None, one_of="texts")
    """file with one text per line; writes JSONL {text, label, probability}"""
    out: str | None = None
    """write the JSONL here instead of stdout"""
    batch_size: int = 32
    """texts per forward pass"""
    overwrite: bool = False
    """replace an existing --out file"""

    def __post_init__(self) -> None:
        check_fields(self, "classify")


@composed
@dataclass(kw_only=True)
class FillMaskConfig:
    """`scratchllm fill-mask`: the likeliest tokens for each [MASK] (inference/fill_mask.py `fill_mask`)."""

    load: LoadConfig = group(LoadConfig, flags=("model", "device"),
                             help={"model": "model or run directory of a masked-language encoder"})
    text: str
    """text with one or more [MASK] markers, e.g. 'The [MASK] sat on the mat.'"""
    top_k: int = 5
    """fillers to print per mask"""
    json: bool = False
    """print [[{token, probability, text}, ...], ...] as JSON"""

    def __post_init__(self) -> None:
        check_fields(self, "fill-mask")
        if not self.text.strip():
            raise ScratchLLMError("--text is empty; give a sentence with [MASK] in it")


@composed
@dataclass(kw_only=True)
class TranslateConfig:
    """`scratchllm translate`: an encoder-decoder's translation of a text (inference/translate.py `translate`)."""

    load: LoadConfig = group(LoadConfig, flags=("model", "device"),
                             help={"model": "model or run directory of an encoder-decoder"})
    text: str
    """source text"""
    beam: int = 1
    """beam size (1 = greedy)"""
    max_new_tokens: int | None = None
    """most target tokens (default: context_length - 1)"""
    length_penalty: float = 1.0
    """beam ranking: log-probability / length ** this (0 = raw log-probability)"""

    def __post_init__(self) -> None:
        check_fields(self, "translate")
        if not self.text.strip():
            raise ScratchLLMError("--text is empty; give the source text to translate")
