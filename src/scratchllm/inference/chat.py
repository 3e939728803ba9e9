"""Talking to a model: multi-turn chat sessions, behind `scratchllm chat` and `scratchllm serve`.

This sits at the end of the pipeline, after a model is trained (or imported) and, for an assistant,
instruction-tuned. A conversation is a list of {"role", "content"} messages; the model's prompt style
(`scratchllm.prompts`, stored as `prompt_style` in its config.json; else the model's own chat template
when its tokenizer has one, as Llama 3.x, Qwen2.5/3 and SmolLM2 do; else `plain` for a base model,
which just continues the text) lays it out as one prompt, and the answer is decoded token by token
(`inference.generation.generate_tokens`, with the KV cache) until one of the tokenizer's stop ids
(<|endoftext|>, the template's end-of-turn token such as <|im_end|> or <|eot_id|>), a stop string of
the style, or max_new_tokens. Three pieces:

- `TextStream`: one answer being decoded, as text pieces, with its token count and finish reason.
  The HTTP server (serve.py) decodes its answers with it too.
- `ChatSession`: the conversation, its settings and the context window; testable without a terminal.
- `load_for_chat`: a model directory or name -> model, tokenizer, prompt style.
The terminal loop itself (commands, Ctrl-C, printing) is in cli/chat.py.

The context window: the prompt must leave room for the answer, so it may use at most
`context_length - reserve` tokens with reserve = min(max_new_tokens, context_length // 2). When the
conversation grows past that, whole turns are dropped from the oldest end (the system prompt stays)
and the caller is told how many. An answer cut short by Ctrl-C stays in the history as far as it got,
since that is what the model said and what the next turn should see.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.loader import load, locate
from scratchllm.checkpoint.model_dir import read_model_config
from scratchllm.core.device import resolve_device
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import ChatSettings
from scratchllm.inference.decode_kernels import optimize_for_decoding
from scratchllm.inference.generation import (TextAssembler, check_sampling, encode_prompt, generate_tokens,
                                             make_generators)
from scratchllm.prompts import PromptStyle, choose_style, get_style, stored_style

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
    "length": max_new_tokens; "cancelled": `cancel` was set) describe it.

    `cancel` (a threading.Event) is checked between tokens, so another thread can stop the decoding
    within one token; `delay` seconds are slept after each token (see TOKEN_DELAY_ENV); `on_end(self)`
    is called once when the decoding ends, however it ends (finished, cancelled, closed, interrupted).
    """

    def __init__(
        self,
        model,
        tokenizer,
        ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        stops: Sequence[str] = (),
        cancel: threading.Event | None = None,
        delay: float = 0.0,
        on_end: Callable[["TextStream"], None] | None = None,
    ):
        self.tokens_iter = generate_tokens(model, ids, max_new_tokens, temperature, top_k, top_p, generator=generator,
                                           stop_ids=tokenizer.stop_ids, vocab_limit=tokenizer.vocab_size)
        self.assembler = TextAssembler(tokenizer, stops)
        self.max_new_tokens = max_new_tokens
        self.cancel = cancel
        self.delay = delay
        self.text = ""
        self.tokens = 0
        self.finish_reason: str | None = None
        self.on_end = on_end

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._pieces()
        finally:
            if self.on_end is not None:
                on_end, self.on_end = self.on_end, None
                on_end(self)

    def _cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            return True
        return False

    def _pieces(self) -> Iterator[str]:
        if self._cancelled():
            return
        for token in self.tokens_iter:
            if self._cancelled():
                return
            self.tokens += 1
            piece = self.assembler.push(token)
            if piece:
                self.text += piece
                yield piece
            if self.assembler.stopped:
                self.finish_reason = "stop"
                return
            if self.delay:
                time.sleep(self.delay)
            if self._cancelled():  # before asking the model for another token
                return
        # The token loop ended by itself: after max_new_tokens, or before a stop id.
        self.finish_reason = "length" if self.tokens >= self.max_new_tokens else "stop"
        if piece := self.assembler.finish():
            self.text += piece
            yield piece


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
        s = self.settings
        check_sampling(s.max_new_tokens, s.temperature, s.top_k, s.top_p)
        device = model.tok_emb.weight.device
        self.generator = make_generators(s.seed, 1, device)[0]
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
        check_sampling(self.settings.max_new_tokens, t, self.settings.top_k, self.settings.top_p)
        self.settings.temperature = t

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
        return TextStream(self.model, self.tokenizer, ids, s.max_new_tokens, s.temperature, s.top_k, s.top_p,
                          generator=self.generator if s.temperature > 0 else None, stops=self.style.stop_strings,
                          delay=s.token_delay, on_end=self._record)

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
                  prompt_style: str | None = None) -> tuple[Any, Any, PromptStyle, str]:
    """(model, tokenizer, prompt style, name) of a model/run directory (LoRA adapters merged in) or
    hub name, ready for decoding. The style is `prompt_style`, else the one stored with the model,
    else the model's chat template if its tokenizer has one, else plain."""
    net, tokenizer = load(model, device=resolve_device(device), dtype=dtype, kind="gpt")
    optimize_for_decoding(net)  # inference only: faster CPU matrix-vector products
    stored = stored_style(read_model_config(model)) if locate(model)[0] == "scratchllm" else None
    style = choose_style(prompt_style, stored, tokenizer, "plain")
    name = Path(os.fspath(model)).name or os.fspath(model)
    return net, tokenizer, style, name
