"""Serving a model over HTTP: an OpenAI-compatible API with streaming, and a web chat page.

The last stage of the pipeline: `scratchllm serve --model DIR` puts a trained model behind the same
API as OpenAI's, so the tools people already use (the `openai` Python client, curl, editors, LLM
judges) can talk to it. The server is made of:

- api_schemas.py: the request bodies and errors in OpenAI's shape;
- engine.py: the engine that decodes requests on a worker thread (continuous batching, or one at a
  time), and the bound on requests admitted (503 beyond);
- http_guard.py: the API key, body size and body deadline, checked before any route runs;
- app.py: the routes (`create_app`);
- this module: uvicorn, with a deadline on request headers and a cap on connections, and `serve`,
  the function behind the verb.

How a request runs. A request becomes a job of one row per choice, admitted up to 1 + queue_size
jobs (batching off) or max_batch + queue_size (batching on); beyond that the answer is 503 with
Retry-After, so load never piles up unbounded. With batching on, a job joins the rows decoding at
the next step; otherwise it waits its turn. Tokens travel from the engine's thread to the request's
coroutine through an asyncio queue. A client that goes away (a closed stream, a dropped connection)
abandons its job: a waiting job gives its slot back at once, and a decoding one leaves the batch
within one step.

Security defaults: the server listens on 127.0.0.1 unless told otherwise; with an API key (`--api-key`
or $SCRATCHLLM_API_KEY) every /v1 route wants `Authorization: Bearer KEY` (401 otherwise); request
bodies over max_body_bytes get 413; max_tokens is capped by max_tokens_cap; a prompt longer than the
context gets 400. Every error is JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}};
a 500 says only that something failed (the details go to the server log, not to the client).
Connections: a request's headers must arrive within header_timeout_s and its body within
body_timeout_s (slow clients would otherwise hold connections for ever), and at most
max_connections are served at once (a request on one more gets uvicorn's plain-text 503). Bytes that
are not HTTP at all get uvicorn's own plain-text 400, before any of this code runs.
"""

from __future__ import annotations

import os

from scratchllm.core.console import warn
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.app import create_app
from scratchllm.inference.config import API_KEY_ENV, ServeConfig, ServeSettings

__all__ = ["ServeSettings", "create_app", "header_timeout_protocol", "is_loopback", "serve", "server_config"]

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
    app = create_app(cfg.load.model, cfg.settings, device=cfg.load.device, dtype=cfg.load.dtype,
                     quantize=cfg.load.quantize)  # checks the settings
    if announce is not None:
        announce()
    uvicorn.Server(server_config(app, cfg.settings, cfg.log_level)).run()
    return 0
