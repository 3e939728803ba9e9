"""The transformer family on one set of parts: Llama-style options checked against transformers'
Llama, GPT-3 presets and the `info --compare` accounting."""

from __future__ import annotations

import pytest
import torch

from scratchllm.checkpoint import load
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.info import model_info, parameter_breakdown
from scratchllm.models.gpt import GPT, KVCache

import transformers  # noqa: E402  (a test dependency: never skipped)


def hf_llama(tmp_path, **overrides):
    fields = dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=96, rope_theta=500.0,
    )
    config = transformers.LlamaConfig(**{**fields, **overrides})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_key_value_heads": 4}, {"num_key_value_heads": 1, "tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True}],
    ids=["gqa", "mha", "mqa-tied", "biases"],
)
def test_llama_logits_match_transformers(tmp_path, overrides):
    hf = hf_llama(tmp_path, **overrides)
    ours = load(tmp_path)[0]
    assert ours.config.norm == "rmsnorm" and ours.config.position == "rope" and ours.config.mlp == "swiglu"
    ids = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.std() > 0.01  # a real comparison, not of two near-zero tensors
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_llama_greedy_decoding_matches_transformers_generate(tmp_path):
    hf = hf_llama(tmp_path)
    ours = load(tmp_path)[0]
    prompt = torch.randint(0, 300, (1, 7))
    expected = hf.generate(prompt, do_sample=False, max_new_tokens=25, pad_token_id=0)[0, 7:].tolist()
    ids, got = prompt, []
    cache = KVCache.allocate(ours.config, 1, 64, "cpu", torch.float32)
    with torch.no_grad():
        for _ in range(25):
            next_id = ours(ids, cache=cache)[0, -1].argmax()
            got.append(int(next_id))
            ids = next_id.view(1, 1)
    assert got == expected


def test_llama_kv_cache_equals_full_recompute_with_grouped_query_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("llama-tiny", vocab_size=97)).eval()
    idx = torch.randint(0, 97, (2, 40))
    cache = KVCache.allocate(model.config, 2, 64, "cpu", torch.float32)
    assert cache.keys[0].shape == (2, 2, 64, 32)  # two key/value heads are cached, not four
    with torch.no_grad():
        full = model(idx)
        steps = [model(idx[:, :11], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(11, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_encoder_option_attends_both_ways():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=50, causal=False)).eval()
    idx = torch.randint(0, 50, (1, 10))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 50
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position sees the last token


@pytest.mark.parametrize(
    "preset, paper",
    [("gpt3-small", 125e6), ("gpt3-medium", 350e6), ("gpt3-large", 760e6), ("gpt3-xl", 1.3e9),
     ("gpt3-2.7b", 2.7e9), ("gpt3-6.7b", 6.7e9), ("gpt3-13b", 13e9), ("gpt3-175b", 175e9)],
)
def test_gpt3_presets_have_the_papers_sizes(preset, paper):
    total = sum(parameter_breakdown(GPTConfig.from_preset(preset)).values())
    assert abs(total - paper) / paper < 0.03


def test_llama2_7b_shape_has_its_published_parameter_count():
    assert model_info("llama2-7b")["parameters"] == 6_738_415_616


def test_info_compare_prints_a_row_per_model_and_draws_the_chart(tmp_path, capsys):
    out = tmp_path / "sizes.png"
    assert main(["info", "--compare", "gpt2-small", "gpt3-175b", "llama-tiny", "--out", str(out)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["gpt2-small", "gpt3-175b", "llama-tiny"]
    assert "175G" in rows[2] and "4.5 MiB" in rows[2]  # bf16 KV cache per token: 2 * 96 * 12288 * 2 bytes
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["info"]) == 2
    assert "give either --model or --compare" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields, message",
    [({"norm": "batchnorm"}, "'norm' must be one of layernorm, rmsnorm"),
     ({"n_kv_heads": 3}, "n_heads \\(4\\) must be a multiple of n_kv_heads \\(3\\)"),
     ({"position": "alibi"}, "'position' must be one of learned, rope, sinusoidal")],
)
def test_family_options_are_validated(fields, message):
    with pytest.raises(ScratchLLMError, match=message):
        GPTConfig.from_preset("gpt-tiny", **fields)
