"""Checkpoints: our model directory format, OpenAI's GPT-2 weights, and Hugging Face import/export.

This is where a trained model leaves the pipeline and where every later stage (generation,
fine-tuning, evaluation, serving) picks one up. A scratchllm model directory holds

    config.json        {"format": "scratchllm", "version": 1, "model": {GPTConfig fields},
                        "tokenizer": {"type": "gpt2"} or {"type": "bpe", "file": "tokenizer.json", ...},
                        ...any extra keys the writer adds, e.g. "prompt_style", "task"}
    model.safetensors  the weights under our parameter names (a tied LM head is stored once)
    tokenizer.json     a trained tokenizer (absent when the tokenizer is GPT-2's)

`load` takes such a directory, a training run directory (its final/, best/ or newest
checkpoints/step-N/), a Hugging Face GPT-2 directory, or a GPT-2 name ("gpt2" ... "gpt2-xl"),
downloaded once from the Hugging Face hub into the cache. Hugging Face's GPT-2 stores its linear
layers as `Conv1D` modules whose weight is (in, out), the transpose of `nn.Linear`'s (out, in);
import and export transpose those four matrices per block and rename everything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scratchllm.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.files import umask

if TYPE_CHECKING:
    from scratchllm.model import GPT
    from scratchllm.tokenizer import Tokenizer

FORMAT = "scratchllm"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
_RESERVED_KEYS = ("format", "version", "model", "tokenizer")

# OpenAI's four GPT-2 releases, as named on the Hugging Face hub (Radford et al. 2019, table 2).
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_GPT2_ALIASES = {"gpt2-small": "gpt2", **{f"openai-community/{n}": n for n in GPT2_NAMES}}
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
HF_FILES = ("config.json", "model.safetensors")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """torch.bfloat16 or a name ("float32", "bfloat16", "float16", "bf16", ...) -> torch.dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ScratchLLMError(f"dtype {dtype}: expected a floating-point dtype")
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ScratchLLMError(f"dtype {dtype!r}: expected one of float32, bfloat16, float16")
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------------
# Files: JSON, safetensors, PyTorch pickles, and directories written all at once


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ScratchLLMError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ScratchLLMError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ScratchLLMError(f"{path.name}: cannot write as JSON ({exc})") from None
    path.write_text(text + "\n", encoding="utf-8")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
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


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle of tensors. weights_only=True: unpickling may not run arbitrary code."""
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: cannot read PyTorch weights ({reason})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ScratchLLMError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def _finish_tree(directory: Path) -> None:
    """Give a temporary tree the permissions of a normal one and flush its files to disk."""
    mask = umask()
    os.chmod(directory, 0o777 & ~mask)  # mkdtemp makes it private (0700)
    for path in directory.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~mask)
            # Without the fsync, a power cut just after the rename can leave the new name
            # pointing at files whose data never reached the disk.
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], replaces: str = "scratchllm") -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it becomes `target`.

    The files are written into `.NAME.tmp-*`, then an existing `target` is renamed aside to
    `.NAME.old-*`, the new directory is renamed to `target`, and only then is the old one removed.
    If anything fails before that, the temporary directory is deleted and `target` is untouched;
    a crash between the two renames leaves the previous directory intact as `.NAME.old-*`.
    An existing `target` is only replaced when it is empty or a model directory of kind `replaces`
    ("scratchllm" or "hf"), so a mistyped path never deletes, say, a run directory or $HOME.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise ScratchLLMError(f"{target}: exists and is not a directory")
        if any(target.iterdir()) and _model_dir_kind(target, strict=False) != replaces:
            what = "a scratchllm model directory" if replaces == "scratchllm" else "a Hugging Face model directory"
            raise ScratchLLMError(
                f"{target}: exists and is not {what}; refusing to replace it (remove it or choose another path)"
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ScratchLLMError(f"{target}: cannot create directory ({exc.strerror or exc})") from None
    try:
        yield tmp
        _finish_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise ScratchLLMError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


# --------------------------------------------------------------------------------------------------
# Building a model from a state dict, with errors that say which tensor does not fit


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    from scratchllm.model import GPT

    with torch.device("meta"):  # shapes only: no memory, no random init
        model = GPT(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_embeddings:
        shapes.pop("out_head.weight")  # the same tensor as tok_emb.weight; stored once
    return shapes


def check_state_dict(state_dict: Mapping[str, torch.Tensor], config: GPTConfig, weights: str, config_source: str) -> None:
    """Raise naming the first tensor of `state_dict` that `config` does not expect, lacks or shapes differently."""
    expected = _expected_shapes(config)
    for name, shape in expected.items():
        if name not in state_dict:
            raise ScratchLLMError(
                f"{weights}: missing tensor {name!r} of shape {shape} that {config_source} expects "
                "(the config does not match the weights)"
            )
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise ScratchLLMError(
                f"{weights}: tensor {name!r} has shape {got} but {config_source} expects {shape} "
                "(the config does not match the weights)"
            )
    # Unexpected names in natural order (blocks.2 before blocks.10) so the message is deterministic.
    for name in sorted(state_dict, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]):
        tensor = state_dict[name]
        if name not in expected:
            raise ScratchLLMError(
                f"{weights}: unexpected tensor {name!r} of shape {tuple(tensor.shape)} for the model in "
                f"{config_source} (the config does not match the weights)"
            )
        if not tensor.is_floating_point():
            raise ScratchLLMError(f"{weights}: tensor {name!r} has dtype {tensor.dtype}, expected floating point")


def model_from_state_dict(
    config: GPTConfig,
    state_dict: dict[str, torch.Tensor],
    weights: str = "weights",
    config_source: str = "config",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> "GPT":
    """A GPT in eval mode holding exactly `state_dict`'s tensors (checked against `config` first)."""
    from scratchllm.model import GPT

    check_state_dict(state_dict, config, weights, config_source)
    dtype = parse_dtype(dtype)
    with torch.device("meta"):
        model = GPT(config)
    # assign=True adopts the loaded tensors instead of copying into freshly initialised ones.
    model.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_embeddings:
        model.out_head.weight = model.tok_emb.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a model change added a tensor that is not saved; better loud than silently empty
        raise RuntimeError(f"tensors not restored from the checkpoint: {left}")
    try:
        if dtype is not None:
            model.to(dtype=dtype)
        model.to(device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ScratchLLMError(f"device {str(device)!r}: cannot move the model there ({exc})") from None
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Our format


def _tokenizer_spec(tokenizer: "Tokenizer | None") -> dict[str, Any]:
    if tokenizer is None:
        return {"type": "gpt2"}
    spec = tokenizer.spec
    return {"type": "gpt2"} if spec.get("type") == "gpt2" else spec


def write_tokenizer(directory: Path, tokenizer: "Tokenizer | None", spec: dict[str, Any]) -> dict[str, Any]:
    """Write a non-GPT-2 tokenizer's JSON into a model directory being built; return the spec to record.

    Written here rather than with tokenizer.save, which would repoint the caller's tokenizer.spec at
    this temporary directory."""
    if spec.get("type") == "gpt2":
        return spec
    blob = tokenizer.to_json_bytes()
    (directory / TOKENIZER_FILE).write_bytes(blob)
    return {"type": "bpe", "file": TOKENIZER_FILE, "sha256": hashlib.sha256(blob).hexdigest()}


def save_pretrained(
    model: "GPT",
    directory: str | os.PathLike[str],
    tokenizer: "Tokenizer | None" = None,
    extra: Mapping[str, Any] | None = None,
    add_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` (and its tokenizer; None means GPT-2's) as a scratchllm model directory.

    `extra` adds keys to config.json (e.g. {"prompt_style": "alpaca"}). `add_files(tmp_dir)` may
    write more files (e.g. optimizer state) into the directory before it is swapped into place, so
    they appear atomically with the weights. Returns the directory.
    """
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise ScratchLLMError(f"save_pretrained: expected a scratchllm GPT, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = [k for k in extra if k in _RESERVED_KEYS]
    if clash:
        raise ScratchLLMError(f"save_pretrained: extra key(s) {clash} are reserved ({', '.join(_RESERVED_KEYS)})")
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ScratchLLMError(
            f"save_pretrained: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{config.vocab_size}"
        )
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if config.tie_embeddings:
        if model.out_head.weight is not model.tok_emb.weight:
            raise ScratchLLMError("save_pretrained: config.tie_embeddings is True but out_head.weight is not tok_emb.weight")
        del state["out_head.weight"]  # safetensors refuses tensors that share memory
    directory = Path(directory)
    spec = _tokenizer_spec(tokenizer)
    with atomic_directory(directory) as tmp:
        spec = write_tokenizer(tmp, tokenizer, spec)
        _write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "model": config.to_dict(),
                                         "tokenizer": spec, **extra})
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if add_files is not None:
            add_files(tmp)
    return directory


def _model_dir_kind(directory: Path, strict: bool = True) -> str | None:
    """"scratchllm", "hf" or None, from the directory's config.json (strict: bad JSON raises)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except ScratchLLMError:
        if strict:
            raise
        return None
    if data.get("format") == FORMAT:
        return "scratchllm"
    if "model_type" in data:
        return "hf"
    return None


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """The model directory that `path` names: itself, or for a training run directory its final/,
    else best/, else its highest checkpoints/step-N/. A config.json or weights file names its folder."""
    p = Path(path).expanduser()
    if p.is_file() and (p.name == CONFIG_FILE or p.suffix in (".safetensors", ".bin")):
        p = p.parent
    if not p.exists():
        raise ScratchLLMError(f"{p}: no such directory")
    if not p.is_dir():
        raise ScratchLLMError(f"{p}: not a directory")
    if _model_dir_kind(p):
        return p
    for sub in ("final", "best"):
        if _model_dir_kind(p / sub):
            return p / sub
    steps = []
    if (p / "checkpoints").is_dir():
        for d in (p / "checkpoints").iterdir():
            m = re.fullmatch(r"step-(\d+)", d.name)
            if m and _model_dir_kind(d):
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
    """The whole config.json of a scratchllm model directory (or of a run directory's model)."""
    d = resolve_model_dir(directory)
    path = d / CONFIG_FILE
    data = _read_json(path)
    if data.get("format") != FORMAT:
        hint = " (a Hugging Face directory: convert it with `scratchllm import-gpt2`)" if "model_type" in data else ""
        raise ScratchLLMError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}{hint}")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ScratchLLMError(f"{path}: field 'version' is {version!r}; this scratchllm reads versions up to {VERSION}")
    if not isinstance(data.get("model"), dict):
        raise ScratchLLMError(f"{path}: field 'model' must be an object of GPTConfig fields")
    if not isinstance(data.get("tokenizer", {"type": "gpt2"}), dict):
        raise ScratchLLMError(f"{path}: field 'tokenizer' must be an object")
    return data


def _gpt2_name(name: str) -> str | None:
    name = _GPT2_ALIASES.get(name, name)
    return name if name in GPT2_NAMES else None


def _locate(path_or_name: str | os.PathLike[str]) -> tuple[str, Path]:
    """("scratchllm" | "hf", directory) for anything `load` accepts; downloads GPT-2 by name."""
    text = os.fspath(path_or_name)
    p = Path(text).expanduser()
    if p.exists():
        d = resolve_model_dir(p)
        kind = _model_dir_kind(d)
        assert kind is not None
        return kind, d
    name = _gpt2_name(text)
    if name is not None:
        return "hf", download_gpt2(name)
    if os.sep in text or text.startswith("."):
        raise ScratchLLMError(f"{p}: no such directory")
    raise ScratchLLMError(
        f"{text!r}: no such model directory, and not a GPT-2 name (one of {', '.join(GPT2_NAMES)})"
    )


def load_model(
    path_or_name: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> "GPT":
    """The model of a scratchllm model/run directory, a Hugging Face GPT-2 directory or a GPT-2 name,
    in eval mode on `device`, cast to `dtype` when given (else as stored)."""
    kind, d = _locate(path_or_name)
    if kind == "hf":
        hf_config, hf_state, weights = read_hf_dir(d)
        config = config_from_hf(hf_config, source=str(d / CONFIG_FILE))
        state = state_dict_from_hf(hf_state, config, source=str(weights))
        return model_from_state_dict(config, state, str(weights), str(d / CONFIG_FILE), device, dtype)
    data = read_model_config(d)
    if data.get("objective") == "seq2seq":  # two stacks (scratchllm.seq2seq), not one GPT
        raise ScratchLLMError(
            f"{d}: an encoder-decoder (seq2seq) model, not a GPT; use `scratchllm translate --model {d}` "
            "or scratchllm.seq2seq.load_seq2seq"
        )
    if data.get("lora") is not None:  # a LoRA run's step checkpoint: base weights + adapters, merged here
        from scratchllm.lora import load_model_with_adapters

        return load_model_with_adapters(d, device=device, dtype=dtype, merge=True)[0]
    config = GPTConfig.from_dict(data["model"], source=f"{d / CONFIG_FILE} field 'model'")
    state = _read_safetensors(d / WEIGHTS_FILE)
    return model_from_state_dict(config, state, str(d / WEIGHTS_FILE), str(d / CONFIG_FILE), device, dtype)


def load_tokenizer(path_or_name: str | os.PathLike[str]) -> "Tokenizer":
    """The tokenizer recorded with a model (GPT-2's for Hugging Face directories and GPT-2 names)."""
    from scratchllm.tokenizer import Tokenizer

    kind, d = _locate(path_or_name)
    if kind == "hf":
        return Tokenizer.gpt2()
    spec = read_model_config(d).get("tokenizer", {"type": "gpt2"})
    kind = spec.get("type")
    if kind == "gpt2":
        return Tokenizer.gpt2()
    if kind == "bpe":
        file = spec.get("file")
        if not isinstance(file, str) or Path(file).name != file:
            raise ScratchLLMError(f"{d / CONFIG_FILE}: tokenizer 'file' is {file!r}, expected a file name inside the directory")
        tokenizer = Tokenizer.load(d / file)
        want = spec.get("sha256")
        if want and tokenizer.spec.get("sha256") != want:
            raise ScratchLLMError(
                f"{d / file}: SHA-256 is {tokenizer.spec.get('sha256')}, expected {want} as recorded in {d / CONFIG_FILE}"
            )
        return tokenizer
    return Tokenizer.from_spec(spec)


def load(
    path_or_name: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple["GPT", "Tokenizer"]:
    """(model, tokenizer) from a scratchllm model directory, a training run directory, a Hugging Face
    GPT-2 directory, or a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once)."""
    _, d = _locate(path_or_name)  # download once, then load both from the directory
    return load_model(d, device, dtype), load_tokenizer(d)


# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 -> ours

# Per-block module names, Hugging Face -> ours.
_HF_BLOCK = {
    "ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
    "ln_2": "norm2", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj",
}
# Conv1D modules store weight as (in, out): transpose to nn.Linear's (out, in).
_HF_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_HF_TOP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
           "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias"}
_GPT2_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation we use


def config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
    """GPTConfig of a Hugging Face GPT-2 config.json; settings our model lacks are errors.

    Dropout is set to 0: it is a training choice (fine-tuning recipes set their own), and the
    pretrained weights are used for inference first.
    """
    h = hf_config
    if h.get("model_type") == "llama":
        return _config_from_hf_llama(h, source)
    if h.get("model_type") != "gpt2":
        raise ScratchLLMError(
            f"{source}: model_type is {h.get('model_type')!r}; only 'gpt2' and 'llama' models can be imported"
        )
    unsupported = [
        (h.get("activation_function", "gelu_new") not in _GPT2_GELU,
         f"activation_function {h.get('activation_function')!r} (only gelu_new)"),
        (bool(h.get("scale_attn_by_inverse_layer_idx", False)), "scale_attn_by_inverse_layer_idx true"),
        (bool(h.get("reorder_and_upcast_attn", False)), "reorder_and_upcast_attn true"),
        (not h.get("scale_attn_weights", True), "scale_attn_weights false"),
        (bool(h.get("add_cross_attention", False)), "add_cross_attention true"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ScratchLLMError(f"{source}: unsupported GPT-2 setting {what}")
    n_embd = h.get("n_embd", 768)
    n_inner = h.get("n_inner")
    if n_inner is None:
        mlp_ratio = 4
    elif isinstance(n_inner, int) and isinstance(n_embd, int) and n_embd > 0 and n_inner % n_embd == 0:
        mlp_ratio = n_inner // n_embd
    else:
        raise ScratchLLMError(f"{source}: n_inner {n_inner!r} is not a multiple of n_embd {n_embd!r}")
    try:
        return GPTConfig(
            vocab_size=h.get("vocab_size", 50257),
            context_length=h.get("n_positions", 1024),
            emb_dim=n_embd,
            n_layers=h.get("n_layer", 12),
            n_heads=h.get("n_head", 12),
            drop_rate=0.0,
            qkv_bias=True,
            tie_embeddings=bool(h.get("tie_word_embeddings", True)),
            mlp_ratio=mlp_ratio,
            layer_norm_eps=float(h.get("layer_norm_epsilon", 1e-5)),
        )
    except ScratchLLMError as exc:
        raise ScratchLLMError(f"{source}: {exc}") from None


def state_dict_from_hf(
    sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights"
) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensor names and layouts -> ours.

    Accepts GPT2LMHeadModel's names ("transformer.h.0...") and the bare GPT2Model ones ("h.0...",
    as in OpenAI's hub files); drops the causal-mask buffers attn.bias / attn.masked_bias; keeps
    lm_head.weight only for an untied head (a tied one is wte.weight again).
    """
    if config.position == "rope":
        return _state_dict_from_hf_llama(sd, config, source)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        key = name.removeprefix("transformer.")
        if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", key):
            continue
        if key == "lm_head.weight":
            if not config.tie_embeddings:
                out["out_head.weight"] = tensor
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = tensor
            continue
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None or m.group(2) not in _HF_BLOCK:
            raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a GPT-2 model")
        layer, module, param = m.groups()
        if param == "weight" and module in _HF_CONV1D:
            if tensor.ndim != 2:
                raise ScratchLLMError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected a matrix")
            tensor = tensor.t().contiguous()  # (in, out) -> (out, in)
        out[f"blocks.{layer}.{_HF_BLOCK[module]}.{param}"] = tensor
    return out


def _config_from_hf_llama(h: Mapping[str, Any], source: str) -> GPTConfig:
    """GPTConfig of a Hugging Face Llama config.json (LlamaForCausalLM): RMSNorm, rotary positions,
    SwiGLU, grouped-query attention."""
    rope = h.get("rope_parameters") or {}
    theta = rope.get("rope_theta", h.get("rope_theta", 10000.0))
    hidden, heads = h.get("hidden_size", 4096), h.get("num_attention_heads", 32)
    unsupported = [
        (h.get("hidden_act", "silu") != "silu", f"hidden_act {h.get('hidden_act')!r} (only silu)"),
        (rope.get("rope_type", "default") != "default" or h.get("rope_scaling"), "rope scaling"),
        (bool(h.get("attention_bias")) != bool(h.get("mlp_bias")), "attention_bias different from mlp_bias"),
        (h.get("head_dim") not in (None, hidden // max(heads, 1)), f"head_dim {h.get('head_dim')!r} != hidden_size / heads"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ScratchLLMError(f"{source}: unsupported Llama setting {what}")
    bias = bool(h.get("attention_bias", False))
    try:
        return GPTConfig(
            vocab_size=h.get("vocab_size", 32000),
            context_length=h.get("max_position_embeddings", 2048),
            emb_dim=hidden,
            n_layers=h.get("num_hidden_layers", 32),
            n_heads=heads,
            n_kv_heads=h.get("num_key_value_heads") or heads,
            mlp_hidden_dim=h.get("intermediate_size", 11008),
            drop_rate=0.0,
            qkv_bias=bias,
            bias=bias,
            tie_embeddings=bool(h.get("tie_word_embeddings", False)),
            layer_norm_eps=float(h.get("rms_norm_eps", 1e-6)),
            norm="rmsnorm",
            position="rope",
            mlp="swiglu",
            rope_theta=float(theta),
        )
    except ScratchLLMError as exc:
        raise ScratchLLMError(f"{source}: {exc}") from None


_LLAMA_BLOCK = {
    "self_attn.o_proj": "attn.proj", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.fc",
    "mlp.down_proj": "mlp.proj", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}


def _state_dict_from_hf_llama(sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face Llama names -> ours; q/k/v projections are concatenated into our fused qkv."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in sd.items():
        key = name.removeprefix("model.")
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta
        if key == "embed_tokens.weight":
            out["tok_emb.weight"] = tensor
        elif key == "norm.weight":
            out["final_norm.weight"] = tensor
        elif key == "lm_head.weight":
            if not config.tie_embeddings:
                out["out_head.weight"] = tensor
        else:
            m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", key)
            if m is None:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a Llama model")
            layer, module, param = m.groups()
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, param), {})[module[-6]] = tensor
            elif module in _LLAMA_BLOCK:
                out[f"blocks.{layer}.{_LLAMA_BLOCK[module]}.{param}"] = tensor
            else:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a Llama model")
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ScratchLLMError(f"{source}: layer {layer} lacks one of q_proj/k_proj/v_proj {param}")
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def read_hf_dir(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config.json, state dict, weights path) of a Hugging Face directory: model.safetensors, else
    pytorch_model.bin (each possibly sharded with an .index.json)."""
    d = Path(directory)
    config = _read_json(d / CONFIG_FILE)
    for file, reader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_torch_bin)):
        if (d / file).is_file():
            return config, reader(d / file), d / file
        index = d / f"{file}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ScratchLLMError(f"{index}: field 'weight_map' must be an object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if Path(shard).name != shard:
                    raise ScratchLLMError(f"{index}: shard {shard!r} is not a file name in {d}")
                state.update(reader(d / shard))
            return config, state, index
    raise ScratchLLMError(f"{d}: no model.safetensors or pytorch_model.bin (Hugging Face weights)")


def import_gpt2(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Convert GPT-2 weights (a name such as "gpt2-medium", downloaded once, or a Hugging Face
    GPT-2 directory) into a scratchllm model directory at `out`."""
    text = os.fspath(source)
    if Path(text).expanduser().exists():
        d = Path(text).expanduser()
        if not (d / CONFIG_FILE).is_file() and d.is_dir():
            raise ScratchLLMError(f"{d}: not a Hugging Face model directory (no {CONFIG_FILE})")
        d = resolve_model_dir(d)
        if _model_dir_kind(d) == "scratchllm":
            raise ScratchLLMError(f"{d}: already a scratchllm model directory; nothing to import")
    else:
        name = _gpt2_name(text)
        if name is None:
            if os.sep in text or text.startswith("."):
                raise ScratchLLMError(f"{Path(text).expanduser()}: no such directory")
            raise ScratchLLMError(
                f"{text!r}: no such Hugging Face directory, and not a GPT-2 name (one of {', '.join(GPT2_NAMES)})"
            )
        d = download_gpt2(name)
    model = load_model(d, dtype=dtype)
    return save_pretrained(model, out, tokenizer=None, extra={"imported_from": text})


# --------------------------------------------------------------------------------------------------
# Ours -> Hugging Face GPT-2


def config_to_hf(config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = 50256) -> dict[str, Any]:
    """A Hugging Face GPT-2 config.json for `config` (GPT2LMHeadModel, gelu_new)."""
    if eos_id is not None and eos_id >= config.vocab_size:
        eos_id = None  # a model smaller than the tokenizer; transformers rejects an id out of range
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,  # read by transformers < 4.x; harmless later
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None if config.mlp_ratio == 4 else config.mlp_ratio * config.emb_dim,
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_dtype": str(dtype).removeprefix("torch."),  # the key's name before transformers 5
    }


def state_dict_to_hf(sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our tensor names and layouts -> GPT2LMHeadModel's (Conv1D weights transposed to (in, out))."""
    top = {ours: hf for hf, ours in _HF_TOP.items()}
    block = {ours: hf for hf, ours in _HF_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        tensor = tensor.detach().to("cpu")
        if name == "out_head.weight":
            if not config.tie_embeddings:
                out["lm_head.weight"] = tensor.contiguous()
            continue
        if name in top:
            out[f"transformer.{top[name]}"] = tensor.contiguous()
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        if m is None or m.group(2) not in block:
            raise ScratchLLMError(f"export: tensor {name!r} has no GPT-2 counterpart")
        layer, module, param = m.groups()
        hf_module = block[module]
        if param == "weight" and hf_module in _HF_CONV1D:
            tensor = tensor.t()
        out[f"transformer.h.{layer}.{hf_module}.{param}"] = tensor.contiguous()
    if not config.qkv_bias:  # GPT-2 always has a q/k/v bias: a zero one is the same function
        for i in range(config.n_layers):
            w = out[f"transformer.h.{i}.attn.c_attn.weight"]
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(w.shape[1], dtype=w.dtype)
    return out


def export_hf(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write a scratchllm model (directory, run directory or anything `load` takes) as a Hugging Face
    GPT-2 directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    With GPT-2's tokenizer, vocab.json and merges.txt are added so `AutoTokenizer` loads too; a
    trained tokenizer is copied as scratchllm_tokenizer.json (transformers cannot read it).
    """
    from safetensors.torch import save_file

    kind, d = _locate(model_dir)
    model = load_model(d)
    config = model.config
    spec = {"type": "gpt2"} if kind == "hf" else read_model_config(d).get("tokenizer", {"type": "gpt2"})
    is_gpt2 = spec.get("type") == "gpt2"
    eos_id = 50256 if is_gpt2 else load_tokenizer(d).special_tokens.get("<|endoftext|>")
    dtype = model.tok_emb.weight.dtype
    state = state_dict_to_hf(model.state_dict(), config)
    with atomic_directory(out_dir, replaces="hf") as tmp:
        _write_json(tmp / CONFIG_FILE, config_to_hf(config, dtype, eos_id))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if is_gpt2:
            from scratchllm.tokenizer import gpt2_files

            encoder, merges = gpt2_files()
            shutil.copyfile(encoder, tmp / "vocab.json")  # OpenAI's encoder.json is HF's vocab.json
            shutil.copyfile(merges, tmp / "merges.txt")  # and vocab.bpe its merges.txt
            _write_json(tmp / "tokenizer_config.json", {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": config.context_length,
                "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
            })
        elif (d / TOKENIZER_FILE).is_file():
            shutil.copyfile(d / TOKENIZER_FILE, tmp / "scratchllm_tokenizer.json")
    return Path(out_dir)


# --------------------------------------------------------------------------------------------------
# Downloads


def cache_root() -> Path:
    """scratchllm's download cache: $SCRATCHLLM_CACHE, else ~/.cache/scratchllm (the tokenizer's too)."""
    from scratchllm.tokenizer import cache_dir

    return cache_dir()


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of each redirect: the hub puts a file's SHA-256 (X-Linked-Etag) and size
    (X-Linked-Size) on the redirect to its storage, not on the final response."""

    def __init__(self) -> None:
        self.headers: list[Any] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _header(headers_list: list[Any], name: str) -> str | None:
    for headers in headers_list:
        value = headers.get(name) if headers is not None else None
        if value:
            return value.strip().removeprefix("W/").strip('"')
    return None


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` with a progress bar, checking its size and SHA-256, then move it into place.

    The expected SHA-256 is `sha256` if given, else the hub's X-Linked-Etag header when it is a
    SHA-256; the expected size is `size`, else X-Linked-Size, else Content-Length. Data goes to a
    temporary file beside `dest`, so a failed or interrupted download never leaves a file there.
    """
    from tqdm.auto import tqdm

    from scratchllm import __version__

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise ScratchLLMError(f"{dest.parent}: cannot create ({exc.strerror or exc})") from None
    tmp = Path(tmp_name)
    recorder = _RecordRedirects()
    opener = urllib.request.build_opener(recorder)
    request = urllib.request.Request(url, headers={"User-Agent": f"scratchllm/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, opener.open(request, timeout=60) as response:
            headers = [*recorder.headers, response.headers]
            linked = _header(headers, "X-Linked-Etag")
            if sha256 is None and linked and re.fullmatch(r"[0-9a-fA-F]{64}", linked):
                sha256 = linked
            if size is None:
                length = _header(headers, "X-Linked-Size") or _header([response.headers], "Content-Length")
                size = int(length) if length and length.isdigit() else None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if size is not None and received != size:
            raise ScratchLLMError(f"download {url}: got {received} bytes, expected {size} (interrupted?)")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ScratchLLMError(f"download {url}: SHA-256 is {digest.hexdigest()}, expected {sha256.lower()}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ScratchLLMError(f"download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_gpt2(name: str, progress: bool = True) -> Path:
    """The Hugging Face directory (config.json + model.safetensors) of a GPT-2 release, downloaded
    into `cache_root()/hf/NAME` ($SCRATCHLLM_CACHE, else ~/.cache/scratchllm) the first time and read
    from there afterwards."""
    gpt2 = _gpt2_name(name)
    if gpt2 is None:
        raise ScratchLLMError(f"{name!r}: not a GPT-2 name (one of {', '.join(GPT2_NAMES)})")
    directory = cache_root() / "hf" / gpt2
    for file in HF_FILES:
        if not (directory / file).is_file():
            url = HF_URL.format(name=gpt2, file=file)
            try:
                download_file(url, directory / file, progress=progress)
            except ScratchLLMError as exc:
                raise ScratchLLMError(
                    f"{exc}; without network, put {', '.join(HF_FILES)} of {gpt2} in {directory} "
                    "or pass a local Hugging Face directory"
                ) from None
    return directory
