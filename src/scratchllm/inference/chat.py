"""Talking to a model: multi-turn chat sessions, behind `scratchllm chat` and `scratchllm serve`.

This sits at the end of the pipeline, after a model is trained (or imported) and, for an assistant,
instruction-tuned. A conversation is a list of {"role", "content"} messages; the model's prompt style
(`scratchllm.prompts`, stored as `prompt_style` in its config.json; else the model's own chat template
when its tokenizer has one, as Llama 3.x, Qwen2.5/3 and SmolLM2 do; else `plain` for a base model,
which just continues the text) lays it out as one prompt, and the answer is decoded token by token
(one `RowState` through `inference.generation.decode_rows`, with the KV cache) until one of the
tokenizer's stop ids (<|endoftext|>, the template's end-of-turn token such as <|im_end|> or <|eot_id|>),
a stop string of the style, or max_new_tokens. Three pieces:

- `TextStream`: one answer being decoded, as text pieces, with its token count and finish reason.
- `ChatSession`: the conversation, its settings (`ChatSettings`, a `SamplingConfig` with a system
  prompt) and the context window; testable without a terminal.
- `load_for_chat`: a model directory or name -> model, tokenizer, prompt style, name (what
  session.py `load_session` loads, as a tuple).
The terminal loop itself (commands, Ctrl-C, printing) is in cli/chat.py.

The context window: the prompt must leave room for the answer, so it may use at most
`context_length - reserve` tokens with reserve = min(max_new_tokens, context_length // 2). When the
conversation grows past that, whole turns are dropped from the oldest end (the system prompt stays)
and the caller is told how many. An answer cut short by Ctrl-C stays in the history as far as it got,
since that is what the model said and what the next turn should see.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import ChatSettings
from scratchllm.inference.generation import decode_rows, encode_prompt
from scratchllm.inference.rows import RowState
from scratchllm.inference.sampling import make_generators
from scratchllm.inference.session import load_session
from scratchllm.prompts import PromptStyle, get_style

# Seconds to sleep after each token when $SCRATCHLLM_TOKEN_DELAY is set: a hook that slows a tiny test
# model down to a human pace, so tests (and demos) can interrupt an answer mid-stream.
TOKEN_DELAY_ENV = "SCRATCHLLM_TOKEN_DELAY"


def token_delay_from_env() -> float:
    text = os.environ.get(TOKEN_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        delay = float(text)
    except ValueError:
        raise ScratchLLMError(f"${TOKEN_DELAY_ENV} is {text!r}, expected a number of seconds") from None
    if not delay >= 0:
        raise ScratchLLMError(f"${TOKEN_DELAY_ENV} is {text!r}, expected a number of seconds >= 0")
    return delay


# ------------------------------------------------------------------------------------------------
# One answer, decoded piece by piece


class TextStream:
    """Iterate for the answer's text pieces (whole characters, stop strings cut off); afterwards
    `text`, `tokens` (new tokens decoded) and `finish_reason` ("stop": a stop id or a stop string;
    "length": max_new_tokens; "cancelled": `cancel` was set) describe it. The answer is one `RowState`
    (`row`), decoded alone by `generation.decode_rows`.

    `cancel` (a threading.Event) is checked between tokens, so another thread can stop the decoding
    within one token; `delay` seconds are slept after each token (see TOKEN_DELAY_ENV); `on_end(self)`
    is called once when the decoding ends, however it ends (finished, cancelled, closed, interrupted).
    """

    def __init__(self, model, row: RowState, cancel: threading.Event | None = None, delay: float = 0.0,
                 on_end: Callable[["TextStream"], None] | None = None):
        self.model, self.row = model, row
        self.cancel = cancel
        self.delay = delay
        self.on_end = on_end

    @property
    def text(self) -> str:
        return self.row.text

    @property
    def tokens(self) -> int:
        return self.row.new_tokens

    @property
    def finish_reason(self) -> str | None:
        return self.row.finish_reason

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._pieces()
        finally:
            if self.on_end is not None:
                on_end, self.on_end = self.on_end, None
                on_end(self)

    def _cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.row.finish("cancelled")
            return True
        return False

    def _pieces(self) -> Iterator[str]:
        if self._cancelled():
            return
        for step in decode_rows(self.model, [self.row]):
            for _, piece in step:
                if piece:
                    yield piece
            if self.row.finished:
                return
            if self.delay:
                time.sleep(self.delay)
            if self._cancelled():  # before asking the model for another token
                return


# ------------------------------------------------------------------------------------------------
# A conversation


class ChatSession:
    """A multi-turn conversation with one model.

    `send(text)` adds a user turn and returns a `TextStream` of the answer; the answer joins the
    history when the stream ends, also when it is closed early (Ctrl-C): the partial answer is kept.
    `reset()` forgets the turns, `set_system` / `set_temperature` change the settings, `handle(line)`
    runs a /command typed in a chat box.
    """

    COMMANDS = "/reset, /system TEXT, /temperature X, /quit"

    def __init__(self, model, tokenizer, style: PromptStyle | str | None = None, settings: ChatSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or ChatSettings()
        self.settings.check_template_limits()
        style = style if isinstance(style, PromptStyle) else get_style(style, tokenizer)
        self.style = style.with_limits(self.settings)  # a template that does not compile is refused here
        device = model.tok_emb.weight.device
        self.generator = make_generators(self.settings.seed, 1, device)[0]
        self.turns: list[dict[str, str]] = []  # user and assistant messages, oldest first
        self.dropped = 0  # turns dropped from the oldest end by the latest `send`

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def prompt_budget(self) -> int:
        """Most tokens the prompt may use: the context minus the room kept for the answer."""
        ctx = self.context_length
        return ctx - min(self.settings.max_new_tokens, ctx // 2)

    def messages(self, turns: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + (self.turns if turns is None else turns)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_prompt(self.tokenizer, self.style.format_chat(messages, add_generation_prompt=True))

    def reset(self) -> None:
        self.turns.clear()

    def set_system(self, text: str | None) -> None:
        self.settings.system = text or None

    def set_temperature(self, value: float | str) -> None:
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise ScratchLLMError(f"temperature must be a number >= 0 (0 = greedy), got {value!r}") from None
        self.settings = dataclasses.replace(self.settings, temperature=t)  # checked as the settings are

    def fit(self, turns: list[dict[str, str]]) -> tuple[list[int], int]:
        """(prompt ids, turns dropped): drop the oldest turns until the prompt fits `prompt_budget`.

        A user message and the answer that follows it go together; the newest user message is never
        dropped, and if it alone does not fit, that is an error naming the sizes.
        """
        dropped = 0
        while True:
            ids = self.encode(self.messages(turns[dropped:]))
            if len(ids) <= self.prompt_budget:
                return ids, dropped
            if dropped >= len(turns) - 1:
                raise ScratchLLMError(
                    f"the message makes a prompt of {len(ids)} tokens, but the model's context holds "
                    f"{self.context_length} with {self.context_length - self.prompt_budget} kept for the answer; "
                    "shorten it (or the system prompt), or lower max_new_tokens"
                )
            dropped += 2 if turns[dropped]["role"] == "user" and dropped + 2 < len(turns) else 1

    def send(self, text: str) -> TextStream:
        """Add the user's message; return the answer's TextStream (iterate it to decode)."""
        if not isinstance(text, str):
            raise ScratchLLMError(f"message must be a str, got {type(text).__name__}")
        turns = self.turns + [{"role": "user", "content": text}]
        ids, self.dropped = self.fit(turns)  # raises before the history changes
        self.turns = turns[self.dropped :]
        s = self.settings
        row = RowState.for_text(ids, s, self.tokenizer, self.style.stop_strings, None if s.greedy else self.generator)
        return TextStream(self.model, row, delay=s.token_delay, on_end=self._record)

    def _record(self, answer: TextStream) -> None:
        self.turns.append({"role": "assistant", "content": answer.text})

    def say(self, text: str) -> str:
        """The whole answer to `text` (send + decode)."""
        return "".join(self.send(text))

    def handle(self, line: str) -> str | None:
        """Run a /command; return the note to show, or None for /quit. Raises ScratchLLMError when
        the command is unknown or its argument is bad."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/quit":
            return None
        if name == "/reset":
            self.reset()
            return "conversation reset"
        if name == "/system":
            self.set_system(arg)
            return f"system prompt set to {arg!r}" if arg else "system prompt cleared"
        if name == "/temperature":
            self.set_temperature(arg)
            return f"temperature set to {self.settings.temperature:g}"
        if name == "/help":
            return f"commands: {self.COMMANDS}"
        raise ScratchLLMError(f"unknown command {name!r}; commands: {self.COMMANDS}")


# ------------------------------------------------------------------------------------------------
# Loading a model to talk to


def load_for_chat(model: str, device: str = "auto", dtype: str | None = None,
                  prompt_style: str | None = None, quantize: str | None = None) -> tuple[Any, Any, PromptStyle, str]:
    """(model, tokenizer, prompt style, name) of `session.load_session` (its fallback style: plain)."""
    session = load_session(model, device, dtype, prompt_style, quantize=quantize)
    return session.model, session.tokenizer, session.style, session.name
