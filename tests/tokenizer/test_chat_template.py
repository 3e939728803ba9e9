"""Tests for tokenizer/chat_template.py: a model's Jinja chat template renders a conversation to the
text (and, encoded, the ids) that transformers' `apply_chat_template` gives on the same files, in a
sandbox; errors name the template."""

from __future__ import annotations

import datetime

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import ChatTemplate, Tokenizer

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "  You answer in one word.  "}, {"role": "user", "content": "Sky colour?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "日本語で？ 🎉 and <b>tags</b> & \"quotes\""}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("kind", ["llama3", "qwen2", "smollm2"])
def test_renders_like_transformers(kind, add_generation_prompt, hf_tokenizer_dir):
    d = hf_tokenizer_dir(kind)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    for backend in ("python", "tokenizers"):
        tok = Tokenizer.from_hf(d, backend=backend)
        for messages in CONVERSATIONS:
            text = tok.chat_template.render(messages, add_generation_prompt=add_generation_prompt)
            assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            # apply_chat_template tokenizes without the post-processor: the template wrote the BOS itself
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                         return_dict=False)
            assert tok.encode(text, allowed_special="all") == ids


def test_template_sources(hf_tokenizer_dir):
    year = datetime.datetime.now().strftime("%Y")
    llama = Tokenizer.from_hf(hf_tokenizer_dir("llama3")).chat_template
    assert llama.origin.endswith("chat_template.jinja")
    assert llama.render([{"role": "user", "content": "hi"}], add_generation_prompt=True) == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday is {year}.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    qwen = Tokenizer.from_hf(hf_tokenizer_dir("qwen2")).chat_template
    assert qwen.origin.endswith("tokenizer_config.json field 'chat_template'")
    smol = Tokenizer.from_hf(hf_tokenizer_dir("smollm2")).chat_template  # a list of named templates: "default"
    assert smol.origin.endswith("('default')") and smol.source == qwen.source
    assert Tokenizer.from_hf(hf_tokenizer_dir("gpt2")).chat_template is None
    assert Tokenizer.gpt2().chat_template is None


@pytest.mark.parametrize("kind, end", [("llama3", "<|eot_id|>"), ("qwen2", "<|im_end|>\n"), ("smollm2", "<|im_end|>\n")])
def test_turn_end(kind, end, hf_tokenizer_dir):
    assert Tokenizer.from_hf(hf_tokenizer_dir(kind)).chat_template.turn_end() == end


def test_turn_end_of_a_template_that_needs_a_system_message():
    source = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
              "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[/]{% endfor %}")
    assert ChatTemplate(source).turn_end() == "[/]"
    assert ChatTemplate("{{ 'no messages here' }}").turn_end() == ""


@pytest.mark.parametrize("source, message", [
    ("{{ raise_exception('only user and assistant roles') }}", r"my template: TemplateError: only user and assistant roles"),
    ("{% for %}", r"my template: Jinja syntax error on line 1"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", r"SecurityError: access to attribute '__class__'"),
    ("{{ messages.append(1) }}", r"SecurityError: access to attribute 'append' of 'list'"),
    ("{% set ns = namespace(_secret=1) %}", r"SecurityError: a chat template may not set '_secret'"),
    ("{{ undefined_function() }}", r"UndefinedError: 'undefined_function' is undefined"),
])
def test_errors_and_the_sandbox(source, message):
    with pytest.raises(ScratchLLMError, match=message):
        ChatTemplate(source, origin="my template").render([{"role": "user", "content": "x"}])


def test_helpers_transformers_provides():
    template = ChatTemplate(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}"
        "|{{ ns.n }}|{{ bos_token }}|{{ extra }}", {"bos_token": "<s>"})
    messages = [{"role": "user", "content": "é <b>"}, {"role": "assistant", "content": "x", "name": None},
                {"role": "user", "content": "dropped by break"}]
    # tojson keeps non-ASCII and HTML characters; None values are dropped from messages
    assert template.render(messages, extra="E") == \
        '{"role": "user", "content": "é <b>"}{"role": "assistant", "content": "x"}|2|<s>|E'
    assert messages[1] == {"role": "assistant", "content": "x", "name": None}  # the caller's messages are untouched
