"""models/quantize.py: int8 weights with a scale per output channel give the dequantized product to
bfloat16 rounding for any rows and inner sizes (short rows padded), a quantized GPT decodes close to
its float32 self, and what cannot be quantized, saved or trained is a one-line error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.models import quantize as qz
from scratchllm.models.lora import apply_lora
from scratchllm.models.quantize import Int8Linear, check_quantize, quantization, quantize_int8
from tests.helpers import sharpened_gpt

VOCAB = 300
PROMPT = [5, 17, 250, 3, 99, 42, 7]


@pytest.mark.parametrize("act", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("shape", "rows"), [((48, 32), (1,)), ((33, 21), (2, 3)), ((50, 7), (64,)), ((5, 16), (65,)),
                                             ((16, 64), (1, 1, 1)), ((1, 6), (2,))])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_the_dequantized_product(act, shape, rows, bias):
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(shape[1], shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(*shape, generator=g))
        linear.weight[0] = 0  # an all-zero row stays zero (scale 1, not 0/0)
    layer = Int8Linear(linear, act)
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (shape[0], -(-shape[1] // 16) * 16)
    assert layer.qweight.abs().max() <= 127 and not layer.qweight[:, shape[1]:].any()
    w = layer.weight  # (out, in), dequantized
    assert w.shape == shape and (w - linear.weight).abs().max() <= linear.weight.abs().amax() / 254 + 1e-6
    x = torch.randn(*rows, shape[1], generator=g)
    got = layer(x)
    want = F.linear(x.to(act).float(), w, linear.bias)  # the rounded input times the dequantized weight
    assert got.shape == (*rows, shape[0]) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)  # the kernel's bfloat16 output, at worst
    assert torch.equal(got[..., 0], torch.full_like(got[..., 0], linear.bias[0].item() if bias else 0.0))


def test_a_quantized_gpt_decodes_close_to_its_float_self():
    """Every Linear (the tied head too) becomes int8; the embedding table stays float32 and shared
    by nothing. Fed float32's own greedy tokens, int8's next-token choice agrees at >= 90% of the
    positions (the measure benchmarks/generation.py reports on GPT-2 small)."""
    ref, gpt = sharpened_gpt(VOCAB, seed=3), sharpened_gpt(VOCAB, seed=3)
    assert quantize_int8(gpt) is gpt and quantization(gpt) == "int8" and quantization(ref) is None
    assert not any(type(m) is torch.nn.Linear for m in gpt.modules())
    assert isinstance(gpt.out_head, Int8Linear) and gpt.tok_emb.weight.dtype == torch.float32
    assert torch.equal(gpt.tok_emb.weight, ref.tok_emb.weight)
    tokens = generate_ids(ref, [PROMPT], 48, 0)[0]
    ids = torch.tensor([PROMPT + tokens])
    with torch.no_grad():
        want, got = ref(ids)[0, len(PROMPT) - 1:-1], gpt(ids)[0, len(PROMPT) - 1:-1]  # (48, V)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    assert len(generate_ids(gpt, [PROMPT], 16, 0)[0]) == 16
    h = torch.randn(4, gpt.config.emb_dim)  # the loss reads the dequantized head
    torch.testing.assert_close(gpt.head_loss(h, torch.tensor([1, 2, 3, 4])), ref.head_loss(h, torch.tensor([1, 2, 3, 4])),
                               atol=2e-2, rtol=2e-2)


def test_the_input_is_rounded_to_bfloat16_only_where_that_is_faster(monkeypatch):
    def timed(fast: torch.dtype):
        return lambda passes, rounds=3: {dtype: (1.0 if dtype == fast else 1.3) for dtype in passes}

    for fast, expected in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
        qz._activation_choice.cache_clear()
        monkeypatch.setattr(qz, "time_passes", timed(fast))
        assert qz.choose_activation([torch.zeros(8, 16, dtype=torch.int8)]) == expected
    qz._activation_choice.cache_clear()
    monkeypatch.setattr(qz, "time_passes", lambda passes, rounds=3: {torch.float32: 1.1, torch.bfloat16: 1.0})
    assert qz.choose_activation([torch.zeros(8, 16, dtype=torch.int8)]) == torch.float32  # 10% is not enough
    qz._activation_choice.cache_clear()


def test_what_cannot_be_quantized_is_one_line():
    with pytest.raises(ScratchLLMError, match=r"^quantize 'int4': expected one of int8 or none$"):
        check_quantize("int4")
    lora = sharpened_gpt(VOCAB, seed=1)
    apply_lora(lora, rank=2, targets=("qkv",), verbose=False)
    with pytest.raises(ScratchLLMError, match=r"^quantize int8: the model has a LoRALinear at 'qkv' \(unmerged LoRA "
                                              r"adapters\); merge them first"):
        quantize_int8(lora)
    assert quantization(lora) is None  # nothing changed before the error
    with torch.device("meta"):
        far = torch.nn.Sequential(torch.nn.Linear(16, 4))
    with pytest.raises(ScratchLLMError, match=r"^quantize int8: a test model is on meta; int8 decoding runs on the CPU"):
        quantize_int8(far, "a test model")
