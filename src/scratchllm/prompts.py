"""Prompt styles: how an instruction (and a conversation) is laid out as text for the model.

An instruction-tuned model only follows instructions written the way it was trained on, so the style
is stored with the model (`prompt_style` in its config.json) and reused by `respond`, `chat` and
`serve`. Styles:
- `alpaca`: the Stanford Alpaca template that Raschka's book (ch. 7) uses.
- `phi3`: Microsoft Phi-3's chat markers, `<|user|>` / `<|assistant|>` (plain text to GPT-2's tokenizer).
- `plain`: no template; a base model just continues the text.
- `template`: the model's own chat template (Llama 3.x, Qwen2.5/3, SmolLM2 ship one with their
  tokenizer; tokenizer/chat_template.py), rendered as transformers' `apply_chat_template` renders it.
  It is the default for a model whose tokenizer has one (`choose_style`).
The response itself is followed by the end-of-text token during training, so generation stops there
(for a prompt laid out by a template also at the special token that closes its turns: `stop_strings`).

Every layout is a `ChatText` (tokenizer/chat_template.py): the text, plus what `Tokenizer.encode_chat`
needs to make control tokens only from the layout's own markup. Text inside a message that spells a
special token (<|im_end|>, <|endoftext|>) is encoded as text, so a user cannot end its turn and write
the next one; the alpaca, phi3 and plain styles write no control tokens at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scratchllm.core.limits import TemplateLimits
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.chat_template import ChatTemplate, ChatText

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class PromptStyle:
    name: str
    template: ChatTemplate | None = field(default=None, compare=False, repr=False)  # the `template` style's

    @property
    def writes_special_tokens(self) -> bool:
        """Whether the text holds the model's control tokens (a chat template writes <|im_start|>, BOS,
        ...): it is then encoded with special-token text allowed, as transformers encodes it."""
        return self.template is not None

    def with_limits(self, limits: TemplateLimits) -> PromptStyle:
        """This style with its template (if any) under `limits`, checked to compile (a one-line error
        if it does not): what `chat` and `serve` run with."""
        if self.template is None:
            return self
        style = dataclasses.replace(self, template=self.template.with_limits(limits))
        style.template.check()
        return style

    def format_instruction(self, instruction: str, input: str = "") -> ChatText:
        """The prompt for one record; the response text follows it directly."""
        if self.template is not None:  # one user message, the input below the instruction
            body = f"{instruction}\n{input}" if input else instruction
            return self.format_chat([{"role": "user", "content": body}], add_generation_prompt=True)
        if self.name == "alpaca":
            text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
            if input:
                text += f"\n\n### Input:\n{input}"
            return ChatText(text + "\n\n### Response:\n")
        if self.name == "phi3":
            body = f"{instruction}\n{input}" if input else instruction
            return ChatText(f"<|user|>\n{body}\n\n<|assistant|>\n")
        return ChatText(f"{instruction}\n{input}" if input else instruction)

    def format_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> ChatText:
        """A conversation [{"role": "system"|"user"|"assistant", "content": ...}, ...] as one prompt.

        Turns are separated by blank lines, as in single-turn records; with `add_generation_prompt`
        the text ends where the next assistant answer begins.
        """
        parts: list[str] = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ScratchLLMError(
                    f"message {i}: expected role system/user/assistant and a string content, got {message!r}"
                )
            if self.template is not None:
                continue  # the template lays the turns out below
            if self.name == "alpaca":
                if role == "system":
                    parts.append(f"{content}\n\n")
                elif role == "user":
                    parts.append(f"### Instruction:\n{content}\n\n")
                else:
                    parts.append(f"### Response:\n{content}\n\n")
            elif self.name == "phi3":
                parts.append(f"<|{role}|>\n{content}\n\n")
            else:
                parts.append(f"{content}\n")
        if self.template is not None:
            return self.template.render(messages, add_generation_prompt=add_generation_prompt)
        text = "".join(parts)
        if self.name == "alpaca":
            if not messages or messages[0].get("role") != "system":
                text = f"{ALPACA_PREAMBLE}\n\n" + text
            return ChatText(text + ("### Response:\n" if add_generation_prompt else ""))
        if self.name == "phi3":
            return ChatText(text + ("<|assistant|>\n" if add_generation_prompt else ""))
        return ChatText(text)

    @property
    def stop_strings(self) -> list[str]:
        """Text that marks the end of an answer: generation stops before it. For a template, the special
        token that closes its turns (<|im_end|>, <|eot_id|>; found by rendering a short conversation the
        first time it is asked); for alpaca and phi3 the start of the next turn."""
        if self.template is not None:
            end = self.template.turn_end_token()
            return [end] if end else []
        if self.name == "alpaca":
            return ["\n\n### Instruction:", "\n### Instruction:"]
        if self.name == "phi3":
            return ["<|user|>", "<|end|>"]
        return []


STYLES = {name: PromptStyle(name) for name in ("alpaca", "phi3", "plain")}


STYLE_NAMES = (*STYLES, "template")  # what `get_style` (and a --prompt-style option) accepts


def get_style(name: str | None, tokenizer: Any = None) -> PromptStyle:
    """The style called `name` (None: plain). "template" is the chat template of `tokenizer`."""
    if name is None:
        return STYLES["plain"]
    if name == "template":
        template = tokenizer.chat_template if tokenizer is not None else None
        if template is None:
            raise ScratchLLMError("prompt style 'template': the model's tokenizer has no chat template "
                                  "(tokenizer_config.json 'chat_template' or chat_template.jinja); "
                                  f"choose one of: {', '.join(STYLES)}")
        template.check()  # a template that does not compile is refused now, not at the first prompt
        return PromptStyle("template", template)
    if name not in STYLES:
        raise ScratchLLMError(f"unknown prompt style {name!r}; choose one of: {', '.join(STYLE_NAMES)}")
    return STYLES[name]


def stored_style(model_config: Mapping[str, Any]) -> str | None:
    """The prompt style recorded in a model directory's config.json, if any."""
    style = model_config.get("prompt_style")
    return style if isinstance(style, str) else None


def choose_style(requested: str | None, stored: str | None, tokenizer: Any, fallback: str) -> PromptStyle:
    """The style to use: the one asked for, else the one stored with the model (what it was tuned
    with), else its chat template when its tokenizer has one, else `fallback`."""
    has_template = tokenizer is not None and tokenizer.chat_template is not None
    return get_style(requested or stored or ("template" if has_template else fallback), tokenizer)
