"""Small Hugging Face tokenizer directories for tests, built here with the `tokenizers` library's BPE
trainer on ../shared/data text (nothing is downloaded), laid out as real models lay theirs out:

- "gpt2":    ByteLevel pre-tokenizer with GPT-2's regex, <|endoftext|>, no template.
- "llama3":  Llama 3's Split regex (digits in groups of up to three) + ByteLevel, ignore_merges, a
             TemplateProcessing post-processor that puts <|begin_of_text|> first, eos <|eot_id|>, a
             Llama 3 style chat template in chat_template.jinja.
- "qwen2":   NFC normalizer + Qwen2's Split regex (single digits) + ByteLevel, ChatML specials,
             non-special added tokens <think> / </think>, a ChatML template in tokenizer_config.json,
             tokenizer_class Qwen2Tokenizer (which transformers 5 rebuilds from vocab and merges).
- "smollm2": Digits(individual) + ByteLevel with GPT-2's regex, ChatML, bos <|im_start|>, the template
             as a list of named templates in tokenizer_config.json.

The templates are written here from the formats' documentation (ChatML: <|im_start|>ROLE\\nTEXT<|im_end|>;
Llama 3: <|start_header_id|>ROLE<|end_header_id|>\\n\\nTEXT<|eot_id|>), not copied from model files.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SHARED_DATA

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system = 'Today is ' + strftime_now('%Y') + '.' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('roles must be user or assistant after the system message, got ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Text the vocabularies learn from: English, and enough other scripts for multi-byte merges.
EXTRA_TEXT = ("Café, naïve, façade, Straße, Ünïcödé. 日本語のテキストです。東京は日本の首都です。中文文本，北京。"
              "한국어 텍스트입니다. Привет, мир! Γειά σου κόσμε. 🎉🚀😀👍🏽 ✓ → ∑ x² ½ 2024-01-31 3.14159 1,000,000 ")

KINDS = ("gpt2", "llama3", "qwen2", "smollm2")


def corpus() -> list[str]:
    verdict = (SHARED_DATA / "the-verdict.txt").read_text(encoding="utf-8")
    shakespeare = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    return [verdict, shakespeare, EXTRA_TEXT * 20]


def build(kind: str, out: Path, vocab_size: int = 1200) -> Path:
    """Train a tokenizer of `kind` and write its Hugging Face directory (tokenizer.json + config)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    config: dict = {"model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if kind == "gpt2":
        specials = ["<|endoftext|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        config.update(tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>")
    elif kind == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|reserved_special_token_0|>"]
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"), byte_level])
        config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    elif kind == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), byte_level])
        config.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                      unk_token=None, chat_template=CHATML_TEMPLATE)
    elif kind == "smollm2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|im_start|>", eos_token="<|im_end|>",
                      unk_token="<|endoftext|>", pad_token="<|im_end|>",
                      chat_template=[{"name": "default", "template": CHATML_TEMPLATE},
                                     {"name": "plain", "template": "{{ messages[-1]['content'] }}"}])
    else:
        raise ValueError(kind)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if kind == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if kind == "qwen2":  # Qwen3's reasoning markers are added tokens that are not special
        tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])
        config["added_tokens_decoder"] = {
            str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": t in specials}
            for t in [*specials, "<think>", "</think>"]}
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    if kind == "llama3":
        (out / "chat_template.jinja").write_text(LLAMA3_TEMPLATE, encoding="utf-8")
    return out


# Texts every parity test runs: unicode, CJK, emoji, digit runs, whitespace runs, contractions, text
# that spells special and added tokens, the empty string.
TEXTS = [
    "", " ", "Hello, world!", " Hello world", "I'LL say it: you're right, it's FINE, they'd've known.",
    "12345678901234567890", "3.14159 and 1,000,000 and 2024-01-31", "x1y22z333w4444",
    "  two  spaces   three    four", "\n\n\nnewlines\n\n", "tabs\tand\r\ncarriage\rreturns \t \n ",
    "日本語のテキストです。東京は日本の首都です。", "中文文本，北京。한국어 텍스트입니다.", "Привет, мир! Γειά σου κόσμε.",
    "emoji 🎉🚀😀👍🏽 and ✓ → ∑ x² ½", "café vs cafe\u0301 (combining accent) and Å vs A\u030a", "Ünïcödé Straße façade",
    "<|endoftext|>", "a<|endoftext|>b", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_end", "|im_end|>", "<<|eot_id|>>", "\u00a0non-breaking\u2003em space\u3000ideographic",
    "control \x00\x01\x1f\x7f chars", "a" * 300, "=" * 97 + "!", "word " * 50,
]
