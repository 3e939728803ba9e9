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
from tests.helpers import drawn_bars

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


def test_the_comparison_chart_draws_each_models_total_and_its_shares():
    from scratchllm.evaluation.inspect import parameter_comparison_figure

    names = ["gpt2-small", "gpt3-175b", "llama-tiny"]
    infos = [model_info(name) for name in names]
    totals = [sum(i["breakdown"].values()) for i in infos]
    ax_total, ax_share = parameter_comparison_figure(infos).axes[:2]
    assert drawn_bars(ax_total) == list(zip(names, totals))  # first model on top
    assert ax_total.get_xscale() == "log"
    groups = list(infos[0]["breakdown"])
    assert [t.get_text() for t in ax_share.get_legend().get_texts()] == groups
    # ax_share holds one bar per group and model, drawn group by group, left to right within a row
    segments = [b.get_width() for b in ax_share.patches]
    for g, group in enumerate(groups):
        for m, (info, total) in enumerate(zip(infos, totals)):
            bar = ax_share.patches[g * len(infos) + m]
            assert bar.get_y() + bar.get_height() / 2 == pytest.approx(len(infos) - 1 - m)
            assert bar.get_width() == pytest.approx(100 * info["breakdown"][group] / total)
            assert bar.get_x() == pytest.approx(sum(segments[h * len(infos) + m] for h in range(g)))


@pytest.mark.parametrize(
    "fields, message",
    [({"norm": "batchnorm"}, "'norm' must be one of layernorm, rmsnorm"),
     ({"n_kv_heads": 3}, "n_heads \\(4\\) must be a multiple of n_kv_heads \\(3\\)"),
     ({"position": "alibi"}, "'position' must be one of learned, rope, sinusoidal")],
)
def test_family_options_are_validated(fields, message):
    with pytest.raises(ScratchLLMError, match=message):
        GPTConfig.from_preset("gpt-tiny", **fields)


# --------------------------------------------------------------------------------------------------
# The switches of today's small models (Llama 3.x, Qwen2.5, Qwen3, SmolLM2), at toy size

LLAMA3_SCALING = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_context_length": 32}
MODERN = {
    "qwen3-like": dict(qk_norm=True, head_dim=48),  # heads wider than emb_dim / n_heads = 32
    "llama3-scaled": dict(rope_scaling=LLAMA3_SCALING, tie_embeddings=True),
    "qwen2-like": dict(qkv_bias=True, bias=False, tie_embeddings=True),
}


def modern(name: str, **more) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("llama-tiny", vocab_size=97, **{**MODERN[name], **more})).eval()
    with torch.no_grad():  # norm scales and biases away from their init, so that a wrong one shows
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(MODERN))
def test_modern_switches_accounting_equals_the_model(name):
    model = modern(name)
    config = model.config
    assert parameter_breakdown(config) == model.parameter_breakdown()
    assert model_info(config)["parameters"] == model.num_parameters()
    if config.qk_norm:  # the query/key scales are norms, one of head_dim per block each
        assert model.parameter_breakdown()["norms"] == (2 * 4 + 1) * 128 + 4 * 2 * 48
    # FLOPs: 2 per weight of every matrix a token goes through (the head's too, tied or not) plus
    # attention's scores and weighted sum, 2 * T * n_heads * head_dim each per layer
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks."))
    T = config.context_length
    forward = 2 * (matrices + config.vocab_size * config.emb_dim) + 4 * config.n_layers * T * config.n_heads * config.head_dim
    assert model.flops_per_token(training=False) == forward
    assert model_info(config)["kv_cache_bytes_per_token"]["bfloat16"] == 2 * sum(
        k.numel() for k in KVCache.allocate(config, 1, 1, "meta", torch.bfloat16).keys + KVCache.allocate(
            config, 1, 1, "meta", torch.bfloat16).values)


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
@pytest.mark.parametrize("name", list(MODERN))
def test_modern_switches_kv_cache_equals_full_recompute(name, impl):
    model = modern(name, attn_impl=impl)
    idx = torch.randint(0, 97, (2, 40))
    cache = KVCache.allocate(model.config, 2, 64, "cpu", torch.float32)
    assert cache.keys[0].shape == (2, 2, 64, model.config.head_dim)
    with torch.no_grad():
        full = model(idx)
        steps = [model(idx[:, :11], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(11, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_llama3_rope_scaling_matches_transformers_frequencies():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from scratchllm.models.gpt import rope_frequencies

    scaling = GPTConfig.from_preset("llama3.2-1b").rope_scaling
    hf = transformers.LlamaConfig(
        hidden_size=2048, num_attention_heads=32, head_dim=64, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )
    expected = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")[0]
    got = rope_frequencies(64, 500000.0, scaling)
    plain = rope_frequencies(64, 500000.0)
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-6)
    kept, slowed = got == plain, torch.isclose(got, plain / 32, rtol=1e-6)
    assert kept.sum() > 0 and slowed.sum() > 0 and (~kept & ~slowed).sum() > 0  # all three regimes occur


def test_head_dim_is_derived_unless_set_and_written_back_only_when_set():
    gpt2 = GPTConfig.from_preset("gpt2-small")
    assert gpt2.head_dim == 64 and gpt2.to_dict()["head_dim"] is None
    qwen3 = GPTConfig.from_preset("qwen3-0.6b")
    assert qwen3.head_dim == 128 and qwen3.to_dict()["head_dim"] == 128
    assert GPTConfig.from_dict({**gpt2.to_dict(), "emb_dim": 1024, "n_heads": 8}).head_dim == 128
    assert GPTConfig.from_dict(qwen3.to_dict()) == qwen3


@pytest.mark.parametrize(
    "fields, message",
    [({"n_layers": "12"}, "config field 'n_layers' must be a positive integer, got '12'"),
     ({"head_dim": 12.5}, "config field 'head_dim' must be a positive integer, got 12.5"),
     ({"n_kv_heads": 0}, "config field 'n_kv_heads' must be a positive integer, got 0"),
     ({"qk_norm": "yes"}, "config field 'qk_norm' must be true or false, got 'yes'"),
     ({"rope_theta": "1e4"}, "config field 'rope_theta' must be a number, got '1e4'"),
     ({"head_dim": 25, "position": "rope"}, "config: rotary positions need an even head_dim, got 25"),
     ({"rope_scaling": LLAMA3_SCALING}, "config: rope_scaling needs position 'rope', got position 'learned'"),
     ({"position": "rope", "rope_scaling": {**LLAMA3_SCALING, "type": "yarn"}},
      "config field 'rope_scaling': type must be 'llama3', got 'yarn'"),
     ({"position": "rope", "rope_scaling": {k: v for k, v in LLAMA3_SCALING.items() if k != "factor"}},
      "config field 'rope_scaling': missing key(s) 'factor'; expected type, factor, low_freq_factor, "
      "high_freq_factor, original_context_length"),
     ({"position": "rope", "rope_scaling": {**LLAMA3_SCALING, "beta": 1}},
      "config field 'rope_scaling': unknown key(s) 'beta'; expected type, factor, low_freq_factor, "
      "high_freq_factor, original_context_length"),
     ({"position": "rope", "rope_scaling": {**LLAMA3_SCALING, "factor": "8"}},
      "config field 'rope_scaling': 'factor' must be a number, got '8'"),
     ({"position": "rope", "rope_scaling": {**LLAMA3_SCALING, "original_context_length": 32.5}},
      "config field 'rope_scaling': 'original_context_length' must be an integer, got 32.5"),
     ({"position": "rope", "rope_scaling": {**LLAMA3_SCALING, "low_freq_factor": 4.0}},
      "config field 'rope_scaling': expected factor >= 1 and low_freq_factor < high_freq_factor, got factor 8.0, "
      "low_freq_factor 4.0, high_freq_factor 4.0")],
)
def test_modern_fields_are_validated_with_one_line_errors(fields, message):
    with pytest.raises(ScratchLLMError) as info:
        GPTConfig.from_preset("gpt-tiny", **fields)
    assert str(info.value) == f"preset 'gpt-tiny': {message}"


# --------------------------------------------------------------------------------------------------
# Presets of today's small models: the published config.json, through our importer, is the preset,
# and its parameters and KV cache are those of the transformers model

# The architecture fields of each model's config.json on the Hugging Face hub, as published
# (meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-0.5B, Qwen/Qwen3-0.6B, HuggingFaceTB/SmolLM2-135M), and the
# parameter counts their model cards give (total, non-embedding where stated).
PUBLISHED = {
    "llama3.2-1b": ({
        "model_type": "llama", "attention_bias": False, "mlp_bias": False, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072, "num_attention_heads": 32,
        "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "vocab_size": 128256}, 1.23e9, None),
    "qwen2.5-0.5b": ({
        "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "num_attention_heads": 14, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936}, 0.49e9, 0.36e9),
    "qwen3-0.6b": ({
        "model_type": "qwen3", "attention_bias": False, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
        "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "num_attention_heads": 16,
        "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True, "use_sliding_window": False,
        "vocab_size": 151936}, 0.6e9, 0.44e9),
    "smollm2-135m": ({
        "model_type": "llama", "attention_bias": False, "mlp_bias": False, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192, "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 100000, "tie_word_embeddings": True, "vocab_size": 49152}, 135e6, None),
}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_recent_presets_are_the_published_models(preset):
    from scratchllm.checkpoint.hf_families import config_from_hf

    published, total, non_embedding = PUBLISHED[preset]
    config = GPTConfig.from_preset(preset)
    assert config_from_hf(published) == config
    fields = {k: v for k, v in published.items() if k != "model_type"}
    with torch.device("meta"):  # shapes without memory: 1.2B parameters cost nothing here
        theirs = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[published["model_type"]](**fields))
    info = model_info(preset)
    assert info["parameters"] == sum(p.numel() for p in theirs.parameters())  # tied weights listed once
    assert abs(info["parameters"] - total) / total < 0.01  # the model card's figure, rounded
    if non_embedding is not None:
        assert abs(info["non_embedding_parameters"] - non_embedding) / non_embedding < 0.015
    layers = theirs.model.layers
    kv_per_token = sum(2 * layer.self_attn.k_proj.out_features for layer in layers)  # a key and a value per layer
    assert info["kv_cache_bytes_per_token"]["bfloat16"] == 2 * kv_per_token


def test_info_compare_prints_todays_models(capsys):
    names = ["gpt2-small", *PUBLISHED]
    assert main(["info", "--compare", *names]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].split() == ["model", "params", "layers", "emb_dim", "heads", "kv_heads", "head_dim", "ctx", "bf16",
                               "weights", "KV/token", "bf16", "train", "FLOPs/tok"]
    for name, row in zip(names, rows[1:]):
        c, info = GPTConfig.from_preset(name), model_info(name)
        kv = info["kv_cache_bytes_per_token"]["bfloat16"] / 1024
        cells = row.split()
        assert cells[0] == name and cells[2:8] == [str(n) for n in (c.n_layers, c.emb_dim, c.n_heads, c.kv_heads,
                                                                   c.head_dim, c.context_length)]
        assert f"{kv:.1f} KiB" in row


def test_encoder_decoder_takes_the_modern_switches(tmp_path):
    from scratchllm.checkpoint import save_model
    from scratchllm.models.encoder_decoder import DecoderSteps, EncoderDecoder

    config = GPTConfig.from_preset("llama-tiny", vocab_size=97, qk_norm=True, head_dim=48, rope_scaling=LLAMA3_SCALING)
    torch.manual_seed(0)
    model = EncoderDecoder(config).eval()
    src, tgt = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        memory = model.encode(src)
        full = torch.log_softmax(model(src, tgt), dim=-1)  # (2, 40, V)
        steps = DecoderSteps(model, memory, None)
        for t in range(1, 41):  # one more token per call, through the decoder's KV cache
            torch.testing.assert_close(steps(tgt[:, :t]), full[:, t - 1], atol=1e-5, rtol=1e-5)
        unscaled = EncoderDecoder(GPTConfig.from_dict({**config.to_dict(), "rope_scaling": None})).eval()
        unscaled.load_state_dict(model.state_dict())
        # the same memory: only the decoder's own rotary positions can differ
        assert (unscaled.decode(tgt, memory) - model.decode(tgt, memory)).abs().max() > 1e-3
    save_model(model, tmp_path / "m")
    info = model_info(tmp_path / "m")
    assert info["parameters"] == model.num_parameters()
    assert info["flops_per_token_forward"] == model.flops_per_token(training=False)
