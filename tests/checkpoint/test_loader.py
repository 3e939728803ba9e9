"""checkpoint/loader.py `load` readies what it returns for decoding: decode kernels on a CPU (the
same tokens as the plain model), bfloat16 only where the CPU has native bf16 (else float32 and a
one-line note), quantize="int8"; and what cannot take int8, be written or train after it is a
one-line error."""

from __future__ import annotations

import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.checkpoint.loader import for_decoding, load
from scratchllm.core import device as device_mod
from scratchllm.core.device import DistInfo
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.models.classifier import Classifier
from scratchllm.models.decode_kernels import DecodeLinear
from scratchllm.models.gpt import GPT
from scratchllm.models.quantize import Int8Linear
from scratchllm.training.config import TrainConfig
from scratchllm.training.parallel import Parallel
from tests.helpers import sharpened_gpt

VOCAB = 50257  # GPT-2's tokenizer, which a directory saved without one records
PROMPT = [464, 3290, 318, 257, 1049]
NOTE = ("note: bfloat16 weights asked for, but this CPU has no native bf16 (no flags here), where bf16 products run "
        "~40x slower than float32: the weights are float32 instead\n")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = sharpened_gpt(VOCAB, seed=7)
    return save_model(model, tmp_path_factory.mktemp("m") / "gpt"), model


def linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_a_loaded_cpu_model_decodes_with_the_measured_kernels_and_the_same_tokens(saved):
    d, model = saved
    loaded, _ = load(d)
    assert linears(loaded) and all(type(m) is DecodeLinear for m in linears(loaded))
    assert generate_ids(loaded, [PROMPT], 24, 0) == generate_ids(model, [PROMPT], 24, 0)


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_only_where_the_cpu_has_it(saved, monkeypatch, capsys, native):
    d, model = saved
    monkeypatch.setattr(device_mod, "cpu_bf16_is_native", lambda: (native, "no flags here"))
    loaded, _ = load(d, dtype="bfloat16")
    assert loaded.tok_emb.weight.dtype == (torch.bfloat16 if native else torch.float32)
    assert capsys.readouterr().err == ("" if native else NOTE)
    if not native:  # float32 precision is kept, not bf16-rounded and widened again
        assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)


def test_weights_stored_in_bfloat16_are_widened_where_the_cpu_lacks_it(tmp_path, monkeypatch, capsys):
    d = save_model(sharpened_gpt(VOCAB, seed=8).to(torch.bfloat16), tmp_path / "bf16")
    monkeypatch.setattr(device_mod, "cpu_bf16_is_native", lambda: (False, "no flags here"))
    loaded, _ = load(d)
    assert loaded.tok_emb.weight.dtype == torch.float32
    assert capsys.readouterr().err == NOTE


def test_decode_false_returns_the_model_as_stored_for_converters_and_training(tmp_path, monkeypatch, capsys):
    """decode=False (export, import, merge-lora, fine-tuning): plain row-major Linears, no kernel
    measurement, and the dtype as asked or stored even on a CPU without native bf16; quantize needs decode."""
    d = save_model(sharpened_gpt(VOCAB, seed=8).to(torch.bfloat16), tmp_path / "bf16")
    monkeypatch.setattr(device_mod, "cpu_bf16_is_native", lambda: (False, "no flags here"))
    monkeypatch.setattr("scratchllm.models.decode_kernels.choose_kernel",
                        lambda *a, **k: pytest.fail("decode=False measured decode kernels"))
    for dtype in (None, "bfloat16"):
        model, _ = load(d, dtype=dtype, decode=False)
        assert model.tok_emb.weight.dtype == torch.bfloat16
        assert all(type(m) is torch.nn.Linear and m.weight.is_contiguous() for m in linears(model))
    assert capsys.readouterr().err == ""
    with pytest.raises(ScratchLLMError, match=r"^load: quantize 'int8' is for decoding; it needs decode=True$"):
        load(d, quantize="int8", decode=False)


def test_quantize_int8_gives_int8_layers_that_cannot_be_written_or_trained(saved, tmp_path):
    d, model = saved
    q, _ = load(d, quantize="int8")
    assert linears(q) == [] and isinstance(q.out_head, Int8Linear)
    assert len(generate_ids(q, [PROMPT], 8, 0)[0]) == 8
    with pytest.raises(ScratchLLMError, match=r"^save_model: the model is quantized \(int8\) for decoding and cannot be "
                                              r"written; write the model before quantizing it \(load without quantize\)$"):
        save_model(q, tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(ScratchLLMError, match=r"^train: the model is quantized \(int8\) for decoding"):
        Parallel(q, TrainConfig(), DistInfo(), torch.device("cpu"))


def test_training_gets_plain_linears_back(saved):
    d, _ = saved
    loaded, _ = load(d)
    Parallel(loaded, TrainConfig(), DistInfo(), torch.device("cpu"))
    assert all(type(m) is torch.nn.Linear and m.weight.is_contiguous() for m in linears(loaded))


def test_what_cannot_take_int8_is_one_line(saved):
    d, model = saved
    with pytest.raises(ScratchLLMError, match=r"^quantize 'int4': expected one of int8 or none$"):
        load(d, quantize="int4")
    with pytest.raises(ScratchLLMError, match=r"^classifier: quantize 'int8' is for decoders \(a GPT\), not a Classifier$"):
        for_decoding(Classifier(model, ["a", "b"]), "int8", "classifier")
    with torch.device("meta"):  # no GPU here: a model on "meta" stands in for one off the CPU
        meta = GPT(model.config)
    with pytest.raises(ScratchLLMError, match=r"^m: quantize 'int8' on device 'meta'; int8 decoding runs on the CPU "
                                              r"\(on a GPU use dtype bfloat16\)$"):
        for_decoding(meta, "int8", "m")
