"""The server's app: the routes of the OpenAI-compatible API and the web chat page, for one model.

    GET  /                     the web chat page (web/chat.html; one self-contained file)
    GET  /health               liveness and queue state (no key needed)
    GET  /v1/models            the one model served
    POST /v1/completions       text completion (`prompt`: a string, strings, token ids or lists of them;
                               `echo`, `logprobs` 0-5)
    POST /v1/chat/completions  chat (`messages`, laid out by the model's prompt style; `logprobs`,
                               `top_logprobs` 0-20)
    POST /tokenize             vLLM's: a text's ids ({prompt} -> {tokens, count, max_model_len})
    POST /detokenize           vLLM's: ids back to text ({tokens} -> {prompt})
    GET  /tokenizer_info       vLLM's: the tokenizer's special tokens and chat template (what
                               lm-evaluation-harness's remote tokenizer reads)

A POST is parsed (api_schemas.py), turned into a `Job` of one `RowState` per choice (`n` per prompt),
and submitted to the engine (engine.py), which decodes it on its worker thread; the route reads the job's
events and answers as one JSON body or, with `stream: true`, as server-sent events in OpenAI's chunk
format ending in `data: [DONE]`. Log-probabilities (logprobs.py, recorded by the engine) are written
in OpenAI's shapes by api_logprobs.py. A client that goes away abandons its job. The guard in front
(http_guard.py) has already checked the API key and the body's size.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

try:  # the `serve` extra; the error says so when it is missing (see create_app)
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
except ImportError:  # pragma: no cover
    FastAPI = Request = StreamingResponse = None

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.api_logprobs import chat_logprobs, completion_logprobs, token_text
from scratchllm.inference.api_schemas import (APIError, ChatRequest, CompletionRequest, DetokenizeRequest,
                                              SamplingFields, TokenizeRequest, parse_body)
from scratchllm.inference.config import ServeSettings
from scratchllm.inference.engine import BatchEngine, Engine, Job, SequentialEngine
from scratchllm.inference.http_guard import Guard
from scratchllm.inference.logprobs import TokenLogprobs
from scratchllm.inference.rows import RowState
from scratchllm.inference.sampling import make_generators
from scratchllm.inference.serve_input import client_error, prompt_ids
from scratchllm.inference.session import InferenceSession, load_session
from scratchllm.models.decode_kernels import optimize_for_decoding

log = logging.getLogger("scratchllm.serve")


def make_engine(session: InferenceSession, settings: ServeSettings) -> Engine:
    """The engine `settings.batching` names, over the session's model."""
    if settings.batching == "off":
        return SequentialEngine(session.model, settings.queue_size, settings.token_delay)
    # The batch decodes up to max_batch rows a step: choose the CPU kernels for that too (8 rows at most
    # are measured; GPU layers and int8 ones are left alone).
    optimize_for_decoding(session.model, rows=min(settings.max_batch, 8))
    return BatchEngine(session.model, settings.max_batch, settings.queue_size, settings.prefill_chunk,
                       settings.token_delay)


def create_app(model: Any, settings: ServeSettings | None = None, device: str = "auto", dtype: str | None = None,
               quantize: str | None = None):
    """The FastAPI app serving `model`: a model/run directory or GPT-2 name (loaded here, on `device`, in
    `dtype`, `quantize`d),
    a (model, tokenizer) pair already loaded, or an `InferenceSession`. Run it with uvicorn (see
    serve.py `serve`)."""
    if FastAPI is None:
        raise ScratchLLMError("serving needs fastapi and uvicorn: pip install 'scratchllm[serve]'")
    settings = settings or ServeSettings()
    settings.check()
    if isinstance(model, InferenceSession):
        session = model
    elif isinstance(model, tuple):
        session = InferenceSession.of(*model, prompt_style=settings.prompt_style)
    else:
        session = load_session(model, device, dtype, settings.prompt_style, quantize=quantize)
    session.name = settings.model_name or session.name
    session.style = session.style.with_limits(settings)  # a chat template that does not compile is refused here, at start
    routes = Routes(session, settings, make_engine(session, settings))

    async def lifespan(app):
        yield
        routes.engine.close()

    app = FastAPI(title="scratchllm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s)
    app.state.engine, app.state.settings = routes.engine, settings
    add_error_handlers(app)
    app.add_api_route("/", routes.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/tokenize", routes.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", routes.detokenize, methods=["POST"])
    app.add_api_route("/tokenizer_info", routes.tokenizer_info, methods=["GET"])
    return app


def add_error_handlers(app) -> None:
    """Every error as JSON in OpenAI's shape; a 500 says only that something failed."""

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


class Routes:
    """The routes of one served model: its session, the server's settings and the engine."""

    def __init__(self, session: InferenceSession, settings: ServeSettings, engine: Engine):
        self.session, self.settings, self.engine = session, settings, engine
        self.stop_strings = session.style.stop_strings  # (a template's turn end is found by rendering: once, here)
        self.created = int(time.time())

    async def page(self):
        return HTMLResponse(chat_page())

    async def health(self):
        s, engine = self.settings, self.engine
        return {"status": "ok", "model": self.session.name, "prompt_style": self.session.style.name,
                "context_length": self.session.context_length, "max_tokens_cap": s.max_tokens_cap,
                "api_key_required": s.api_key is not None,
                "queue": {"admitted": engine.admitted, "running": engine.running, "capacity": engine.capacity,
                          "batching": s.batching, "rows_decoding": engine.decoding, "max_batch": s.max_batch}}

    async def models(self):
        return {"object": "list", "data": [{"id": self.session.name, "object": "model", "created": self.created,
                                            "owned_by": "scratchllm"}]}

    def admit(self, body: SamplingFields, prompts: list[list[int]], stops: list[str], param: str,
              top: int | None = None, echo: bool = False) -> Job:
        """The request's job, submitted: `n` rows per prompt, row k sampling with seed + k and recording
        log-probabilities when `top` is not None (`top` alternatives per token; echo: the prompt's too).
        400 for a prompt longer than the context (with echo: prompt + max_tokens), or more rows than
        max_batch; 503 when the engine is full."""
        ctx, settings = self.session.context_length, self.settings
        name = (lambda i: "the prompt") if len(prompts) == 1 else (lambda i: f"prompt {i}")
        for i, ids in enumerate(prompts):
            if len(ids) > ctx:
                raise APIError(400, f"{name(i)} has {len(ids)} tokens but the model's context holds {ctx}; shorten it",
                               param=param, code="context_length_exceeded")
        rows = len(prompts) * body.n
        if rows > settings.max_batch:
            what = f"n={body.n}" if len(prompts) == 1 else f"{len(prompts)} prompts x n={body.n} = {rows}"
            raise APIError(400, f"field '{'n' if len(prompts) == 1 else 'prompt'}': at most {settings.max_batch} "
                                f"choices per request (the server's max_batch), got {what}",
                           param="n" if len(prompts) == 1 else "prompt")
        wanted = next((v for v in (getattr(body, "max_completion_tokens", None), body.max_tokens) if v is not None),
                      settings.default_max_tokens)
        sampling = body.sampling(min(wanted, settings.max_tokens_cap))
        for i, ids in enumerate(prompts):
            if echo and len(ids) + sampling.max_new_tokens > ctx:  # echoed tokens must all see what precedes them
                raise APIError(400, f"field 'max_tokens': with echo, {name(i)} ({len(ids)} tokens) plus max_tokens "
                                    f"({sampling.max_new_tokens}) must fit the model's context of {ctx} tokens",
                               param="max_tokens", code="context_length_exceeded")
        try:
            gens = make_generators(sampling.seed, rows, self.session.device) if not sampling.greedy else [None] * rows
        except ScratchLLMError as exc:  # seed + rows - 1 beyond 64 bits
            raise APIError(400, f"field 'seed': {exc}", param="seed") from None
        tok = self.session.tokenizer
        job = Job([RowState.for_text(prompts[k // body.n], sampling, tok, stops, g,
                                     TokenLogprobs(top, echo) if top is not None else None) for k, g in enumerate(gens)])
        if not self.engine.submit(job):
            raise APIError(503, f"the server is busy ({self.engine.capacity} requests decoding or queued); retry shortly",
                           type="server_error", code="queue_full", headers={"retry-after": str(settings.retry_after_s)})
        return job

    async def encoded(self, param: str, **prompt) -> list[int]:
        """The prompt's ids, laid out and encoded off the event loop (serve_input.py); 400 when they cannot be."""
        try:
            return await prompt_ids(self.session.tokenizer, style=self.session.style, **prompt)
        except ScratchLLMError as exc:
            status, message, code = client_error(exc)
            raise APIError(status, message, param=param, code=code) from None

    def known_ids(self, ids: list[int], param: str) -> list[int]:
        """`ids`, or 400 naming the first that is not in the tokenizer's vocabulary."""
        size = self.session.tokenizer.vocab_size
        bad = next((t for t in ids if not 0 <= t < size), None)
        if bad is not None:
            raise APIError(400, f"field '{param}': token id {bad} is outside the vocabulary (0..{size - 1})",
                           param=param, code="invalid_token_id")
        return ids

    async def completions(self, request: Request):
        body: CompletionRequest = parse_body(CompletionRequest, await request.body())
        prompts = [self.known_ids(p, "prompt") if isinstance(p, list) else await self.encoded("prompt", text=p)
                   for p in body.prompt]
        job = self.admit(body, prompts, body.stop, "prompt", body.logprobs, body.echo)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.session.name}

        def choice(index: int, text: str, finish: str | None) -> dict:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

        if body.stream:
            return sse(job, meta, lambda i, piece: choice(i, piece, None), lambda i, finish: choice(i, "", finish),
                       None, body.stream_options is not None and body.stream_options.include_usage)
        texts, finishes, tokens = await collect(job, request)
        tok, choices = self.session.tokenizer, []
        for i, (row, text, finish) in enumerate(zip(job.rows, texts, finishes)):
            answer = choice(i, tok.decode(row.tokens[: row.prompt_length]) + text if body.echo else text, finish)
            if row.logprobs is not None:
                answer["logprobs"] = completion_logprobs(tok, (row.logprobs.prompt or []) + row.logprobs.generated)
            choices.append(answer)
        return {**meta, "choices": choices, "usage": usage(job.prompt_tokens, tokens)}

    async def chat_completions(self, request: Request):
        body: ChatRequest = parse_body(ChatRequest, await request.body())
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
        ids = await self.encoded("messages", messages=messages)
        job = self.admit(body, [ids], self.stop_strings + body.stop, "messages",
                         (body.top_logprobs or 0) if body.logprobs else None)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.session.name}
        if body.stream:
            meta["object"] = "chat.completion.chunk"
            return sse(job, meta,
                       lambda i, piece: {"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None},
                       lambda i, finish: {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish},
                       lambda i: {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None},
                       body.stream_options is not None and body.stream_options.include_usage)
        texts, finishes, tokens = await collect(job, request)
        tok = self.session.tokenizer
        return {**meta, "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                     "logprobs": chat_logprobs(tok, row.logprobs.generated) if row.logprobs else None,
                                     "finish_reason": f} for i, (row, t, f) in enumerate(zip(job.rows, texts, finishes))],
                "usage": usage(job.prompt_tokens, tokens)}

    async def tokenize(self, request: Request):
        body: TokenizeRequest = parse_body(TokenizeRequest, await request.body())
        tok = self.session.tokenizer
        try:  # (special-token text is the special token, as in a completion's prompt)
            ids = await asyncio.to_thread(lambda: tok.encode(body.prompt, allowed_special="all",
                                                             add_special_tokens=body.add_special_tokens))
        except ScratchLLMError as exc:
            status, message, code = client_error(exc)
            raise APIError(status, message, param="prompt", code=code) from None
        return {"tokens": ids, "count": len(ids), "max_model_len": self.session.context_length}

    async def detokenize(self, request: Request):
        body: DetokenizeRequest = parse_body(DetokenizeRequest, await request.body())
        return {"prompt": self.session.tokenizer.decode(self.known_ids(body.tokens, "tokens"))}

    async def tokenizer_info(self):
        tok = self.session.tokenizer
        template = tok.chat_template
        try:
            eos = tok.eot_id
        except ScratchLLMError:  # a tokenizer without an end-of-text token
            eos = None
        return {"eos_token": token_text(tok, eos) if eos is not None else None,
                "bos_token": token_text(tok, tok.bos_ids[0]) if tok.bos_ids else None,
                "pad_token": None, "chat_template": template.source if template is not None else None,
                "model_max_length": self.session.context_length, "vocab_size": tok.vocab_size}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


if StreamingResponse is not None:  # (without the serve extra, create_app says what to install)

    class JobStream(StreamingResponse):
        """A streaming response that abandons its job however the response ends (a client that
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


def sse(job: Job, meta: dict, piece_choice, final_choice, first_choice, include_usage: bool):
    """The job's events as server-sent events: the first chunk of each choice (chat: its role), a chunk
    per text piece, each choice's final chunk, the usage when asked for, then [DONE]. An error after
    the status line is sent is reported inside the stream."""

    def event(data: dict) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events():
        try:
            if first_choice is not None:
                for i in range(len(job.rows)):
                    yield event({**meta, "choices": [first_choice(i)]})
            done, tokens = 0, 0
            while True:
                kind, *rest = await job.events.get()
                if kind == "text":
                    yield event({**meta, "choices": [piece_choice(rest[0], rest[1])]})
                elif kind == "done":
                    yield event({**meta, "choices": [final_choice(rest[0], rest[1])]})
                    done, tokens = done + 1, tokens + rest[2]
                    if done < len(job.rows):
                        continue
                    if include_usage:
                        yield event({**meta, "choices": [], "usage": usage(job.prompt_tokens, tokens)})
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield event(APIError(500, rest[0], type="server_error").body())
                    yield "data: [DONE]\n\n"
                    return
        finally:
            job.abandon()

    return JobStream(job, events())


# How often a non-streaming request looks for a client that has gone, whether or not tokens arrive:
# a hung-up client frees the model within this time, not after max_tokens.
DISCONNECT_POLL_S = 0.1


async def collect(job: Job, request) -> tuple[list[str], list[str], int]:
    """(text of each choice, finish_reason of each, completion tokens in all) of a non-streaming request.
    Every DISCONNECT_POLL_S (between tokens as well as while waiting) it checks that the client is still
    there, and abandons the job when it has gone."""
    n = len(job.rows)
    texts, finishes, tokens, done = [""] * n, [""] * n, 0, 0
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
                texts[rest[0]] += rest[1]
            elif kind == "done":
                finishes[rest[0]] = rest[1]
                tokens, done = tokens + rest[2], done + 1
                if done == n:
                    return texts, finishes, tokens
            else:
                raise APIError(500, rest[0], type="server_error")
    finally:
        job.abandon()  # no-op when finished; stops the decoding when this request was cancelled


def chat_page() -> str:
    """The web chat page, shipped inside the package (web/chat.html)."""
    from importlib.resources import files

    return files("scratchllm.inference").joinpath("web/chat.html").read_text(encoding="utf-8")
