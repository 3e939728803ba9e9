"""The checkpoint layer: model directories (model_dir.py: one writer, one reader) of every kind of
model (kinds.py: the registry, one entry per kind), weights files (weights.py), loading from any
source (loader.py), Hugging Face families (hf_families.py), Hugging Face directories and hub downloads
(hf.py), LoRA adapter directories (adapter_dir.py), directory conversions (convert.py), GGUF files for
llama.cpp (gguf_file.py, gguf_vocab.py) and the options of loading and converting (config.py). The
exports are imported on first use (core/lazy.py): config.py needs no torch."""

from scratchllm.core.lazy import lazy_exports

__all__ = ["export_gguf", "load", "load_tokenizer", "load_weights", "read_config", "read_model_config",
           "resolve_model_dir", "resolve_tokenizer", "save_gguf", "save_model"]
lazy_exports(__name__, {**dict.fromkeys(["load", "load_tokenizer", "read_config", "resolve_tokenizer"],
                                        "scratchllm.checkpoint.loader"),
                        **dict.fromkeys(["load_weights", "read_model_config", "resolve_model_dir", "save_model"],
                                        "scratchllm.checkpoint.model_dir"),
                        **dict.fromkeys(["export_gguf", "save_gguf"], "scratchllm.checkpoint.gguf_file")})
