"""The options of the checkpoint layer, declared once: `LoadConfig` (which model, where, in what
precision: the group every verb that loads a model composes) and the options of the converting verbs
(`import-hf`, `export-hf`, `export-gguf`, `merge-lora`). Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchllm.core.options import check_fields, device_field

# What a model's weights may be cast to when it is loaded (core.device.parse_dtype reads the names).
WeightDtype = Literal["float32", "bfloat16", "float16"]
# How `load` may quantize a model for decoding (models.quantize.QUANTIZATIONS, spelled out: no torch here).
Quantization = Literal["int8"]


@dataclass(kw_only=True)
class LoadConfig:
    """Which model, where, in what precision (checkpoint/loader.py `load`)."""

    model: str
    """model or run directory (LoRA adapters are merged in), Hugging Face directory or hub name"""
    device: str = device_field()
    dtype: WeightDtype | None = None
    """cast the weights (default: as stored; bfloat16 on a CPU without native bf16 stays float32, with a note)"""
    quantize: Quantization | None = None
    """int8: weight-only int8 with a scale per output channel, for decoding on a CPU (a quarter of float32's bytes)"""

    def __post_init__(self) -> None:
        check_fields(self, "load")


@dataclass(kw_only=True)
class ImportHFConfig:
    """`scratchllm import-hf`: a Hugging Face checkpoint in, a scratchllm model directory out (convert.py `import_hf`)."""

    source: str
    """a hub name (gpt2, gpt2-medium, ...) or a Hugging Face model directory"""
    out: str
    """scratchllm model directory to write"""
    dtype: WeightDtype | None = None
    """cast the weights (default: as stored)"""

    def __post_init__(self) -> None:
        check_fields(self, "import-hf")


@dataclass(kw_only=True)
class ExportHFConfig:
    """`scratchllm export-hf`: a scratchllm model out as a Hugging Face directory (convert.py `export_hf`)."""

    model: str
    """scratchllm model directory, run directory, Hugging Face GPT-2 directory or GPT-2 name"""
    out: str
    """Hugging Face directory to write"""

    def __post_init__(self) -> None:
        check_fields(self, "export-hf")


@dataclass(kw_only=True)
class ExportGGUFConfig:
    """`scratchllm export-gguf`: a scratchllm model out as one GGUF file for llama.cpp (gguf_file.py `export_gguf`)."""

    model: str
    """scratchllm model directory, run directory, Hugging Face directory or hub name"""
    out: str
    """GGUF file to write (e.g. model.gguf)"""
    type: Literal["f32", "f16", "bf16", "q8_0"] = "f32"
    """the matrices' number format: f32 (exact), f16 or bf16 (half the size), q8_0 (8-bit blocks, about 27% of f32)"""
    overwrite: bool = False
    """replace an existing --out file"""

    def __post_init__(self) -> None:
        check_fields(self, "export-gguf")


@dataclass(kw_only=True)
class MergeLoraConfig:
    """`scratchllm merge-lora`: adapters folded into their base weights (convert.py `merge_lora_dir`)."""

    model: str | None = None
    """a directory holding base weights + adapters (a LoRA run's checkpoint, or a model directory with
    adapter.safetensors beside its weights)"""
    base: str | None = None
    """base model (directory or GPT-2 name) for --adapter; if omitted, the adapter's recorded base_model"""
    adapter: str | None = None
    """adapter directory (adapter.safetensors + adapter_config.json), e.g. RUNDIR/adapter"""
    out: str
    """model directory to write"""

    def __post_init__(self) -> None:
        check_fields(self, "merge-lora")
