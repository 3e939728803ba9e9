"""The OpenAI-compatible API's data: errors in OpenAI's shape (`APIError`) and the request bodies of
/v1/completions, /v1/chat/completions, /tokenize and /detokenize, validated strictly (`parse_body`):
"5" is not a number and 1 is not a boolean, and each problem becomes one 400 that names its field.
Used by app.py.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scratchllm.inference.config import SEED_MAX, SEED_MIN, SamplingConfig

# ------------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class APIError(Exception):
    """An HTTP error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(exc: ValidationError) -> APIError:
    """The first problem of a pydantic error as one clear message; `param` names the field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return APIError(400, f"request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})",
                        code="invalid_json")
    loc = ".".join(str(part) for part in first["loc"])
    if first["type"] == "model_type" and not loc:
        return APIError(400, f"request body must be a JSON object, got {type(first['input']).__name__}")
    if first["type"] == "missing":
        message = f"missing required field '{loc}'"
    elif first["type"] == "value_error":  # our own validators' messages say what they got
        message = f"field '{loc}': {first['msg'].removeprefix('Value error, ')}"
    else:
        message = f"field '{loc}': {first['msg']} (got {json.dumps(first.get('input'), default=repr)[:80]})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return APIError(400, message + more, param=loc or None, code=first["type"])


# ------------------------------------------------------------------------------------------------
# Request bodies. Strict types: "5" is not a number and 1 is not a boolean. Unknown fields are
# allowed (clients send ones we do not use, such as `user`), except settings that would change the
# answer and that this server does not implement: those are refused rather than ignored.

_UNSUPPORTED = {  # field -> values that mean "off", so a client may still send them
    "echo": (None, False), "top_logprobs": (None, 0), "suffix": (None, ""),
    "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "tools": (None, []), "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class Body(BaseModel):
    """A request body: strict types, unknown fields allowed; `check` refuses what the fields alone cannot
    (combinations of them)."""

    model_config = ConfigDict(strict=True, extra="allow")

    def check(self) -> None:
        pass


class SamplingFields(Body):
    """The fields both POST routes share: the model, how many tokens, how to sample, how to answer."""

    model_config = ConfigDict(strict=True, extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's; llama.cpp and vLLM accept it too
    n: int = Field(1, ge=1)  # choices; the server's max_batch bounds it (app.py)
    stop: Any = Field(None, validate_default=True)  # a string or up to 4; becomes a list
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)  # what torch.Generator takes (64 bits)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop) -> list[str]:
        stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"expected a non-empty string or a list of non-empty strings, got {json.dumps(stop)[:60]}")
        if len(stops) > 4:
            raise ValueError(f"expected at most 4 stop strings, got {len(stops)}")
        return stops

    def sampling(self, max_new_tokens: int) -> SamplingConfig:
        """The request's sampling settings, whole (its max_tokens already settled by the server)."""
        return SamplingConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p if self.top_p < 1 else None, seed=self.seed)

    def check(self) -> None:
        """Refuse settings this server does not implement (rather than ignore them)."""
        for name, off in _UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if not any(value == o and type(value) is type(o) or value is o for o in off):
                raise APIError(400, f"field '{name}' is not supported by this server (got {json.dumps(value)[:60]})",
                               param=name, code="unsupported_parameter")

    def refuse_streamed_logprobs(self, asked: bool) -> None:
        if self.stream and asked:
            raise APIError(400, "field 'stream': log-probabilities and echo are answered in one body; "
                                "send stream: false with them", param="stream", code="unsupported_parameter")


def _is_id(value: Any) -> bool:
    return type(value) is int  # (strict: a boolean is not a token id)


class CompletionRequest(SamplingFields):
    prompt: Any  # becomes a list of prompts, each a string or a list of token ids
    max_tokens: int | None = Field(None, ge=0)  # 0 (with echo): score the prompt, generate nothing
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)  # OpenAI's legacy completions take at most 5

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt) -> list[str | list[int]]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and not prompt:
            raise ValueError("expected at least one prompt, got an empty list")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return prompt
        if isinstance(prompt, list) and all(_is_id(t) for t in prompt):
            return [prompt]
        if isinstance(prompt, list) and all(isinstance(p, list) and all(_is_id(t) for t in p) for p in prompt):
            empty = [i for i, p in enumerate(prompt) if not p]
            if empty:
                raise ValueError(f"prompt {empty[0]} of the list is empty; expected at least one token id")
            return prompt
        raise ValueError("expected a string, a list of strings, a list of token ids or a list of lists of "
                         f"token ids, got {json.dumps(prompt)[:60]}")

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "field 'max_tokens': 0 generates nothing; it scores the prompt with echo: true "
                                "(and logprobs), or ask for at least 1 token", param="max_tokens")
        self.refuse_streamed_logprobs(self.echo or self.logprobs is not None)


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Any  # a string, or a list of text parts [{"type": "text", "text": ...}]; becomes a string

    @field_validator("content")
    @classmethod
    def _text(cls, content) -> str:
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
        ):
            return "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValueError('expected a string or a list of {"type": "text", "text": "..."} parts, '
                             f"got {json.dumps(content)[:60]}")
        return content


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)  # OpenAI's chat takes at most 20

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, f"field 'top_logprobs': needs logprobs: true (got top_logprobs={self.top_logprobs} "
                                "without it)", param="top_logprobs")
        self.refuse_streamed_logprobs(self.logprobs)


class TokenizeRequest(Body):
    """vLLM's /tokenize: a text's ids (with the tokenizer's BOS when add_special_tokens)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(Body):
    """vLLM's /detokenize: ids back to text."""

    model: str | None = None
    tokens: list[int]


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """The request body `raw` as `model`, or the APIError (400) that names its first problem."""
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    body.check()
    return body
