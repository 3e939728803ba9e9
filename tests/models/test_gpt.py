"""The GPT model, its config and accounting: attention implementations agree, the chunked loss equals
plain cross-entropy, the KV cache and padding masks change nothing, and parameter counts are GPT-2's."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scratchllm.cli import main
from scratchllm.checkpoint import read_config
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.info import model_info, parameter_breakdown
from scratchllm.models.encoder_decoder import EncoderDecoder
from scratchllm.models.gpt import GPT, KVCache
from scratchllm.models.loss import chunked_cross_entropy


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=211, **overrides))


@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_sdpa_and_manual_attention_agree_in_outputs_and_gradients(drop):
    sdpa, manual = tiny(drop_rate=drop), tiny(drop_rate=drop, attn_impl="manual")
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 211, (3, 37))
    # In training mode, with dropout: PyTorch's CPU attention kernel draws its dropout mask from the
    # global RNG as F.dropout does, so from the same seed both paths drop the same weights.
    sdpa.train(), manual.train()
    torch.manual_seed(1)
    out_s = sdpa(idx)
    torch.manual_seed(1)
    out_m = manual(idx)
    if drop:
        torch.manual_seed(2)
        assert not torch.allclose(sdpa(idx), out_s)  # dropout is really on
    torch.testing.assert_close(out_s, out_m, atol=2e-6, rtol=1e-5)
    out_s.square().mean().backward()
    out_m.square().mean().backward()
    for (name, a), b in zip(sdpa.named_parameters(), manual.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_chunked_loss_equals_cross_entropy_with_ignored_targets():
    model = tiny()
    idx = torch.randint(0, 211, (4, 50))
    targets = torch.randint(0, 211, (4, 50))
    targets[0, :10] = -100
    loss = model.loss(idx, targets)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("multiple", [1, 8, 29, 64])  # 29 rows: unpadded; 8 and 64: zero rows added
def test_chunked_loss_chunk_size_and_padding_do_not_matter_and_it_scales_with_upstream_gradient(multiple):
    torch.manual_seed(1)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(29, 16, requires_grad=True)
    t = torch.randint(0, 29, (37,))
    t[3] = -100
    for chunk in (1, 5, 37, 100):
        hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        (3.0 * chunked_cross_entropy(hh, ww, t, chunk=chunk, multiple=multiple)).backward()
        assert ww.grad.shape == (29, 16)
        ref_h, ref_w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        (3.0 * F.cross_entropy(ref_h @ ref_w.t(), t)).backward()
        torch.testing.assert_close(hh.grad, ref_h.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ww.grad, ref_w.grad, atol=1e-5, rtol=1e-4)


def test_chunked_loss_under_bf16_autocast_is_close_to_fp32():
    model = tiny()
    idx, targets = torch.randint(0, 211, (2, 40)), torch.randint(0, 211, (2, 40))
    fp32 = model.loss(idx, targets).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.loss(idx, targets)
    bf16.backward()
    assert bf16.dtype == torch.float32
    assert abs(bf16.item() - fp32) / fp32 < 0.02
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_attention_under_cpu_bf16_autocast_runs_in_float32(impl):
    """Autocast would hand the fused kernel bf16 inputs, whose CPU backward is several times slower
    than float32's: the module attends in float32 and returns the result in the inputs' dtype."""
    from scratchllm.models.gpt import ScaledDotProductAttention, manual_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g).bfloat16() for _ in range(3))
    seen = []
    module = ScaledDotProductAttention(impl, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if impl == "sdpa":
            real = F.scaled_dot_product_attention

            def spy(*args, **kwargs):
                seen.append(args[0].dtype)
                return real(*args, **kwargs)

            F.scaled_dot_product_attention = spy
            try:
                y = module(q, k, v, causal=True)
            finally:
                F.scaled_dot_product_attention = real
        else:
            y = module(q, k, v, causal=True)
    if impl == "sdpa":
        assert seen == [torch.float32]
    assert y.dtype == torch.bfloat16
    expected = manual_attention(q.float(), k.float(), v.float(), causal=True).bfloat16()
    torch.testing.assert_close(y, expected, atol=1e-2, rtol=0)
    assert torch.equal(y, expected) or impl == "sdpa"  # the manual path computes exactly this, in float32


def test_kv_cache_prefill_chunks_and_single_steps_match_full_forward():
    model = tiny().eval()
    idx = torch.randint(0, 211, (2, 30))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.config, 2, 64, "cpu", torch.float32)
        pieces = [model(idx[:, :9], cache=cache), model(idx[:, 9:16], cache=cache)]
        pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(16, 30)]
    assert cache.length == 30
    # half-precision CPU caches are float32 (attention runs in float32 there)
    assert KVCache.allocate(model.config, 1, 8, "cpu", torch.bfloat16).keys[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_attention_mask_gives_the_unpadded_logits():
    model = tiny().eval()
    idx = torch.randint(0, 211, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    with torch.no_grad():
        padded = model(idx, attention_mask=mask)
        alone = model(idx[1:, 6:])
    torch.testing.assert_close(padded[1, 6:], alone[0], atol=1e-5, rtol=1e-5)


def test_sequence_longer_than_context_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the context length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-mini", vocab_size=1000))
    std = lambda t: t.detach().std().item()  # noqa: E731
    assert abs(std(model.blocks[0].mlp.fc.weight) - 0.02) < 0.002
    expected = 0.02 / (2 * model.config.n_layers) ** 0.5
    assert abs(std(model.blocks[0].mlp.proj.weight) - expected) < 0.1 * expected
    assert model.out_head.weight is model.tok_emb.weight


@pytest.mark.parametrize(
    "preset, count",
    [("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_gpt2_preset_parameter_counts(preset, count):
    assert sum(parameter_breakdown(GPTConfig.from_preset(preset)).values()) == count


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "qkv_bias": False}, {"mlp_ratio": 2}])
def test_analytic_breakdown_equals_the_model(overrides):
    model = tiny(**overrides)
    assert parameter_breakdown(model.config) == model.parameter_breakdown()
    assert model_info(model.config)["parameters"] == model.num_parameters()


def test_flops_per_token_counts_matmuls():
    config = GPTConfig.from_preset("gpt-tiny", vocab_size=211)
    C, L, T = 64, 2, 128
    forward = 2 * (L * 12 * C * C + C * 211) + 4 * L * T * C
    assert tiny().flops_per_token() == 3 * forward
    assert model_info(config)["flops_per_token_forward"] == forward


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ScratchLLMError, match="unknown config key\\(s\\) 'n_layer'"):
        GPTConfig.from_dict({"n_layer": 3})
    with pytest.raises(ScratchLLMError, match="emb_dim \\(100\\) must be divisible by n_heads \\(3\\)"):
        GPTConfig(emb_dim=100, n_heads=3)
    with pytest.raises(ScratchLLMError, match="unknown model preset 'gpt5'"):
        GPTConfig.from_preset("gpt5")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"emb_dim": 32, "n_heads": 2, "n_layers": 1}))
    assert read_config(path).emb_dim == 32


def test_info_cli_prints_breakdown_and_errors_cleanly(capsys, tmp_path):
    assert main(["info", "--model", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 124,439,808 (124M)" in out
    assert "bfloat16 237.4 MiB" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"emb_dim": 64, "n_heads": 4, "colour": "red"}')
    assert main(["info", "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key(s) 'colour'" in err[0] and str(bad) in err[0]


# ------------------------------------------------------------------------------------------------
# Switches of the small-budget recipe: soft-capped logits, squared-ReLU MLP, zero-initialised projections


@pytest.mark.parametrize("cap", [2.0, 30.0])
@pytest.mark.parametrize("chunk, multiple", [(1, 1), (5, 8), (100, 64)])
def test_softcapped_chunked_loss_equals_plain_reference_in_value_and_gradients(cap, chunk, multiple):
    torch.manual_seed(2)
    h = (3 * torch.randn(37, 16)).requires_grad_()  # logits of a few units: the cap at 2 bends them
    w = torch.randn(29, 16, requires_grad=True)
    t = torch.randint(0, 29, (37,))
    t[4] = -100
    loss = chunked_cross_entropy(h, w, t, chunk=chunk, multiple=multiple, softcap=cap)
    (2.0 * loss).backward()
    ref_h, ref_w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    reference = F.cross_entropy(cap * torch.tanh((ref_h @ ref_w.t()) / cap), t)
    (2.0 * reference).backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    torch.testing.assert_close(h.grad, ref_h.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.grad, ref_w.grad, atol=1e-5, rtol=1e-4)
    if cap == 2.0:  # the cap did change the loss
        assert abs(reference.item() - F.cross_entropy(h.detach() @ w.detach().t(), t).item()) > 0.5


def test_softcapped_model_loss_matches_its_logits_and_caps_them():
    model = tiny(logit_softcap=0.5, tie_embeddings=False)
    torch.nn.init.normal_(model.out_head.weight, std=1.0)  # large raw logits
    idx, targets = torch.randint(0, 211, (2, 30)), torch.randint(0, 211, (2, 30))
    logits = model(idx)
    raw = model.out_head(model.hidden_states(idx))
    assert raw.abs().max().item() > 5.0 and logits.abs().max().item() <= 0.5
    torch.testing.assert_close(logits, 0.5 * torch.tanh(raw / 0.5))
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert model.loss(idx, targets).item() == pytest.approx(reference.item(), abs=1e-5)


@pytest.mark.parametrize("user", ["masked tokens", "seq2seq", "classifier's LM loss"])
def test_every_loss_on_the_head_sees_the_soft_capped_logits_that_inference_sees(user):
    """A soft-capped head is trained on the logits it is used with: the MLM, seq2seq and
    classifier auxiliary losses equal cross-entropy on the model's own (capped) logits."""
    from scratchllm.models.classifier import Classifier
    from scratchllm.models.encoder_decoder import EncoderDecoder
    from scratchllm.recipes.mlm import mlm_loss

    cap, idx, targets = 0.5, torch.randint(0, 211, (2, 12)), torch.randint(0, 211, (2, 12))
    if user == "masked tokens":
        model = head = tiny(logit_softcap=cap, causal=False, tie_embeddings=False)
        torch.nn.init.normal_(head.out_head.weight, std=1.0)  # large raw logits
        targets = targets.masked_fill(torch.rand(2, 12) < 0.5, -100)
        trained, logits, h = mlm_loss(model, idx, targets), model(idx), model.hidden_states(idx)
    elif user == "seq2seq":
        torch.manual_seed(0)
        model = EncoderDecoder(GPTConfig.from_preset("gpt-tiny", vocab_size=211, logit_softcap=cap, tie_embeddings=False))
        head = model.decoder
        torch.nn.init.normal_(head.out_head.weight, std=1.0)
        trained, logits = model.loss(idx, idx, targets), model(idx, idx)
        h = model.decode(idx, model.encode(idx))
    else:
        head = tiny(logit_softcap=cap, tie_embeddings=False)
        torch.nn.init.normal_(head.out_head.weight, std=1.0)
        lengths = torch.tensor([12, 8])
        _, trained = Classifier(head, ["ham", "spam"])(idx, lengths, lm_loss=True)
        logits, h = head(idx)[:, :-1], head.hidden_states(idx)[:, :-1]
        targets = idx[:, 1:].masked_fill(torch.arange(1, 12)[None, :] >= lengths[:, None], -100)
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert trained.item() == pytest.approx(reference.item(), abs=1e-5)
    uncapped = F.cross_entropy(head.out_head(h).flatten(0, 1), targets.flatten())
    assert abs(uncapped.item() - reference.item()) > 0.5  # the cap matters at these logits


def test_relu2_mlp_is_squared_relu_with_two_matrices():
    model = tiny(mlp="relu2")
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, 64)
    expected = mlp.proj(torch.relu(mlp.fc(x)) ** 2)
    torch.testing.assert_close(mlp(x), expected)
    assert not hasattr(mlp, "gate")
    assert parameter_breakdown(model.config) == model.parameter_breakdown()
    assert model.flops_per_token() == tiny().flops_per_token()  # same matmuls as GELU's


def test_zero_initialised_projections_make_every_block_the_identity():
    model = tiny(zero_init_proj=True)
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    idx = torch.randint(0, 211, (2, 12))
    positions = torch.arange(12)[None]
    torch.testing.assert_close(model.hidden_states(idx), model.final_norm(model.embed(idx, positions)))
    model.loss(idx, torch.randint(0, 211, (2, 12))).backward()
    # the projections get a gradient at once, so the blocks start learning on the first step
    assert model.blocks[0].attn.proj.weight.grad.abs().sum() > 0 and model.blocks[0].mlp.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("zero", [False, True])
def test_encoder_decoder_blocks_are_initialised_as_the_gpts(zero):
    """Both stacks of the encoder-decoder, cross-attention included, start as GPT's blocks do: the
    same init function, so zero_init_proj (or any change to GPT's init) reaches them too."""
    config = GPTConfig.from_preset("gpt-tiny", vocab_size=211, emb_dim=128, zero_init_proj=zero)
    torch.manual_seed(0)
    gpt, model = GPT(config), EncoderDecoder(config)
    spread = {name.split(".", 1)[1]: p.std().item() for name, p in gpt.blocks.named_parameters() if p.dim() == 2}
    projections = [n for n, p in model.named_parameters() if n.endswith("proj.weight")]
    assert len(projections) == 2 * 2 + 3 * 2  # encoder: attn, mlp; decoder: attn, cross_attn, mlp
    for name, p in model.named_parameters():
        if ".blocks." in name and p.dim() == 2:
            like = name.split(".", 3)[3].replace("cross_attn.q.", "attn.qkv.").replace("cross_attn.kv.", "attn.qkv.")
            like = like.replace("cross_attn.", "attn.")  # its proj is a residual projection as attn's
            if zero and name.endswith("proj.weight"):
                assert not p.any(), name
            else:
                assert p.std().item() == pytest.approx(spread[like], rel=0.1), name
    if zero:  # every block the identity: the decoder's output is the normed embedding of its input
        tgt, src = torch.randint(0, 211, (2, 6)), torch.randint(0, 211, (2, 9))
        memory = model.encode(src)
        embedded = model.decoder.final_norm(model.decoder.embed(tgt, torch.arange(6)[None]))
        torch.testing.assert_close(model.decode(tgt, memory), embedded)


@pytest.mark.parametrize(
    "fields, message",
    [({"logit_softcap": 0.0}, "'logit_softcap' must be a positive number or null, got 0.0"),
     ({"logit_softcap": "15"}, "'logit_softcap' must be a positive number or null, got '15'"),
     ({"mlp": "relu3"}, "'mlp' must be one of gelu, swiglu, relu2; got 'relu3'"),
     ({"zero_init_proj": 1}, "'zero_init_proj' must be true or false, got 1")],
)
def test_recipe_switches_are_validated(fields, message):
    with pytest.raises(ScratchLLMError, match=message):
        GPTConfig.from_preset("gpt-tiny", **fields)
