"""Model directories: the one writer (`save_model`) and the one reader (`build_model`, behind `load`) of
every kind of model.

This is where a trained model leaves the pipeline and where every later stage (generation,
fine-tuning, evaluation, serving) picks one up. A scratchllm model directory holds

    config.json        {"format": "scratchllm", "version": 1, "kind": KIND, "model": {GPTConfig fields},
                        "tokenizer": {"type": "gpt2"} or {"type": "bpe", "file": "tokenizer.json", ...}
                                     or {"type": "hf", "file": "tokenizer.json", "sha256": ..., "stop_ids": [...]},
                        ...the kind's own keys, and any extra keys the writer adds ("prompt_style", ...)}
    model.safetensors  the weights under our parameter names (a tensor shared by two modules is stored once)
    tokenizer.json     a trained tokenizer (absent when the tokenizer is GPT-2's); for "hf" a Hugging Face
                       tokenizer.json, with its tokenizer_config.json and chat_template.jinja beside it

and the files of one kind of model (gpt, encoder, lora, classifier, seq2seq), decided by the model
object when it is written. What each kind writes, how it is recognised (also in directories written
before the "kind" field) and how it is built back is its entry in checkpoint/kinds.py; this module
only asks the registry. `load` (checkpoint/loader.py) also takes a training run directory (its
final/, else best/, else newest checkpoints/step-N/), a Hugging Face directory or a hub name
(checkpoint/hf.py). Directories are written atomically (`core.files.atomic_directory`), and an
existing one is replaced only by a model of the same family.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from scratchllm.checkpoint.kinds import BuildRequest, ModelKind, kind_of_config, kind_of_model, registered
from scratchllm.checkpoint.weights import save_safetensors
from scratchllm.core.device import parse_dtype
from scratchllm.core.files import atomic_directory, read_json, write_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.size import check_fits
from scratchllm.tokenizer import TOKENIZER_FILE, Tokenizer

FORMAT = "scratchllm"
VERSION = 1
CONFIG_FILE = "config.json"
RESERVED_KEYS = ("format", "version", "kind", "model", "tokenizer")


# --------------------------------------------------------------------------------------------------
# Directory formats


def dir_format(directory: Path, strict: bool = True) -> str | None:
    """A directory's format: "scratchllm", "hf" or None, from its config.json (strict: bad JSON raises)."""
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


def _same_family(kind: ModelKind) -> Callable[[Path], bool]:
    """may_replace for atomic_directory: an existing scratchllm directory of kind's family."""

    def check(directory: Path) -> bool:
        if dir_format(directory, strict=False) != "scratchllm":
            return False
        try:
            return registered(kind_of_config(read_json(directory / CONFIG_FILE))).family == kind.family
        except ScratchLLMError:
            return False

    return check


# --------------------------------------------------------------------------------------------------
# The writer


def tokenizer_spec(tokenizer: Tokenizer | None) -> dict[str, Any]:
    """What config.json records of a tokenizer (None meaning GPT-2's): its description with the file
    named as the directory keeps it (`Tokenizer.describe`, tokenizer/description.py)."""
    return {"type": "gpt2"} if tokenizer is None else tokenizer.describe(TOKENIZER_FILE)


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
    kind = kind_of_model(model)
    config = model.config
    if tokenizer is None:
        tokenizer = kind.tokenizer_of(model)
    extra = dict(extra or {})
    clash = [k for k in extra if k in RESERVED_KEYS]
    if clash:
        raise ScratchLLMError(f"save_model: extra key(s) {clash} are reserved ({', '.join(RESERVED_KEYS)})")
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ScratchLLMError(
            f"save_model: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {config.vocab_size}"
        )
    files, keys = kind.write(model)
    spec = tokenizer_spec(tokenizer)
    directory = Path(directory)
    size = sum(t.numel() * t.element_size() for tensors in files.values() for t in tensors.values())
    with atomic_directory(directory, _same_family(kind), f"a scratchllm model directory of the same kind ({kind.name})",
                          size=size) as tmp:
        if tokenizer is not None:  # its files as read (not tokenizer.save, which would repoint it at tmp)
            tokenizer.write_files(tmp)
        write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "kind": kind.name,
                                       "model": config.to_dict(), "tokenizer": spec, **keys, **extra})
        for name, tensors in files.items():  # model.safetensors, then the kind's other files
            save_safetensors(tensors, tmp / name)
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
    if dir_format(p):
        return p
    for sub in ("final", "best"):
        if dir_format(p / sub):
            return p / sub
    newest = _newest_step(p)
    if newest is not None:
        return newest[1]
    if (p / CONFIG_FILE).is_file():
        raise ScratchLLMError(
            f"{p / CONFIG_FILE}: not a model config (no \"format\": \"scratchllm\" and no \"model_type\"), "
            "and no final/, best/ or checkpoints/step-N/ model directory beside it"
        )
    raise ScratchLLMError(
        f"{p}: not a model directory (no {CONFIG_FILE}) nor a run directory "
        "(no final/, best/ or checkpoints/step-N/ holding one)"
    )


def _newest_step(run: Path) -> tuple[int, Path] | None:
    """(N, directory) of a run directory's highest checkpoints/step-N/ that holds a model, or None."""
    steps = []
    if (run / "checkpoints").is_dir():
        for d in (run / "checkpoints").iterdir():
            m = re.fullmatch(r"step-(\d+)", d.name)
            if m and dir_format(d):
                steps.append((int(m.group(1)), d))
    return max(steps) if steps else None


def run_dir_choice(path: str | os.PathLike[str]) -> str | None:
    """One line saying which model `resolve_model_dir` takes from a run directory that has no final/
    (a run that did not finish), and why: best/ before a newer step checkpoint, or the newest step
    checkpoint. None for anything else (a model directory, a run's final/, a file)."""
    p = Path(path).expanduser()
    if not p.is_dir() or dir_format(p) or dir_format(p / "final"):
        return None
    newest = _newest_step(p)
    if dir_format(p / "best"):
        step = read_json(p / "best" / CONFIG_FILE).get("training", {}).get("step")
        at = f"step {step}, " if isinstance(step, int) else ""
        later = (f", not the newer {newest[1]} (name it to load that)"
                 if newest is not None and not (isinstance(step, int) and step >= newest[0]) else "")
        return f"{p}: no final/ (the run did not finish); loading {p / 'best'} ({at}the best validation result){later}"
    if newest is not None:
        return f"{p}: no final/ or best/ (the run did not finish); loading its newest checkpoint, {newest[1]}"
    return None


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
    tokenizer_config.json and chat template beside it (`Tokenizer.from_description`)."""
    d = resolve_model_dir(directory)
    recorded = read_model_config(d).get("tokenizer", {"type": "gpt2"})
    return Tokenizer.from_description(recorded, directory=d, source=str(d / CONFIG_FILE))


# --------------------------------------------------------------------------------------------------
# Building a directory's model, restoring one in place


def build_model(d: Path, data: dict[str, Any], kind: str, device, dtype, merge: bool) -> nn.Module:
    """The model of scratchllm directory `d` (its checked config.json `data`, of `kind`) in eval mode."""
    entry = registered(kind)
    source = str(d / CONFIG_FILE)
    config = GPTConfig.from_dict(data["model"], source=f"{source} field 'model'")
    # Before reading the weights: a config too big for this machine is one line, not a minute of swapping.
    # (2 bytes a parameter at least, bfloat16; an encoder-decoder has two stacks.)
    wanted = parse_dtype(dtype)
    check_fits(config, device, wanted.itemsize if wanted is not None else 2, copies=entry.stacks, what=source)
    return entry.build(BuildRequest(d, data, config, source, device, dtype, merge, lambda: read_tokenizer(d)))


def load_weights(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Copy a model directory's weights into `model` in place, exactly (no dtype change): how the
    training loop resumes. `model` is the object the directory was written from (any kind)."""
    model = getattr(model, "_orig_mod", model)
    kind_of_model(model, "load_weights").load_weights(model, Path(directory))
