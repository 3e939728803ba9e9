"""The tokenizer layer: byte-level BPE (bpe.py), GPT-2's pre-tokenizing split (pretokenize.py), OpenAI's
GPT-2 files (gpt2.py), Hugging Face tokenizer files (hf.py), chat templates (chat_template.py), and
`Tokenizer`."""

from scratchllm.tokenizer.bpe import GPT2_PATTERN, bytes_to_unicode
from scratchllm.tokenizer.chat_template import ChatTemplate
from scratchllm.tokenizer.gpt2 import ENDOFTEXT, GPT2_ENDOFTEXT_ID, gpt2_files
from scratchllm.tokenizer.hf import HF_TOKENIZER_FILES, read_hf_tokenizer
from scratchllm.tokenizer.tokenizer import Tokenizer, token_pieces, train_tokenizer

__all__ = ["ENDOFTEXT", "GPT2_ENDOFTEXT_ID", "GPT2_PATTERN", "HF_TOKENIZER_FILES", "ChatTemplate", "Tokenizer",
           "bytes_to_unicode", "gpt2_files", "read_hf_tokenizer", "token_pieces", "train_tokenizer"]
