"""The model-kind registry (checkpoint/kinds.py): a kind added in one place (here, a toy bigram table
registered by this file alone) is written, recognised, loaded, restored, refused and not exported like
the built-in ones; directories without the "kind" field are read with the old precedence; and each
kind's export formats."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from scratchllm.checkpoint import load, load_weights, save_model
from scratchllm.checkpoint.convert import export_hf
from scratchllm.checkpoint.kinds import (REGISTRY, BuildRequest, ModelKind, kind_of_config, loadable_kinds,
                                         register, registered)
from scratchllm.checkpoint.weights import WEIGHTS_FILE, copy_into, place, read_safetensors
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from tests.helpers import sharpened_gpt

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0_1_layout"


# --------------------------------------------------------------------------------------------------
# A toy kind, registered here and nowhere else


class Bigram(nn.Module):
    """Next-token logits read from a (V, V) table: the smallest language model there is."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)  # (B, T) -> (B, T, V)


def _restore(model: Bigram, directory: Path) -> None:
    copy_into(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, set())


def _build(req: BuildRequest) -> Bigram:
    model = Bigram(req.config)
    _restore(model, req.directory)
    return place(model, req.device, req.dtype)


BIGRAM = ModelKind(
    name="bigram", model_class=Bigram, is_model=lambda model: True, legacy=None,
    what="a bigram table", family="bigram",
    write=lambda model: ({WEIGHTS_FILE: dict(model.state_dict())}, {"counted_from": "nothing"}),
    tied=lambda model: set(), build=_build, load_weights=_restore,
    load_as={"bigram": lambda model: model},
    how_to_make="count one with `toy bigram`",
    no_export="a table is no transformer",
)


@pytest.fixture
def bigram_kind():
    yield register(BIGRAM)
    del REGISTRY[BIGRAM.name]


def bigram(seed: int = 0) -> Bigram:
    torch.manual_seed(seed)
    return Bigram(GPTConfig.from_preset("gpt-tiny", vocab_size=64)).eval()


def test_a_kind_registered_in_one_place_saves_loads_and_resumes(tmp_path, bigram_kind):
    model = bigram()
    d = save_model(model, tmp_path / "bigram")
    config = json.loads((d / "config.json").read_text())
    assert config["kind"] == "bigram" and config["counted_from"] == "nothing"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    ids = torch.tensor([[1, 5, 9, 63]])
    for kind in (None, "bigram"):
        back, tok = load(d, kind=kind)
        assert type(back) is Bigram and not back.training and tok.spec["type"] == "gpt2"
        assert torch.equal(back(ids), model(ids))
    other = bigram(seed=1)
    assert not torch.equal(other.table.weight, model.table.weight)
    load_weights(other, d)  # the training loop's resume
    assert torch.equal(other.table.weight, model.table.weight)
    assert "bigram" in loadable_kinds()


def test_a_registered_kind_is_refused_where_it_does_not_fit(tmp_path, bigram_kind):
    d = save_model(bigram(), tmp_path / "bigram")
    with pytest.raises(ScratchLLMError, match=r"^.*/bigram: a bigram table, not a classifier; make one with "
                                              r"`scratchllm finetune classify`$"):
        load(d, kind="classifier")
    gpt = save_model(sharpened_gpt(64), tmp_path / "gpt")
    with pytest.raises(ScratchLLMError, match=r"^.*/gpt: a GPT decoder, not a bigram table; count one with "
                                              r"`toy bigram`$"):
        load(gpt, kind="bigram")
    with pytest.raises(ScratchLLMError, match=r"^load: kind 'lora'; expected one of gpt, encoder, classifier, seq2seq, "
                                              r"bigram or None$"):
        load(d, kind="lora")
    # another family: a GPT does not replace the table, nor the table a GPT
    with pytest.raises(ScratchLLMError, match=r"bigram: exists and is not a scratchllm model directory of the same "
                                              r"kind \(gpt\); refusing"):
        save_model(sharpened_gpt(64), d)
    with pytest.raises(ScratchLLMError, match=r"gpt: exists and is not a scratchllm model directory of the same "
                                              r"kind \(bigram\); refusing"):
        save_model(bigram(), gpt)
    save_model(bigram(seed=2), d)  # its own family may
    with pytest.raises(ScratchLLMError, match=r"^.*/bigram: a bigram table cannot be written as a Hugging Face "
                                              r"directory; a table is no transformer$"):
        export_hf(d, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_unregistered_kind_is_a_one_line_error(tmp_path):
    d = tmp_path / "bigram"
    register(BIGRAM)
    try:
        save_model(bigram(), d)
    finally:
        del REGISTRY[BIGRAM.name]
    with pytest.raises(ScratchLLMError, match=r"config.json: config.json field 'kind' is 'bigram'; expected one of "
                                              r"gpt, encoder, lora, classifier, seq2seq$"):
        load(d)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="model kind 'gpt' is already registered"):
        register(registered("gpt"))


# --------------------------------------------------------------------------------------------------
# Directories written before the "kind" field


def _old_reader(data: dict) -> str:
    """The flat-layout code's reading of a config.json without "kind" (commit e3d41a4)."""
    if data.get("objective") == "seq2seq":
        return "seq2seq"
    if data.get("task") == "classification":
        return "classifier"
    if data.get("lora") is not None:
        return "lora"
    return "encoder" if data["model"].get("causal") is False else "gpt"


@pytest.mark.parametrize("keys", list(itertools.product([False, True], repeat=4)))
def test_old_keys_give_the_kind_the_old_reader_gave(keys):
    seq2seq, classification, lora, bidirectional = keys
    data = {"format": "scratchllm", "version": 1, "model": {"causal": not bidirectional},
            **({"objective": "seq2seq"} if seq2seq else {"objective": "mlm"} if bidirectional else {}),
            **({"task": "classification"} if classification else {}), **({"lora": {"rank": 4}} if lora else {})}
    matching = [k.name for k in REGISTRY.values() if k.legacy is not None and k.legacy(data)]
    assert matching == [_old_reader(data)] == [kind_of_config(data)]


@pytest.mark.parametrize("name, kind", [("gpt", "gpt"), ("encoder", "encoder"), ("lora-step", "lora"),
                                        ("classifier", "classifier"), ("classifier-lora", "classifier"),
                                        ("seq2seq", "seq2seq")])
def test_the_flat_layout_fixtures_are_recognised(name, kind):
    data = json.loads((FIXTURES / name / "config.json").read_text())
    assert "kind" not in data and kind_of_config(data) == kind


# --------------------------------------------------------------------------------------------------
# Exports


@pytest.mark.parametrize("kind, formats", [("gpt", ("hf", "gguf")), ("encoder", ()), ("lora", ("hf",)),
                                           ("classifier", ("hf",)), ("seq2seq", ())])
def test_each_kind_says_where_it_exports_and_why_not(kind, formats):
    entry = registered(kind)
    assert entry.exports == formats
    for fmt in {"hf", "gguf"} - set(formats):
        with pytest.raises(ScratchLLMError) as caught:
            entry.check_export(fmt, "DIR")
        message = str(caught.value)
        assert message.startswith(f"DIR: {entry.what} cannot be written as ") and "\n" not in message
        assert "`scratchllm " in message  # what to do instead


@pytest.mark.parametrize("name, message", [
    ("encoder", "an encoder (causal false) cannot be written as a Hugging Face directory; the families written here "
                "are causal decoders: fill masks with `scratchllm fill-mask` or fine-tune it with "
                "`scratchllm finetune classify`"),
    ("seq2seq", "an encoder-decoder (seq2seq) cannot be written as a Hugging Face directory; the families written "
                "here are decoders: translate with `scratchllm translate`"),
])
def test_export_hf_of_a_kind_without_a_family_is_one_line(tmp_path, capsys, name, message):
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    assert main(["export-hf", "--model", str(d), "--out", str(tmp_path / "hf")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"scratchllm export-hf: error: {d}: {message}\n"
    assert not (tmp_path / "hf").exists()


def test_lora_exports_to_gguf_only_once_merged():
    with pytest.raises(ScratchLLMError, match=r"^DIR: a GPT with LoRA adapters cannot be written as a GGUF file; its "
                                              r"LoRA adapters are not merged: write a plain model with "
                                              r"`scratchllm merge-lora` first$"):
        registered("lora").check_export("gguf", "DIR")
