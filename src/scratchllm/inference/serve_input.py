"""What `scratchllm serve` does with what a client sends before the model sees it (http_guard.py and
app.py call these): its API key compared with the server's, and its prompt or messages turned into
token ids off the event loop, with a failure told to the client as a 400 that names the cause.

The chat template is the model's code, so laying messages out can take up to its time limit
(core/limits.py); that runs on a worker thread (`prompt_ids`), never on the event loop, so `/health`
and other clients are answered meanwhile. A template that refuses the messages with
raise_exception(...) gets 400 with the template's own message; one that fails otherwise (a Jinja error,
a limit) gets 400 naming the cause, without the template's file; a text the tokenizer cannot encode
(a regex past its time limit, a lone surrogate) gets 400 too, its details in the server log.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import encode_prompt
from scratchllm.tokenizer.chat_template import ChatTemplateError

log = logging.getLogger("scratchllm.serve")


def key_matches(authorization: str, key: str) -> bool:
    """Whether an Authorization header ("Bearer KEY", read as Latin-1 as HTTP headers are) carries `key`
    (printable ASCII: `config.check_api_key`), after the same stripping on both sides. Compared in
    constant time, as bytes."""
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), key.strip().encode("utf-8"))


async def prompt_ids(tokenizer, text: Any = None, *, style=None, messages: list[dict[str, str]] | None = None) -> list[int]:
    """Ids of a completion's `text`, or of chat `messages` laid out by `style`, computed on a worker
    thread. A failure is a ScratchLLMError (see `client_error`)."""
    if messages is not None:
        return await asyncio.to_thread(lambda: encode_prompt(tokenizer, style.format_chat(messages, add_generation_prompt=True)))
    return await asyncio.to_thread(encode_prompt, tokenizer, text)


def client_error(exc: ScratchLLMError) -> tuple[int, str, str]:
    """(status, message, code) to answer a request whose prompt failed with `exc`."""
    if isinstance(exc, ChatTemplateError):
        if exc.raised:
            return 400, exc.cause, "chat_template_refused"
        log.warning("chat template failed: %s", exc)
        return 400, f"the model's chat template failed on these messages: {exc.cause}", "chat_template_error"
    log.warning("cannot encode a prompt: %s", exc)
    return 400, "the model's tokenizer cannot encode this prompt (the server log has the details)", "invalid_prompt"
