"""Tests for prompts.py: the `template` style lays conversations and instructions out with the model's
chat template, and `choose_style` picks it for a model that has one unless a style is asked for or
stored with the model."""

from __future__ import annotations

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.prompts import STYLE_NAMES, choose_style, get_style
from scratchllm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def qwen(hf_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))


def test_template_style(qwen):
    style = get_style("template", qwen)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert style.format_chat(messages) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                           "<|im_start|>assistant\n")
    assert style.format_chat(messages, add_generation_prompt=False).endswith("Hi<|im_end|>\n")
    # an instruction record is one user message, its input below the instruction
    assert style.format_instruction("Translate to English.", "Bonjour") == style.format_chat(
        [{"role": "user", "content": "Translate to English.\nBonjour"}])
    assert style.format_instruction("Say hi.") == style.format_chat([{"role": "user", "content": "Say hi."}])
    # the answer ends at the token that closes the template's turns (found by rendering one)
    assert style.stop_strings == ["<|im_end|>"] and style.writes_special_tokens
    assert not get_style("alpaca").writes_special_tokens
    with pytest.raises(ScratchLLMError, match=r"message 0: expected role system/user/assistant"):
        style.format_chat([{"role": "tool", "content": "x"}])


def test_template_style_needs_a_template(qwen):
    for tokenizer in (None, Tokenizer.gpt2()):
        with pytest.raises(ScratchLLMError, match=r"prompt style 'template': the model's tokenizer has no chat template"):
            get_style("template", tokenizer)
    with pytest.raises(ScratchLLMError, match=r"unknown prompt style 'chatml'; choose one of: alpaca, phi3, plain, template"):
        get_style("chatml", qwen)
    assert STYLE_NAMES == ("alpaca", "phi3", "plain", "template")


@pytest.mark.parametrize("requested, stored, with_template, fallback, expected", [
    (None, None, True, "plain", "template"),  # a model with a template talks in it by default
    (None, None, False, "plain", "plain"),
    (None, None, False, "alpaca", "alpaca"),
    (None, "alpaca", True, "plain", "alpaca"),  # tuned with alpaca: stays alpaca
    ("phi3", "alpaca", True, "plain", "phi3"),  # asked for
    ("template", None, True, "alpaca", "template"),
])
def test_choose_style(requested, stored, with_template, fallback, expected, qwen):
    tokenizer = qwen if with_template else Tokenizer.gpt2()
    style = choose_style(requested, stored, tokenizer, fallback)
    assert style.name == expected and (style.template is not None) == (expected == "template")
