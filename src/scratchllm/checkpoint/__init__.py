"""The checkpoint layer: model directories (model_dir.py: one writer, one reader) of every kind of
model (kinds.py: the registry, one entry per kind), weights files (weights.py), loading from any
source (loader.py), Hugging Face families (hf_families.py), Hugging Face directories and hub downloads
(hf.py), LoRA adapter directories (adapter_dir.py) and directory conversions (convert.py)."""

from scratchllm.checkpoint.loader import load, load_tokenizer, read_config, resolve_tokenizer
from scratchllm.checkpoint.model_dir import load_weights, read_model_config, resolve_model_dir, save_model

__all__ = ["load", "load_tokenizer", "load_weights", "read_config", "read_model_config", "resolve_model_dir",
           "resolve_tokenizer", "save_model"]
