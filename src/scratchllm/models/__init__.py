"""The model layer: nn code only, no file I/O. `GPTConfig` (config.py), `GPT` (gpt.py: GPT-2 and the
switches that turn it into a Llama-style decoder or a bidirectional encoder), the chunked loss
(loss.py), the encoder-decoder (encoder_decoder.py), the classifier (classifier.py), LoRA
adapters (lora.py) and sizes from a config, checked against free memory before building (size.py).
The exports are imported on first use (core/lazy.py): config.py's option groups need no torch."""

from scratchllm.core.lazy import lazy_exports

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS"]
lazy_exports(__name__, {"GPT": "scratchllm.models.gpt", "GPTConfig": "scratchllm.models.config",
                        "KVCache": "scratchllm.models.gpt", "PRESETS": "scratchllm.models.config"})
