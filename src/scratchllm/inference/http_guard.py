"""The guard in front of the server's app (ASGI middleware): the API key and the body's size and
arrival time are checked before any route runs or any body is parsed (401, 413, 408 in OpenAI's
error shape).
"""

from __future__ import annotations

import asyncio
import json

from scratchllm.inference.api_schemas import APIError
from scratchllm.inference.config import check_api_key
from scratchllm.inference.serve_input import key_matches


KEYED = ("/tokenize", "/detokenize", "/tokenizer_info")  # routes outside /v1 (where vLLM has them) that want the key


class Guard:
    """ASGI middleware: 401 without the right bearer key on /v1 routes and the tokenizer's (`KEYED`); 413 for a body over the limit
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
        if self.api_key and (path == "/v1" or path.startswith("/v1/") or path in KEYED):
            if not key_matches(headers.get("authorization", ""), self.api_key):
                return await send_error(send, APIError(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                    code="invalid_api_key", headers={"www-authenticate": "Bearer"}))
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            if length.isdigit() and int(length) <= DRAIN_BYTES:
                await drain(receive)
            return await send_error(send, self._too_large())
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
                return await send_error(send, error)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # a chunked body without a Content-Length
                if message.get("more_body", False):
                    await drain(receive, size)
                return await send_error(send, self._too_large())
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


async def drain(receive, size: int = 0) -> None:
    """Read (and drop) the rest of a request body, up to DRAIN_BYTES."""
    while size <= DRAIN_BYTES:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def send_error(send, error: APIError) -> None:
    """Answer `error` straight from the ASGI layer (no route ran), as JSON in OpenAI's shape."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    if error.status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
