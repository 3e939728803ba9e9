"""Model directories: the one writer (`save_model`) and the one reader (`load`) of every kind of model.

This is where a trained model leaves the pipeline and where every later stage (generation,
fine-tuning, evaluation, serving) picks one up. A scratchllm model directory holds

    config.json        {"format": "scratchllm", "version": 1, "kind": KIND, "model": {GPTConfig fields},
                        "tokenizer": {"type": "gpt2"} or {"type": "bpe", "file": "tokenizer.json", ...}
                                     or {"type": "hf", "file": "tokenizer.json", "sha256": ..., "stop_ids": [...]},
                        ...the kind's own keys, and any extra keys the writer adds ("prompt_style", ...)}
    model.safetensors  the weights under our parameter names (a tensor shared by two modules is stored once)
    tokenizer.json     a trained tokenizer (absent when the tokenizer is GPT-2's); for "hf" a Hugging Face
                       tokenizer.json, with its tokenizer_config.json and chat_template.jinja beside it

and one of these kinds, decided by the model object when it is written:

| kind         | model                                      | more                                             |
|--------------|--------------------------------------------|--------------------------------------------------|
| `gpt`        | `GPT` (a causal decoder)                   |                                                  |
| `encoder`    | `GPT` with `causal=False` (MLM encoder)    |                                                  |
| `lora`       | `GPT` with unmerged LoRA adapters          | "lora": the adapter settings; lora_A/B tensors   |
| `classifier` | `Classifier` (GPT body + head)             | "labels", "pooling", "max_length"; classifier.safetensors |
| `seq2seq`    | `EncoderDecoder`                           | encoder.* and decoder.* tensors                  |

Directories written before the "kind" field existed are recognised by their old keys ("objective":
"seq2seq", "task": "classification", "lora", "causal": false). `load` also takes a training run
directory (its final/, else best/, else newest checkpoints/step-N/), a Hugging Face directory or a
hub name (checkpoint/hf.py). Directories are written atomically (`core.files.atomic_directory`), and
an existing one is replaced only by a model of the same family.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.core.device import parse_dtype, resolve_device
from scratchllm.core.files import atomic_directory, read_json, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.classifier import POOLINGS, Classifier
from scratchllm.models.config import GPTConfig
from scratchllm.models.encoder_decoder import EncoderDecoder
from scratchllm.models.gpt import GPT
from scratchllm.models.lora import LoRAConfig, apply_lora, lora_state_dict, merge_lora, set_tensors, split_lora_state
from scratchllm.models.size import check_fits, parameter_count
from scratchllm.tokenizer import Tokenizer

FORMAT = "scratchllm"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
HEAD_FILE = "classifier.safetensors"  # a classifier's head (and unmerged adapters), beside the body's weights
KINDS = ("gpt", "encoder", "lora", "classifier", "seq2seq")
RESERVED_KEYS = ("format", "version", "kind", "model", "tokenizer")
# A directory may be replaced only by a model of the same family: merging a LoRA run's adapters
# rewrites its final/ as a plain GPT, but nothing turns a classifier into a GPT in place.
_FAMILY = {"gpt": "lm", "encoder": "lm", "lora": "lm", "classifier": "classifier", "seq2seq": "seq2seq"}


# --------------------------------------------------------------------------------------------------
# Files: safetensors and directory kinds


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or corrupt file is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ScratchLLMError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # A truncated file fails with "incomplete metadata" or a wrong-size tensor, a random one
        # with a header error: either way the file is not a whole safetensors file.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def _save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def kind_of_config(data: Mapping[str, Any]) -> str:
    """The kind of a scratchllm config.json, also of one written before the "kind" field existed."""
    kind = data.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ScratchLLMError(f"config.json field 'kind' is {kind!r}; expected one of {', '.join(KINDS)}")
        return kind
    if data.get("objective") == "seq2seq":
        return "seq2seq"
    if data.get("task") == "classification":
        return "classifier"
    if data.get("lora") is not None:
        return "lora"
    model = data.get("model")
    if isinstance(model, Mapping) and model.get("causal") is False:
        return "encoder"
    return "gpt"


def dir_kind(directory: Path, strict: bool = True) -> str | None:
    """"scratchllm", "hf" or None, from the directory's config.json (strict: bad JSON raises)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ScratchLLMError:
        if strict:
            raise
        return None
    if data.get("format") == FORMAT:
        return "scratchllm"
    if "model_type" in data:
        return "hf"
    return None


def _same_family(kind: str) -> Callable[[Path], bool]:
    """may_replace for atomic_directory: an existing scratchllm directory of kind's family."""

    def check(directory: Path) -> bool:
        if dir_kind(directory, strict=False) != "scratchllm":
            return False
        try:
            return _FAMILY[kind_of_config(read_json(directory / CONFIG_FILE))] == _FAMILY[kind]
        except ScratchLLMError:
            return False

    return check


# --------------------------------------------------------------------------------------------------
# The writer


def model_kind(model: nn.Module) -> str:
    """The kind a model is written as (see the table above)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    if isinstance(model, Classifier):
        return "classifier"
    if isinstance(model, EncoderDecoder):
        return "seq2seq"
    if isinstance(model, GPT):
        if getattr(model, "lora_config", None) is not None:
            return "lora"
        return "gpt" if model.config.causal else "encoder"
    raise ScratchLLMError(f"save_model: expected a scratchllm GPT, Classifier or EncoderDecoder, got {type(model).__name__}")


def _gpt_state(model: GPT) -> dict[str, torch.Tensor]:
    """A GPT's tensors, a tied LM head once (safetensors refuses tensors that share memory)."""
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        if model.out_head.weight is not model.tok_emb.weight:
            raise ScratchLLMError("save_model: config.tie_embeddings is True but out_head.weight is not tok_emb.weight")
        del state["out_head.weight"]
    return state


def _weights_and_keys(model: nn.Module, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(model.safetensors tensors, classifier.safetensors tensors, the kind's config.json keys)."""
    if kind == "seq2seq":
        shared = model.shared_names()
        return {k: v for k, v in model.state_dict().items() if k not in shared}, {}, {"objective": "seq2seq"}
    if kind == "classifier":
        body = model.body
        keys: dict[str, Any] = {"labels": model.labels, "pooling": model.pooling, "max_length": model.max_length}
        if getattr(model, "lora_config", None) is not None:
            # The body is written merged, so every loader reads a plain GPT; the unmerged adapters
            # go with the head, so the training loop resumes them exactly.
            body = merge_lora(copy.deepcopy(body))
            lora = model.lora_config
            keys["lora_merged"] = {"rank": lora.rank, "alpha": lora.alpha, "targets": lora.targets}
        return _gpt_state(body), model.own_tensors(), keys
    keys = {"lora": {**vars(model.lora_config)}} if kind == "lora" else {}
    return _gpt_state(model), {}, keys


def tokenizer_spec(tokenizer: Tokenizer | None) -> dict[str, Any]:
    """What config.json records of a tokenizer: {"type": "gpt2"}, or a trained one's file and SHA-256,
    or a Hugging Face one's ("hf": its tokenizer.json's SHA-256, and the extra stop ids it was given)."""
    if tokenizer is None or tokenizer.spec.get("type") == "gpt2":
        return {"type": "gpt2"}
    blob = tokenizer.to_json_bytes()
    if tokenizer.hf_files:
        spec: dict[str, Any] = {"type": "hf", "file": TOKENIZER_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
        stop_ids = tokenizer.spec.get("stop_ids")
        return {**spec, "stop_ids": list(stop_ids)} if stop_ids else spec
    return {"type": "bpe", "file": TOKENIZER_FILE, "sha256": hashlib.sha256(blob).hexdigest()}


def save_model(
    model: nn.Module,
    directory: str | os.PathLike[str],
    tokenizer: Tokenizer | None = None,
    extra: Mapping[str, Any] | None = None,
    add_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` (a GPT, Classifier or EncoderDecoder; its tokenizer, None meaning GPT-2's) as a
    scratchllm model directory of the model's kind. Returns the directory.

    `extra` adds keys to config.json (e.g. {"prompt_style": "alpaca"}). `add_files(tmp_dir)` may
    write more files (e.g. the trainer state) into the directory before it is swapped into place,
    so they appear atomically with the weights. An existing directory is replaced only when it is
    empty or a model directory of the same family (a GPT never overwrites a classifier).
    """
    model = getattr(model, "_orig_mod", model)
    kind = model_kind(model)
    config = model.config
    if tokenizer is None and isinstance(model, Classifier):
        tokenizer = model.tokenizer  # a classifier keeps the tokenizer it predicts with
    extra = dict(extra or {})
    clash = [k for k in extra if k in RESERVED_KEYS]
    if clash:
        raise ScratchLLMError(f"save_model: extra key(s) {clash} are reserved ({', '.join(RESERVED_KEYS)})")
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ScratchLLMError(
            f"save_model: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {config.vocab_size}"
        )
    weights, head, keys = _weights_and_keys(model, kind)
    spec = tokenizer_spec(tokenizer)
    directory = Path(directory)
    size = sum(t.numel() * t.element_size() for t in [*weights.values(), *(head or {}).values()])
    with atomic_directory(directory, _same_family(kind), f"a scratchllm model directory of the same kind ({kind})",
                          size=size) as tmp:
        if spec["type"] == "hf":  # the Hugging Face files as they were read, tokenizer.json included
            for name, blob in tokenizer.hf_files.items():
                (tmp / name).write_bytes(blob)
        elif spec["type"] != "gpt2":
            # Written here rather than with tokenizer.save, which would repoint the caller's
            # tokenizer.spec at this temporary directory.
            (tmp / TOKENIZER_FILE).write_bytes(tokenizer.to_json_bytes())
        write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "kind": kind, "model": config.to_dict(),
                                       "tokenizer": spec, **keys, **extra})
        _save_safetensors(weights, tmp / WEIGHTS_FILE)
        if head:
            _save_safetensors(head, tmp / HEAD_FILE)
        if add_files is not None:
            add_files(tmp)
    return directory


# --------------------------------------------------------------------------------------------------
# Finding a model directory, reading its config


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """The model directory that `path` names: itself, or for a training run directory its final/,
    else best/, else its highest checkpoints/step-N/. A config.json or weights file names its folder."""
    p = Path(path).expanduser()
    if p.is_file() and (p.name == CONFIG_FILE or p.suffix in (".safetensors", ".bin")):
        if not (p.parent / CONFIG_FILE).is_file():  # name the file given, not its folder (often ".")
            raise ScratchLLMError(f"{p}: a weights file without a {CONFIG_FILE} beside it; expected a model directory "
                                  f"(its {CONFIG_FILE} and weights)")
        p = p.parent
    if not p.exists():
        raise ScratchLLMError(f"{p}: no such directory")
    if not p.is_dir():
        raise ScratchLLMError(f"{p}: not a directory")
    if dir_kind(p):
        return p
    for sub in ("final", "best"):
        if dir_kind(p / sub):
            return p / sub
    steps = []
    if (p / "checkpoints").is_dir():
        for d in (p / "checkpoints").iterdir():
            m = re.fullmatch(r"step-(\d+)", d.name)
            if m and dir_kind(d):
                steps.append((int(m.group(1)), d))
    if steps:
        return max(steps)[1]
    if (p / CONFIG_FILE).is_file():
        raise ScratchLLMError(
            f"{p / CONFIG_FILE}: not a model config (no \"format\": \"scratchllm\" and no \"model_type\"), "
            "and no final/, best/ or checkpoints/step-N/ model directory beside it"
        )
    raise ScratchLLMError(
        f"{p}: not a model directory (no {CONFIG_FILE}) nor a run directory "
        "(no final/, best/ or checkpoints/step-N/ holding one)"
    )


def read_model_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole config.json of a scratchllm model directory (or of a run directory's model), checked."""
    d = resolve_model_dir(directory)
    path = d / CONFIG_FILE
    data = read_json(path)
    if data.get("format") != FORMAT:
        hint = " (a Hugging Face directory: convert it with `scratchllm import-hf`)" if "model_type" in data else ""
        raise ScratchLLMError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}{hint}")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ScratchLLMError(f"{path}: field 'version' is {version!r}; this scratchllm reads versions up to {VERSION}")
    if not isinstance(data.get("model"), dict):
        raise ScratchLLMError(f"{path}: field 'model' must be an object of GPTConfig fields")
    if not isinstance(data.get("tokenizer", {"type": "gpt2"}), dict):
        raise ScratchLLMError(f"{path}: field 'tokenizer' must be an object")
    try:
        kind_of_config(data)
    except ScratchLLMError as exc:
        raise ScratchLLMError(f"{path}: {exc}") from None
    return data


def read_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer a scratchllm model directory records: GPT-2's, or its own tokenizer.json
    (checked against the SHA-256 in config.json): a trained one, or a Hugging Face one with its
    tokenizer_config.json and chat template beside it."""
    d = resolve_model_dir(directory)
    spec = read_model_config(d).get("tokenizer", {"type": "gpt2"})
    if spec.get("type") == "gpt2":
        return Tokenizer.gpt2()
    if spec.get("type") in ("bpe", "hf"):
        file = spec.get("file")
        if not isinstance(file, str) or Path(file).name != file:
            raise ScratchLLMError(f"{d / CONFIG_FILE}: tokenizer 'file' is {file!r}, expected a file name inside the directory")
        stop_ids = spec.get("stop_ids") or []
        if not (isinstance(stop_ids, list) and all(isinstance(i, int) for i in stop_ids)):
            raise ScratchLLMError(f"{d / CONFIG_FILE}: tokenizer 'stop_ids' is {stop_ids!r}, expected a list of token ids")
        tokenizer = Tokenizer.from_hf(d / file, stop_ids=stop_ids) if spec["type"] == "hf" else Tokenizer.load(d / file)
        want = spec.get("sha256")
        if want and tokenizer.spec.get("sha256") != want:
            raise ScratchLLMError(
                f"{d / file}: SHA-256 is {tokenizer.spec.get('sha256')}, expected {want} as recorded in {d / CONFIG_FILE}"
            )
        return tokenizer
    return Tokenizer.from_spec(spec)


# --------------------------------------------------------------------------------------------------
# Building models from tensors, with errors that say which tensor does not fit


def _natural_order(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def check_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], weights: str,
                  config_source: str) -> None:
    """Raise naming the first tensor of `state` that the model does not expect, lacks or shapes differently."""
    for name, shape in expected.items():
        if name not in state:
            raise ScratchLLMError(f"{weights}: missing tensor {name!r} of shape {shape} that {config_source} expects "
                                  "(the config does not match the weights)")
        got = tuple(state[name].shape)
        if got != shape:
            raise ScratchLLMError(f"{weights}: tensor {name!r} has shape {got} but {config_source} expects {shape} "
                                  "(the config does not match the weights)")
    for name in sorted(state, key=_natural_order):  # deterministic: blocks.2 before blocks.10
        if name not in expected:
            raise ScratchLLMError(f"{weights}: unexpected tensor {name!r} of shape {tuple(state[name].shape)} for the "
                                  f"model in {config_source} (the config does not match the weights)")
        if not state[name].is_floating_point():
            raise ScratchLLMError(f"{weights}: tensor {name!r} has dtype {state[name].dtype}, expected floating point")


def _expected_shapes(model: nn.Module, skip: set[str] = frozenset()) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in skip}


def _tied(model: nn.Module) -> set[str]:
    """State-dict names that alias another tensor and are stored once."""
    if isinstance(model, EncoderDecoder):
        return model.shared_names()
    if isinstance(model, GPT) and model.config.tie_embeddings:
        return {"out_head.weight"}
    return set()


def _place(model: nn.Module, device: str | torch.device, dtype: str | torch.dtype | None) -> nn.Module:
    dtype, device = parse_dtype(dtype), resolve_device(device)
    try:
        if dtype is not None:
            model.to(dtype=dtype)
        model.to(device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ScratchLLMError(f"device {str(device)!r}: cannot move the model there ({exc})") from None
    return model.eval()


def gpt_from_state_dict(
    config: GPTConfig,
    state_dict: dict[str, torch.Tensor],
    weights: str = "weights",
    config_source: str = "config",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> GPT:
    """A GPT in eval mode holding exactly `state_dict`'s tensors (checked against `config` first)."""
    held = sum(t.numel() for t in state_dict.values())
    described = parameter_count(config)
    if described > 2 * held + 1_000_000:  # even the empty (meta) model of a hostile config takes minutes
        raise ScratchLLMError(f"{config_source}: describes a model of {described:,} parameters, but {weights} holds "
                              f"{held:,} numbers; the config does not belong to these weights")
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = GPT(config)
    check_tensors(state_dict, _expected_shapes(model, _tied(model)), weights, config_source)
    # assign=True adopts the loaded tensors instead of copying into freshly initialised ones.
    model.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_embeddings:
        model.out_head.weight = model.tok_emb.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a model change added a tensor that is not saved; better loud than silently empty
        raise RuntimeError(f"tensors not restored from the checkpoint: {left}")
    return _place(model, device, dtype)


def load_weights(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Copy a model directory's weights into `model` in place, exactly (no dtype change): how the
    training loop resumes. `model` is the object the directory was written from (any kind)."""
    d = Path(directory)
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, Classifier):
        own = read_safetensors(d / HEAD_FILE)
        if getattr(model, "lora_config", None) is None:  # with LoRA the frozen body is the base in memory
            _copy_into(model.body, read_safetensors(d / WEIGHTS_FILE), d / WEIGHTS_FILE)
        expected = set(model.own_tensors())
        if set(own) != expected:
            raise ScratchLLMError(f"{d / HEAD_FILE}: holds {sorted(own)[:4]}, expected {sorted(expected)[:4]}")
        _copy_into(model, own, d / HEAD_FILE, partial=True)
        return
    _copy_into(model, read_safetensors(d / WEIGHTS_FILE), d / WEIGHTS_FILE)


def _copy_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, partial: bool = False) -> None:
    expected = _expected_shapes(model, _tied(model))
    if partial:
        expected = {k: v for k, v in expected.items() if k in state}
    check_tensors(state, expected, str(path), "the model being trained")
    with torch.no_grad():
        params = model.state_dict()
        for name, value in state.items():
            params[name].copy_(value)


def build_model(d: Path, data: dict[str, Any], kind: str, device, dtype, merge: bool) -> nn.Module:
    source = str(d / CONFIG_FILE)
    config = GPTConfig.from_dict(data["model"], source=f"{source} field 'model'")
    weights = d / WEIGHTS_FILE
    # Before reading the weights: a config too big for this machine is one line, not a minute of swapping.
    # (2 bytes a parameter at least, bfloat16; an encoder-decoder has two stacks.)
    wanted = parse_dtype(dtype)
    check_fits(config, device, wanted.itemsize if wanted is not None else 2, copies=2 if kind == "seq2seq" else 1,
               what=source)
    if kind == "seq2seq":
        model = EncoderDecoder(config)
        load_weights(model, d)
        return _place(model, device, dtype)
    state = read_safetensors(weights)
    if kind == "lora":
        lora = LoRAConfig.from_dict(data["lora"], f"{source} field 'lora'")
        base, adapters = split_lora_state(state)
        model = gpt_from_state_dict(config, base, str(weights), source, device, dtype)
        apply_lora(model, lora.rank, lora.alpha, lora.targets, lora.dropout, verbose=False, base_model=lora.base_model)
        dtype_now = model.tok_emb.weight.dtype
        set_tensors(model, {k: v.to(dtype_now) for k, v in adapters.items()}, str(weights),
                    {k for k in lora_state_dict(model) if k.endswith((".lora_A", ".lora_B"))})
        model.eval()
        return merge_lora(model) if merge else model
    body = gpt_from_state_dict(config, state, str(weights), source, device, dtype)
    if kind != "classifier":
        return body
    return _classifier(d, data, body)


def _classifier(d: Path, data: dict[str, Any], body: GPT) -> Classifier:
    labels, pooling, max_length = data.get("labels"), data.get("pooling", "last"), data.get("max_length")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ScratchLLMError(f"{d / CONFIG_FILE}: field 'labels' must be a list of class names")
    if pooling not in POOLINGS:
        raise ScratchLLMError(f"{d / CONFIG_FILE}: field 'pooling' is {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ScratchLLMError(f"{d / CONFIG_FILE}: field 'max_length' must be a positive integer or null")
    model = Classifier(body, labels, pooling, read_tokenizer(d), max_length)
    state = {k.removeprefix("head."): v for k, v in read_safetensors(d / HEAD_FILE).items() if k.startswith("head.")}
    expect = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expect:
        raise ScratchLLMError(f"{d / HEAD_FILE}: head tensors {got} do not fit {len(labels)} labels and "
                              f"emb_dim {body.config.emb_dim} (expected {expect})")
    model.head.load_state_dict({k: v.to(model.head.weight.dtype) for k, v in state.items()})
    return model.to(body.tok_emb.weight.device).eval()
