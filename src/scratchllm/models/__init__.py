"""The model layer: nn code only, no file I/O. `GPTConfig` (config.py), `GPT` (gpt.py: GPT-2 and the
switches that turn it into a Llama-style decoder or a bidirectional encoder), the chunked loss
(loss.py), the encoder-decoder (encoder_decoder.py), the classifier (classifier.py), LoRA
adapters (lora.py) and sizes from a config, checked against free memory before building (size.py)."""

from scratchllm.models.config import PRESETS, GPTConfig
from scratchllm.models.gpt import GPT, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS"]
