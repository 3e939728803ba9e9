"""Model kinds: the sorts of model a scratchllm model directory holds, one registry entry each.

An entry (`ModelKind`) says everything the checkpoint layer needs about one sort of model: the class
it is written from and how to recognise one (a model being saved, a config.json being read, a
config.json written before the "kind" field), which directories it may replace, how its tensors
split into files and config.json keys, which tensors are stored once, how it is built back from a
directory and restored in place, what `load(kind=...)` may return from it, and which outside formats
it can be exported to. `save_model`, `load`, `load_weights` and the exporters ask the registry, so
adding a kind is one `register(ModelKind(...))` (tests/checkpoint/test_kinds.py registers a toy one
in its test file and saves and loads it).

    kind        model                                    files beside config.json; its own config.json keys
    gpt         GPT (a causal decoder)                   model.safetensors
    encoder     GPT with causal=False (an MLM encoder)   model.safetensors
    lora        GPT with unmerged LoRA adapters          model.safetensors (base + lora_A/B); "lora"
    classifier  Classifier (a GPT body + a linear head)  model.safetensors (the body), classifier.safetensors
                                                         (the head, unmerged adapters); "labels", "pooling",
                                                         "max_length" (and "lora_merged")
    seq2seq     EncoderDecoder                           model.safetensors (encoder.*, decoder.*, the shared
                                                         embedding once); "objective": "seq2seq"

The registry orders the kinds as registered; error messages list them in that order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.checkpoint.weights import (WEIGHTS_FILE, copy_into, gpt_from_state_dict, gpt_state, gpt_tied,
                                           place, read_safetensors)
from scratchllm.errors import ScratchLLMError
from scratchllm.models.classifier import POOLINGS, Classifier
from scratchllm.models.config import GPTConfig
from scratchllm.models.encoder_decoder import EncoderDecoder
from scratchllm.models.gpt import GPT
from scratchllm.models.lora import LoRAConfig, apply_lora, lora_state_dict, merge_lora, set_tensors, split_lora_state
from scratchllm.models.quantize import quantization
from scratchllm.tokenizer import Tokenizer

# Outside formats a model directory may be written to, as messages name them. "hf": checkpoint/convert.py
# `export_hf` (the family is read from the model's switches, checkpoint/hf_families.py); "gguf": llama.cpp's
# format, checkpoint/gguf_file.py `export_gguf`, for the same decoders.
EXPORT_FORMATS = {"hf": "a Hugging Face directory", "gguf": "a GGUF file"}

Files = dict[str, dict[str, torch.Tensor]]  # file name in the directory -> the tensors it holds


@dataclass(frozen=True)
class BuildRequest:
    """What a kind's builder gets: one scratchllm model directory, its config.json read and checked."""

    directory: Path
    data: Mapping[str, Any]
    """The whole config.json."""
    config: GPTConfig
    """Its "model" field."""
    source: str
    """config.json's path, for messages."""
    device: str | torch.device
    dtype: str | torch.dtype | None
    merge: bool
    """Fold unmerged LoRA adapters into the weights."""
    tokenizer: Callable[[], Tokenizer]
    """Reads the directory's tokenizer, for kinds whose model keeps one."""

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS_FILE


def _no_tokenizer(model: nn.Module) -> Tokenizer | None:
    return None


@dataclass(frozen=True)
class ModelKind:
    """One kind of model directory: how it is recognised, written, read, loaded and exported."""

    name: str
    """config.json's "kind"."""
    model_class: type[nn.Module]
    """The class of its models."""
    is_model: Callable[[nn.Module], bool]
    """Whether an instance of model_class is written as this kind (a GPT is gpt, encoder or lora by its switches)."""
    legacy: Callable[[Mapping[str, Any]], bool] | None
    """Whether a config.json written before the "kind" field holds this kind; None for a kind newer than the field."""
    what: str
    """The kind in messages ("a GPT decoder")."""
    family: str
    """Directories of one family may replace each other: merging a LoRA run's adapters rewrites its final/ as
    a plain GPT, but nothing turns a classifier into a GPT in place."""
    write: Callable[[nn.Module], tuple[Files, dict[str, Any]]]
    """The model's tensors by file (model.safetensors first) and its own config.json keys."""
    tied: Callable[[nn.Module], set[str]]
    """State-dict names that alias another tensor and are stored once."""
    build: Callable[[BuildRequest], nn.Module]
    """The model of a directory, in eval mode on the request's device."""
    load_weights: Callable[[nn.Module, Path], None]
    """Copy a directory's tensors into the model it was written from, in place and exactly (resuming training)."""
    load_as: Mapping[str, Callable[[nn.Module], nn.Module]]
    """What `load(kind=K)` may ask of its directories (K -> what to return from the built model)."""
    how_to_make: str = ""
    """When `load(kind=<this>)` finds another kind, what to do instead (after "not <what>; ")."""
    exports: tuple[str, ...] = ()
    """The outside formats (EXPORT_FORMATS) its directories can be written to."""
    no_export: str = ""
    """For the other formats: why not, and what to do instead (after "cannot be written as ...; ")."""
    stacks: int = 1
    """Transformer stacks of its config it holds (an encoder-decoder: two), for the memory check before loading."""
    adapter_files: bool = True
    """Apply LoRA adapter files beside its weights when it loads as a GPT (a kind with adapters inside: False)."""
    tokenizer_of: Callable[[nn.Module], Tokenizer | None] = field(default=_no_tokenizer)
    """The tokenizer the model itself keeps, written when `save_model` is given none."""

    def check_export(self, fmt: str, where: Any) -> None:
        """Raise one line naming `where` when this kind cannot be written in format `fmt`."""
        if fmt not in self.exports:
            raise ScratchLLMError(f"{where}: {self.what} cannot be written as {EXPORT_FORMATS[fmt]}; {self.no_export}")


REGISTRY: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add a kind to the registry (its name must be new); returns it."""
    if kind.name in REGISTRY:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    unknown = [f for f in kind.exports if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"model kind {kind.name!r}: unknown export format(s) {unknown}; known: {list(EXPORT_FORMATS)}")
    REGISTRY[kind.name] = kind
    return kind


def registered(name: str) -> ModelKind:
    """The registry entry of a kind name that `kind_of_config` or `loadable_kinds` gave."""
    return REGISTRY[name]


def loadable_kinds() -> list[str]:
    """The kinds `load(kind=...)` accepts: those some kind's directories can be loaded as."""
    return [name for name in REGISTRY if any(name in k.load_as for k in REGISTRY.values())]


def kind_of_config(data: Mapping[str, Any]) -> str:
    """The kind of a scratchllm config.json, also of one written before the "kind" field existed."""
    kind = data.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or kind not in REGISTRY:
            raise ScratchLLMError(f"config.json field 'kind' is {kind!r}; expected one of {', '.join(REGISTRY)}")
        return kind
    for entry in REGISTRY.values():
        if entry.legacy is not None and entry.legacy(data):
            return entry.name
    raise AssertionError("the gpt kind recognises every config.json without old keys")


def kind_of_model(model: nn.Module, caller: str = "save_model") -> ModelKind:
    """The kind a model object is written as (a torch.compile wrapper is looked through)."""
    model = getattr(model, "_orig_mod", model)
    if (quantized := quantization(model)) is not None:  # its float weights are gone: nothing faithful to write
        raise ScratchLLMError(f"{caller}: the model is quantized ({quantized}) for decoding and cannot be written; "
                              "write the model before quantizing it (load without quantize)")
    for entry in REGISTRY.values():
        if isinstance(model, entry.model_class) and entry.is_model(model):
            return entry
    classes = list(dict.fromkeys(k.model_class.__name__ for k in REGISTRY.values()))
    listed = f"{', '.join(classes[:-1])} or {classes[-1]}" if len(classes) > 1 else classes[0]
    raise ScratchLLMError(f"{caller}: expected a scratchllm {listed}, got {type(model).__name__}")


# --------------------------------------------------------------------------------------------------
# Directories written before the "kind" field


def _old_keys(data: Mapping[str, Any]) -> tuple[bool, ...]:
    """The keys that told kinds apart before the "kind" field, strongest first ("objective": "seq2seq",
    "task": "classification", a "lora" object, "causal": false); the old reader took the first set."""
    model = data.get("model")
    return (data.get("objective") == "seq2seq", data.get("task") == "classification", data.get("lora") is not None,
            isinstance(model, Mapping) and model.get("causal") is False)


def _old_key(i: int) -> Callable[[Mapping[str, Any]], bool]:
    """Legacy test: old key i is set and no stronger one is."""
    return lambda data: (keys := _old_keys(data))[i] and not any(keys[:i])


def _no_old_key(data: Mapping[str, Any]) -> bool:
    return not any(_old_keys(data))


# --------------------------------------------------------------------------------------------------
# GPT kinds: gpt, encoder, lora


def _plain_gpt(causal: bool) -> Callable[[nn.Module], bool]:
    return lambda model: getattr(model, "lora_config", None) is None and model.config.causal is causal


def _write_gpt(model: nn.Module) -> tuple[Files, dict[str, Any]]:
    return {WEIGHTS_FILE: gpt_state(model)}, {}


def _write_lora(model: nn.Module) -> tuple[Files, dict[str, Any]]:
    return {WEIGHTS_FILE: gpt_state(model)}, {"lora": {**vars(model.lora_config)}}


def _build_gpt(req: BuildRequest) -> GPT:
    return gpt_from_state_dict(req.config, read_safetensors(req.weights), str(req.weights), req.source, req.device,
                               req.dtype)


def _build_lora(req: BuildRequest) -> GPT:
    lora = LoRAConfig.from_dict(req.data["lora"], f"{req.source} field 'lora'")
    base, adapters = split_lora_state(read_safetensors(req.weights))
    model = gpt_from_state_dict(req.config, base, str(req.weights), req.source, req.device, req.dtype)
    apply_lora(model, lora.rank, lora.alpha, lora.targets, lora.dropout, verbose=False, base_model=lora.base_model)
    dtype_now = model.tok_emb.weight.dtype
    set_tensors(model, {k: v.to(dtype_now) for k, v in adapters.items()}, str(req.weights),
                {k for k in lora_state_dict(model) if k.endswith((".lora_A", ".lora_B"))})
    model.eval()
    return merge_lora(model) if req.merge else model


def _load_gpt_weights(model: nn.Module, directory: Path) -> None:
    copy_into(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, gpt_tied(model))


def _same(model: nn.Module) -> nn.Module:
    return model


register(ModelKind(
    name="gpt", model_class=GPT, is_model=_plain_gpt(causal=True), legacy=_no_old_key,
    what="a GPT decoder", family="lm",
    write=_write_gpt, tied=gpt_tied, build=_build_gpt, load_weights=_load_gpt_weights,
    load_as={"gpt": _same},
    how_to_make="an encoder-decoder is used with `scratchllm translate`",
    exports=("hf", "gguf"),
))

register(ModelKind(
    name="encoder", model_class=GPT, is_model=_plain_gpt(causal=False), legacy=_old_key(3),
    what="an encoder (causal false)", family="lm",
    write=_write_gpt, tied=gpt_tied, build=_build_gpt, load_weights=_load_gpt_weights,
    load_as={"gpt": _same, "encoder": _same},
    how_to_make="train one with `scratchllm pretrain --objective mlm`",
    no_export="the families written here are causal decoders: fill masks with `scratchllm fill-mask` "
              "or fine-tune it with `scratchllm finetune classify`",
))

register(ModelKind(
    name="lora", model_class=GPT, is_model=lambda model: getattr(model, "lora_config", None) is not None,
    legacy=_old_key(2), what="a GPT with LoRA adapters", family="lm",
    write=_write_lora, tied=gpt_tied, build=_build_lora, load_weights=_load_gpt_weights,
    load_as={"gpt": _same},
    # export-hf loads it with the adapters merged; other formats want the merged directory written first
    exports=("hf",),
    no_export="its LoRA adapters are not merged: write a plain model with `scratchllm merge-lora` first",
    adapter_files=False,
))


# --------------------------------------------------------------------------------------------------
# Classifier: a GPT body (model.safetensors) and a head (classifier.safetensors)

HEAD_FILE = "classifier.safetensors"  # a classifier's head (and unmerged adapters), beside the body's weights


def _write_classifier(model: Classifier) -> tuple[Files, dict[str, Any]]:
    body = model.body
    keys: dict[str, Any] = {"labels": model.labels, "pooling": model.pooling, "max_length": model.max_length}
    if getattr(model, "lora_config", None) is not None:
        # The body is written merged, so every loader reads a plain GPT; the unmerged adapters
        # go with the head, so the training loop resumes them exactly.
        body = merge_lora(copy.deepcopy(body))
        lora = model.lora_config
        keys["lora_merged"] = {"rank": lora.rank, "alpha": lora.alpha, "targets": lora.targets}
    return {WEIGHTS_FILE: gpt_state(body), HEAD_FILE: model.own_tensors()}, keys


def _classifier_tied(model: Classifier) -> set[str]:
    return {f"body.{name}" for name in gpt_tied(model.body)}


def _build_classifier(req: BuildRequest) -> Classifier:
    body = _build_gpt(req)
    data, where = req.data, req.source
    labels, pooling, max_length = data.get("labels"), data.get("pooling", "last"), data.get("max_length")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ScratchLLMError(f"{where}: field 'labels' must be a list of class names")
    if pooling not in POOLINGS:
        raise ScratchLLMError(f"{where}: field 'pooling' is {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ScratchLLMError(f"{where}: field 'max_length' must be a positive integer or null")
    model = Classifier(body, labels, pooling, req.tokenizer(), max_length)
    head_file = req.directory / HEAD_FILE
    state = {k.removeprefix("head."): v for k, v in read_safetensors(head_file).items() if k.startswith("head.")}
    expect = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expect:
        raise ScratchLLMError(f"{head_file}: head tensors {got} do not fit {len(labels)} labels and "
                              f"emb_dim {body.config.emb_dim} (expected {expect})")
    model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in state.items()})
    return model.to(body.tok_emb.weight.device).eval()


def _load_classifier_weights(model: Classifier, directory: Path) -> None:
    own = read_safetensors(directory / HEAD_FILE)
    if getattr(model, "lora_config", None) is None:  # with LoRA the frozen body is the base in memory
        _load_gpt_weights(model.body, directory)
    expected = set(model.own_tensors())
    if set(own) != expected:
        raise ScratchLLMError(f"{directory / HEAD_FILE}: holds {sorted(own)[:4]}, expected {sorted(expected)[:4]}")
    copy_into(model, own, directory / HEAD_FILE, _classifier_tied(model), partial=True)


register(ModelKind(
    name="classifier", model_class=Classifier, is_model=lambda model: True, legacy=_old_key(1),
    what="a classifier", family="classifier",
    write=_write_classifier, tied=_classifier_tied, build=_build_classifier, load_weights=_load_classifier_weights,
    load_as={"gpt": lambda model: model.body, "classifier": _same},  # "gpt": the body, a complete GPT
    how_to_make="make one with `scratchllm finetune classify`",
    exports=("hf",),  # export-hf writes its GPT body (the language model it was fine-tuned from)
    no_export="its head has no place there: classify with `scratchllm classify`",
    tokenizer_of=lambda model: model.tokenizer,  # a classifier keeps the tokenizer it predicts with
))


# --------------------------------------------------------------------------------------------------
# Encoder-decoder: both stacks in model.safetensors, the shared embedding once


def _write_seq2seq(model: EncoderDecoder) -> tuple[Files, dict[str, Any]]:
    shared = model.shared_names()
    return {WEIGHTS_FILE: {k: v for k, v in model.state_dict().items() if k not in shared}}, {"objective": "seq2seq"}


def _load_seq2seq_weights(model: EncoderDecoder, directory: Path) -> None:
    copy_into(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, model.shared_names())


def _build_seq2seq(req: BuildRequest) -> EncoderDecoder:
    model = EncoderDecoder(req.config)
    _load_seq2seq_weights(model, req.directory)
    return place(model, req.device, req.dtype)


register(ModelKind(
    name="seq2seq", model_class=EncoderDecoder, is_model=lambda model: True, legacy=_old_key(0),
    what="an encoder-decoder (seq2seq)", family="seq2seq",
    write=_write_seq2seq, tied=lambda model: model.shared_names(), build=_build_seq2seq,
    load_weights=_load_seq2seq_weights, load_as={"seq2seq": _same},
    how_to_make="train one with `scratchllm pretrain --objective seq2seq`",
    no_export="the families written here are decoders: translate with `scratchllm translate`",
    stacks=2,
))
