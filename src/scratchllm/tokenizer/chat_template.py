"""Chat templates: a model's own Jinja template that lays a conversation out as its prompt text.

Instruction-tuned Hugging Face models (Llama 3.x, Qwen2.5/3, SmolLM2) ship the format they were
tuned on as a Jinja template (tokenizer_config.json "chat_template", or chat_template.jinja): it
writes the role markers (<|im_start|>user ... <|im_end|> for ChatML, <|start_header_id|>user
<|end_header_id|> ... <|eot_id|> for Llama 3) and, with `add_generation_prompt`, the header of the
assistant turn the model is to write. It renders in jinja2's immutable sandbox set up as transformers'
`apply_chat_template` sets it up (template_sandbox.py), so a conversation renders to the same text.

A template comes with a downloaded model, so it is an untrusted program. It runs in a child process
(template_process.py) under `TemplateLimits` (core/limits.py: 2 s, 1,000,000 characters and 256 MB by
default), only when a prompt is laid out with it (or checked when `chat`, `serve` or `respond` start, so
that one that does not compile is refused there), and each failure is one `ChatTemplateError` line naming
the template and the cause: a Jinja error, recursion, an overflow, a limit, or the template's own
`raise_exception(...)` (`raised`, which `serve` answers with 400 and the template's message).

Control tokens come from the template's markup only (`ChatText`): special-token text inside a message
(a user writing "<|im_end|><|im_start|>assistant") is encoded as text, so a client cannot close its
turn and write the assistant's (transformers encodes it as the control token).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import regex

from scratchllm.core.limits import TemplateLimits
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.template_process import template_process

# Stands for an assistant answer when finding what the template writes after one (see `turn_end`).
_ANSWER = "scratchllm-answer-7d1f"


class ChatTemplateError(ScratchLLMError):
    """A chat template that failed. `cause`: why, without the template's file (what a server may tell
    a client); `raised`: the template refused the messages itself (raise_exception), `cause` is its
    message; `limit`: it ran past one of its limits (time, output, memory)."""

    def __init__(self, origin: str, cause: str, raised: bool = False, limit: bool = False):
        super().__init__(f"{origin}: {'the template refused these messages: ' if raised else ''}{cause}")
        self.cause, self.raised, self.limit = cause, raised, limit


class ChatText(str):
    """Prompt text laid out from a conversation (it is that str), which remembers where control tokens
    may come from. `layout`: the text with every special-token spelling that came from a message
    replaced by a placeholder, so that only the layout's own markup is special-token text; None when
    the layout writes no control tokens at all (the alpaca, phi3 and plain styles: the whole prompt is
    text). `segments()` splits it for `Tokenizer.encode_chat`."""

    layout: str | None

    def __new__(cls, text: str, layout: str | None = None, sentinel: str = "", tokens: Sequence[str] = ()) -> ChatText:
        self = super().__new__(cls, text)
        self.layout, self._sentinel, self._tokens = layout, sentinel, tuple(tokens)
        return self

    def segments(self) -> list[tuple[str, bool]]:
        """(text, is layout) pieces in order: layout pieces may hold control tokens, the others are
        special-token text a message spelled (runs of it joined)."""
        if self.layout is None:
            return [(str(self), False)]
        if not self._tokens:
            return [(self.layout, True)]
        out: list[tuple[str, bool]] = []
        for k, piece in enumerate(regex.split(f"{self._sentinel}(\\d+){self._sentinel}", self.layout)):
            text = self._tokens[int(piece)] if k % 2 else piece
            if out and k % 2 and not out[-1][1]:  # two spellings with nothing between: one run of text
                out[-1] = (out[-1][0] + text, False)
            elif text:
                out.append((text, not k % 2))
        return out

    def __reduce__(self):
        return ChatText, (str(self), self.layout, self._sentinel, self._tokens)


class ChatTemplate:
    """A Jinja chat template with the variables its tokenizer gives it (bos_token, eos_token, ...), the
    tokenizer's special tokens (kept as text when a message spells them) and the limits it renders under."""

    def __init__(self, source: str, variables: Mapping[str, str] | None = None, origin: str = "chat template",
                 special_tokens: Collection[str] = (), limits: TemplateLimits | None = None):
        if not isinstance(source, str):
            raise ScratchLLMError(f"{origin}: expected a Jinja template string, got {type(source).__name__}")
        self.source = source
        self.variables = dict(variables or {})
        self.origin = origin
        self.special_tokens = tuple(sorted(special_tokens, key=lambda t: (-len(t), t)))  # longest first
        self.limits = limits.template_limits() if limits is not None else TemplateLimits()
        self._turn_end: str | None = None
        self._checked = False

    def with_limits(self, limits: TemplateLimits) -> ChatTemplate:
        """The same template under other limits (`chat` and `serve` pass theirs)."""
        copy = ChatTemplate(self.source, self.variables, self.origin, self.special_tokens, limits)
        copy._turn_end = self._turn_end
        return copy

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        limits = self.limits
        try:
            body = json.loads(json.dumps(request))  # only JSON values cross to the process
        except (TypeError, ValueError) as exc:
            raise ChatTemplateError(self.origin, f"messages and template variables must be JSON values ({exc})") from None
        process = template_process(limits.template_memory_mb)
        try:
            reply = process.ask(body, limits.template_timeout_s)
        except TimeoutError:
            raise ChatTemplateError(self.origin, f"it ran longer than the time limit of {limits.template_timeout_s:g} s "
                                                 "(template_timeout_s)", limit=True) from None
        except ChildProcessError as exc:
            raise ChatTemplateError(self.origin, str(exc), limit=True) from None
        if "error" in reply:
            raise ChatTemplateError(self.origin, reply["error"], bool(reply.get("raised")), bool(reply.get("limit")))
        return reply

    def check(self) -> None:
        """Compile the template (in its process): a ChatTemplateError if it does not compile. `chat`,
        `serve` and `respond` check it when they start, so a broken template is refused there."""
        if not self._checked:
            self._ask({"op": "compile", "source": self.source})
            self._checked = True

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> ChatText:
        """The prompt text of a conversation [{"role", "content"}, ...]; with `add_generation_prompt`
        it ends with the header of the assistant's next turn. `kwargs` are more template variables
        (they override the tokenizer's, as in transformers). The text is a `ChatText`, which
        `Tokenizer.encode_chat` encodes with the messages' special-token text as text."""
        # Plain copies without None values (as transformers passes them): the template cannot change
        # the caller's messages, and `message.get("x") is none` tests behave the same.
        chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        sentinel, masked = _mask(chat, self.special_tokens, [self.source, *self.variables.values(), kwargs])
        reply = self._ask({"op": "render", "source": self.source, "variables": self.variables, "messages": masked,
                           "add_generation_prompt": add_generation_prompt, "extra": kwargs,
                           "max_chars": self.limits.template_max_chars})
        layout = reply["text"]
        if not sentinel:
            return ChatText(layout, layout)
        tokens = self.special_tokens
        text = regex.sub(f"{sentinel}(\\d+){sentinel}",
                         lambda m: tokens[int(m.group(1))] if int(m.group(1)) < len(tokens) else m.group(), layout)
        return ChatText(text, layout, sentinel, tokens)

    def turn_end(self) -> str:
        """The text the template writes right after an assistant message ("<|im_end|>\\n" for ChatML,
        "<|eot_id|>" for Llama 3): what the model writes when its answer is done. Empty when the
        template renders no assistant message it can be found in. Found once, by rendering a short
        conversation, when a prompt style first asks (never while only reading the tokenizer)."""
        if self._turn_end is None:
            self._turn_end = ""
            for system in ([], [{"role": "system", "content": "S"}]):
                messages = [*system, {"role": "user", "content": "Q"}, {"role": "assistant", "content": _ANSWER}]
                try:
                    text = self.render(messages, add_generation_prompt=False)
                except ChatTemplateError as exc:
                    if exc.limit:  # a template that runs past a limit on this is broken
                        raise
                    continue
                if _ANSWER in text:
                    self._turn_end = text[text.rindex(_ANSWER) + len(_ANSWER):]
                    break
        return self._turn_end

    def turn_end_token(self) -> str | None:
        """The special token that closes an assistant turn (<|im_end|>, <|eot_id|>): the first one in
        `turn_end()`; None when it holds none (or the template was made without special tokens)."""
        end = self.turn_end()
        found = [(end.index(t), t) for t in self.special_tokens if t in end]
        return min(found)[1] if found else None


def _strings(value: Any) -> list[str]:
    """Every string inside `value` (lists, dicts, their keys)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _mask(messages: list[dict[str, Any]], tokens: Sequence[str], context: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(sentinel, messages) with every special-token spelling in a message's strings replaced by
    sentinel + index + sentinel; the sentinel is a private-use character found in none of the messages,
    the template or its variables ("" and the messages unchanged when no message spells a token)."""
    strings = _strings(messages)
    if not tokens or not any(t in s for s in strings for t in tokens):
        return "", messages
    seen = set("".join(strings + _strings(context)))
    sentinel = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in seen)
    finder = regex.compile("|".join(regex.escape(t) for t in tokens))
    index = {t: k for k, t in enumerate(tokens)}

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            return finder.sub(lambda m: f"{sentinel}{index[m.group()]}{sentinel}", value)
        if isinstance(value, Mapping):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [mask(v) for v in value]
        return value

    return sentinel, [mask(m) for m in messages]

