"""Serving a model over HTTP: an OpenAI-compatible API with streaming, and a web chat page.

The last stage of the pipeline: `scratchllm serve --model DIR` puts a trained model behind the same
API as OpenAI's, so the tools people already use (the `openai` Python client, curl, editors, LLM
judges) can talk to it. Routes:

    GET  /                     the web chat page (web/chat.html; one self-contained file)
    GET  /health               liveness and queue state (no key needed)
    GET  /v1/models            the one model served
    POST /v1/completions       text completion (`prompt`)
    POST /v1/chat/completions  chat (`messages`, laid out by the model's prompt style)

`stream: true` answers as server-sent events in OpenAI's chunk format, ending in `data: [DONE]`.

How a request runs. The model answers one request at a time on one worker thread (`Engine`), off the
event loop, so the server keeps accepting, streaming and timing out connections while it decodes.
At most 1 + queue_size requests are admitted (one decoding, the rest waiting in order); beyond
that the answer is 503 with Retry-After, so load never piles up unbounded. Tokens travel from the
worker to the request's coroutine through an asyncio queue. A client that goes away (a closed
stream, a dropped connection) abandons its job: a waiting job gives its slot back at once, and a
decoding one is stopped by a cancel flag that the worker checks between tokens.

Security defaults: the server listens on 127.0.0.1 unless told otherwise; with an API key (`--api-key`
or $SCRATCHLLM_API_KEY) every /v1 route wants `Authorization: Bearer KEY` (401 otherwise); request
bodies over max_body_bytes get 413; max_tokens is capped by max_tokens_cap; a prompt longer than the
context gets 400. Every error is JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}};
a 500 says only that something failed (the details go to the server log, not to the client).
Connections: a request's headers must arrive within header_timeout_s and its body within
body_timeout_s (slow clients would otherwise hold connections for ever), and at most
max_connections are served at once (a request on one more gets uvicorn's plain-text 503). Bytes that are not HTTP at all
get uvicorn's own plain-text 400, before any of this code runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

try:  # the `serve` extra; the error says so when it is missing (see create_app)
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
except ImportError:  # pragma: no cover
    FastAPI = None

from scratchllm.core.console import warn
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import API_KEY_ENV, SEED_MAX, SEED_MIN, ServeConfig, ServeSettings, check_api_key
from scratchllm.inference.chat import TextStream, load_for_chat
from scratchllm.inference.generation import make_generators
from scratchllm.inference.serve_input import client_error, key_matches, prompt_ids
from scratchllm.prompts import choose_style

log = logging.getLogger("scratchllm.serve")

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


def _validation_error(exc: ValidationError) -> APIError:
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
    "echo": (None, False), "logprobs": (None, False), "top_logprobs": (None, 0), "suffix": (None, ""),
    "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "tools": (None, []), "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's; llama.cpp and vLLM accept it too
    n: int = Field(1, ge=1)
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

    def refuse_unsupported(self) -> None:
        for name, off in _UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if not any(value == o and type(value) is type(o) or value is o for o in off):
                raise APIError(400, f"field '{name}' is not supported by this server (got {json.dumps(value)[:60]})",
                               param=name, code="unsupported_parameter")
        if self.n != 1:
            raise APIError(400, f"field 'n': this server returns one choice per request, got n={self.n}",
                           param="n", code="unsupported_parameter")


class CompletionRequest(_Sampling):
    prompt: Any

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt) -> str:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ValueError("expected a string (or a list of one string: one prompt per request), "
                             f"got {json.dumps(prompt)[:60]}")
        return prompt


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


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    body.refuse_unsupported()
    return body


# ------------------------------------------------------------------------------------------------
# The engine: one worker thread decodes one job at a time


class Job:
    """One admitted request: prompt ids, sampling settings, a cancel flag and an event queue.

    Events, put on the request's event loop by the worker: ("text", piece), then ("done",
    finish_reason, completion_tokens) or ("error", message). `abandon()` is what a request calls
    when its client has gone (or it has finished): it stops the decoding within one token, and a job
    still waiting gives its slot back at once.
    """

    def __init__(self, ids: list[int], max_tokens: int, temperature: float, top_p: float | None,
                 top_k: int | None, seed: int | None, stops: list[str]):
        self.ids, self.max_tokens, self.stops = ids, max_tokens, stops
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed
        self.cancel = threading.Event()
        self.state = "new"  # -> "waiting" -> "running" -> "done" (changed under the engine's lock)
        self.engine: Engine | None = None
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening
            self.cancel.set()

    def abandon(self) -> None:
        self.cancel.set()
        if self.engine is not None:
            self.engine._release(self, only_if_waiting=True)


class Engine:
    """Admits at most `capacity` = 1 + queue_size jobs and decodes them in order on one thread.

    One at a time because the model and its KV cache are used by one decode loop at a time (and on a
    CPU or one GPU, two interleaved requests would each run at about half speed anyway).
    """

    def __init__(self, model, tokenizer, queue_size: int, token_delay: float = 0.0):
        self.model, self.tokenizer, self.token_delay = model, tokenizer, token_delay
        self.capacity = 1 + queue_size
        self._lock = threading.Lock()
        self.admitted = 0  # jobs decoding or waiting
        self.running = False
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="scratchllm-decode", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue the job; False when the queue is full."""
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            job.state, job.engine = "waiting", self
        self._jobs.put(job)
        return True

    def _release(self, job: Job, only_if_waiting: bool = False) -> None:
        with self._lock:
            if job.state == "waiting" or (job.state == "running" and not only_if_waiting):
                job.state = "done"
                self.admitted -= 1

    def close(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        device = self.model.tok_emb.weight.device
        while (job := self._jobs.get()) is not None:
            with self._lock:
                if job.state != "waiting":  # abandoned while it waited; its slot is free already
                    continue
                job.state = "running"
            final: tuple
            try:
                self.running = True
                generator = make_generators(job.seed, 1, device)[0] if job.temperature > 0 else None
                answer = TextStream(self.model, self.tokenizer, job.ids, job.max_tokens, job.temperature,
                                    job.top_k, job.top_p, generator=generator, stops=job.stops,
                                    cancel=job.cancel, delay=self.token_delay)
                for piece in answer:
                    job.emit(("text", piece))
                final = ("done", answer.finish_reason, answer.tokens)
            except Exception:  # a bug, or the device ran out of memory: answer 500, keep serving
                log.exception("generation failed")  # the details go to the log, not to the client
                final = ("error", "generation failed; the server log has the details")
            finally:
                self.running = False
                self._release(job)  # before the client hears "done", so that it may ask again at once
            job.emit(final)


# ------------------------------------------------------------------------------------------------
# The guard in front of the app: API key and body size, before any route or body parsing runs


class Guard:
    """ASGI middleware: 401 without the right bearer key on /v1 routes; 413 for a body over the limit
    (by its Content-Length, or counted as it arrives when chunked); 408 for a body that takes longer
    than body_timeout_s to arrive."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float = 30.0):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_key = check_api_key(api_key) if api_key is not None else None
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.api_key and (path == "/v1" or path.startswith("/v1/")):
            if not key_matches(headers.get("authorization", ""), self.api_key):
                return await _send_error(send, APIError(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                    code="invalid_api_key", headers={"www-authenticate": "Bearer"}))
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            if length.isdigit() and int(length) <= DRAIN_BYTES:
                await _drain(receive)
            return await _send_error(send, self._too_large())
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Read the whole body here (it is small: at most max_body_bytes), then hand it on.
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                error = APIError(408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                                 code="request_timeout", headers={"connection": "close"})
                return await _send_error(send, error)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # a chunked body without a Content-Length
                if message.get("more_body", False):
                    await _drain(receive, size)
                return await _send_error(send, self._too_large())
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"request body is over this server's limit of {self.max_body_bytes} bytes",
                        code="request_too_large")


# A body over the limit is still read (and thrown away) up to this size before the 413 is sent, so
# that a client still sending it reads the 413: answering and closing the connection at once gives
# such a client a broken pipe and no answer. Beyond this size the server answers at once and closes.
DRAIN_BYTES = 64 << 20


async def _drain(receive, size: int = 0) -> None:
    while size <= DRAIN_BYTES:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    if error.status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------------
# The app


def create_app(model: Any, settings: ServeSettings | None = None, device: str = "auto", dtype: str | None = None):
    """The FastAPI app serving `model`: a model/run directory or GPT-2 name (loaded here, on `device`),
    or a (model, tokenizer) pair already loaded. Run it with uvicorn (see `serve_command`)."""
    if FastAPI is None:
        raise ScratchLLMError("serving needs fastapi and uvicorn: pip install 'scratchllm[serve]'")
    settings = settings or ServeSettings()
    settings.check()
    if isinstance(model, tuple):
        net, tokenizer = model
        style = choose_style(settings.prompt_style, None, tokenizer, "plain")
        name = settings.model_name or "scratchllm"
    else:
        net, tokenizer, style, name = load_for_chat(model, device, dtype, settings.prompt_style)
        name = settings.model_name or name
    style = style.with_limits(settings)  # a chat template that does not compile is refused here, at start
    stop_strings = style.stop_strings  # (a template's turn end is found by rendering: once, here)
    ctx = net.config.context_length
    created = int(time.time())
    engine = Engine(net, tokenizer, settings.queue_size, settings.token_delay)

    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="scratchllm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s)
    app.state.engine = engine
    app.state.settings = settings

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        loc = ".".join(str(part) for part in errors[0].get("loc", ()) if part != "body") if errors else ""
        message = f"field '{loc}': {errors[0].get('msg')}" if errors else "invalid request"
        return JSONResponse(APIError(400, message, param=loc or None).body(), status_code=400)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                            status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request, exc):
        return JSONResponse(APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                                     code="method_not_allowed").body(), status_code=405)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, "internal error; the server log has the details", type="server_error").body(),
                            status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(chat_page())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "prompt_style": style.name, "context_length": ctx,
                "max_tokens_cap": settings.max_tokens_cap, "api_key_required": settings.api_key is not None,
                "queue": {"admitted": engine.admitted, "running": engine.running, "capacity": engine.capacity}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "scratchllm"}]}

    def admit(body: _Sampling, ids: list[int], stops: list[str]) -> Job:
        if len(ids) > ctx:
            raise APIError(400, f"the prompt has {len(ids)} tokens but the model's context holds {ctx}; shorten it",
                           param="messages" if isinstance(body, ChatRequest) else "prompt", code="context_length_exceeded")
        wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens or settings.default_max_tokens
        job = Job(ids, min(wanted, settings.max_tokens_cap), body.temperature, body.top_p if body.top_p < 1 else None,
                  body.top_k, body.seed, stops)
        if not engine.submit(job):
            raise APIError(503, f"the server is busy ({engine.capacity} requests decoding or queued); retry shortly",
                           type="server_error", code="queue_full", headers={"retry-after": str(settings.retry_after_s)})
        return job

    async def read_body(request: Request, kind: type[BaseModel]):
        return _parse(kind, await request.body())

    async def encoded(param: str, **prompt) -> list[int]:
        try:
            return await prompt_ids(tokenizer, style=style, **prompt)
        except ScratchLLMError as exc:
            status, message, code = client_error(exc)
            raise APIError(status, message, param=param, code=code) from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionRequest = await read_body(request, CompletionRequest)
        ids = await encoded("prompt", text=body.prompt)
        job = admit(body, ids, body.stop)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if body.stream:
            return _sse(job, request, meta, lambda piece: choice(piece, None), lambda finish: choice("", finish),
                        None, body.stream_options is not None and body.stream_options.include_usage)
        text, finish, tokens = await _collect(job, request)
        return {**meta, "choices": [choice(text, finish)], "usage": _usage(len(ids), tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatRequest = await read_body(request, ChatRequest)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
        ids = await encoded("messages", messages=messages)
        job = admit(body, ids, stop_strings + body.stop)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": name}
        if body.stream:
            meta["object"] = "chat.completion.chunk"
            return _sse(job, request, meta,
                        lambda piece: {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None},
                        lambda finish: {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish},
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
                        body.stream_options is not None and body.stream_options.include_usage)
        text, finish, tokens = await _collect(job, request)
        message = {"role": "assistant", "content": text}
        return {**meta, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": _usage(len(ids), tokens)}

    class JobStream(StreamingResponse):
        """A streaming response that cancels its job however the response ends (a client that
        disconnects cancels the stream task; a failed send ends it with an exception)."""

        def __init__(self, job: Job, content):
            super().__init__(content, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
            self.job = job

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.abandon()

    def _sse(job: Job, request, meta: dict, piece_choice, final_choice, first_choice, include_usage: bool):
        prompt_tokens = len(job.ids)

        def event(data: dict) -> str:
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events():
            try:
                if first_choice is not None:
                    yield event({**meta, "choices": [first_choice]})
                while True:
                    kind, *rest = await job.events.get()
                    if kind == "text":
                        yield event({**meta, "choices": [piece_choice(rest[0])]})
                        continue
                    if kind == "done":
                        yield event({**meta, "choices": [final_choice(rest[0])]})
                        if include_usage:
                            yield event({**meta, "choices": [], "usage": _usage(prompt_tokens, rest[1])})
                    else:  # the status line is sent already: report the error inside the stream
                        yield event(APIError(500, rest[0], type="server_error").body())
                    yield "data: [DONE]\n\n"
                    return
            finally:
                job.abandon()

        return JobStream(job, events())

    return app


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# How often a non-streaming request looks for a client that has gone, whether or not tokens arrive:
# a hung-up client frees the model within this time, not after max_tokens.
DISCONNECT_POLL_S = 0.1


async def _collect(job: Job, request) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a non-streaming request. Every DISCONNECT_POLL_S
    (between tokens as well as while waiting) it checks that the client is still there, and
    cancels the job when it has gone."""
    text = ""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=max(0.0, next_check - loop.time()))
            except asyncio.TimeoutError:
                event = None
            if loop.time() >= next_check:
                if await request.is_disconnected():
                    job.abandon()
                    raise APIError(499, "client closed the request", code="client_closed")
                next_check = loop.time() + DISCONNECT_POLL_S
            if event is None:
                continue
            kind, *rest = event
            if kind == "text":
                text += rest[0]
            elif kind == "done":
                return text, rest[0], rest[1]
            else:
                raise APIError(500, rest[0], type="server_error")
    finally:
        job.abandon()  # no-op when finished; stops the decoding when this request was cancelled


def chat_page() -> str:
    """The web chat page, shipped inside the package (web/chat.html)."""
    from importlib.resources import files

    return files("scratchllm.inference").joinpath("web/chat.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# The function behind `scratchllm serve`


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


# The methods of uvicorn's H11Protocol that `header_timeout_protocol` extends.
_H11_HOOKS = ("connection_made", "handle_events", "on_response_complete", "connection_lost")


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers.

    uvicorn closes an idle keep-alive connection, but not one that sends its request line and
    headers a byte at a time (slowloris): hundreds of those would hold the server's connections
    for as long as the clients like. Here a connection whose next request's headers are not
    complete `seconds` after it opened (or after its previous response) is closed.

    The subclass extends four of uvicorn's protocol methods (`_H11_HOOKS`; tested with uvicorn 0.55).
    A uvicorn without them gets its plain protocol and a warning, not a server that fails on its
    first connection.
    """
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    missing = [name for name in _H11_HOOKS if not callable(getattr(H11Protocol, name, None))]
    if missing:
        warn(f"uvicorn {uvicorn.__version__}: its h11 protocol has no {', '.join(missing)}; serving "
             f"without the {seconds:g} s deadline on request headers")
        return H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            cycle = getattr(self, "cycle", None)
            idle = cycle is None or cycle.response_complete  # no request is being answered
            if idle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:  # the headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # for the next request on this keep-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_config(app, settings: ServeSettings, log_level: str = "info"):
    """The uvicorn.Config `serve` runs `app` with: the host and port, and the limits on slow or
    numerous connections (header deadline, connection cap)."""
    import uvicorn

    # uvicorn answers 503 to a request when its open connections, that request's own included,
    # reach limit_concurrency: the limit max_connections + 1 serves max_connections of them.
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                          http=header_timeout_protocol(settings.header_timeout_s),
                          limit_concurrency=settings.max_connections + 1, timeout_keep_alive=5,
                          timeout_graceful_shutdown=5)


def serve(cfg: ServeConfig, announce=None) -> int:
    """Load cfg.load.model and serve it with uvicorn until Ctrl-C (returns 0). The API key is
    cfg.settings.api_key, else $SCRATCHLLM_API_KEY, else none (then only a loopback host is safe).
    announce(): called once the model is loaded and the app built, before the server runs."""
    try:
        import uvicorn
    except ImportError:
        raise ScratchLLMError("serving needs fastapi and uvicorn: pip install 'scratchllm[serve]'") from None
    cfg.settings.api_key = cfg.settings.api_key or os.environ.get(API_KEY_ENV) or None
    app = create_app(cfg.load.model, cfg.settings, device=cfg.load.device, dtype=cfg.load.dtype)  # checks the settings
    if announce is not None:
        announce()
    uvicorn.Server(server_config(app, cfg.settings, cfg.log_level)).run()
    return 0
