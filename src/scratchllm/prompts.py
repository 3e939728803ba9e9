"""Prompt styles: how an instruction (and a conversation) is laid out as text for the model.

An instruction-tuned model only follows instructions written the way it was trained on, so the style
is stored with the model (`prompt_style` in its config.json) and reused by `respond`, `chat` and
`serve`. Styles:
- `alpaca`: the Stanford Alpaca template that Raschka's book (ch. 7) uses.
- `phi3`: Microsoft Phi-3's chat markers, `<|user|>` / `<|assistant|>` (plain text to GPT-2's tokenizer).
- `plain`: no template; a base model just continues the text.
The response itself is followed by `<|endoftext|>` during training, so generation stops there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchLLMError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class PromptStyle:
    name: str

    def format_instruction(self, instruction: str, input: str = "") -> str:
        """The prompt for one record; the response text follows it directly."""
        if self.name == "alpaca":
            text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
            if input:
                text += f"\n\n### Input:\n{input}"
            return text + "\n\n### Response:\n"
        if self.name == "phi3":
            body = f"{instruction}\n{input}" if input else instruction
            return f"<|user|>\n{body}\n\n<|assistant|>\n"
        return f"{instruction}\n{input}" if input else instruction

    def format_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
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
        text = "".join(parts)
        if self.name == "alpaca":
            if not messages or messages[0].get("role") != "system":
                text = f"{ALPACA_PREAMBLE}\n\n" + text
            return text + ("### Response:\n" if add_generation_prompt else "")
        if self.name == "phi3":
            return text + ("<|assistant|>\n" if add_generation_prompt else "")
        return text

    @property
    def stop_strings(self) -> list[str]:
        """Text that marks the start of the next turn: generation stops before it."""
        if self.name == "alpaca":
            return ["\n\n### Instruction:", "\n### Instruction:"]
        if self.name == "phi3":
            return ["<|user|>", "<|end|>"]
        return []


STYLES = {name: PromptStyle(name) for name in ("alpaca", "phi3", "plain")}


def get_style(name: str | None) -> PromptStyle:
    if name is None:
        return STYLES["plain"]
    if name not in STYLES:
        raise ScratchLLMError(f"unknown prompt style {name!r}; choose one of: {', '.join(STYLES)}")
    return STYLES[name]


def stored_style(model_config: Mapping[str, Any]) -> str | None:
    """The prompt style recorded in a model directory's config.json, if any."""
    style = model_config.get("prompt_style")
    return style if isinstance(style, str) else None
