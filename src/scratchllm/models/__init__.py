"""The model layer: nn code only, no file I/O. `GPTConfig` (config.py), `GPT` (gpt.py: GPT-2 and the
switches that turn it into a Llama-style decoder or a bidirectional encoder), the chunked loss
(loss.py), the encoder-decoder (encoder_decoder.py), the classifier (classifier.py) and LoRA
adapters (lora.py)."""

from scratchllm.models.config import PRESETS, GPTConfig
from scratchllm.models.gpt import GPT, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS"]
