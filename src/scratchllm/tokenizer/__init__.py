"""The tokenizer layer: one interface, `Tokenizer` (base.py), and two classes that implement it.

- `BPETokenizer` (bpe_tokenizer.py): the byte-level BPE built here, for OpenAI's GPT-2 files (gpt2.py)
  and vocabularies trained here; the algorithm is bpe.py, GPT-2's pre-tokenizing split pretokenize.py.
- `HFTokenizer` (hf_tokenizer.py): a Hugging Face tokenizer.json of the byte-level BPE kind, read and
  checked by hf_files.py, its pipeline's steps in hf_pipeline.py, its two encoders in hf_encoders.py.

Also: a tokenizer's description, what directories record to find it again (description.py); encoding
batches on several cores (batch.py); chat templates (chat_template.py), run in a child process under
limits (template_process.py) inside a Jinja sandbox (template_sandbox.py).
"""

from scratchllm.tokenizer.base import Tokenizer, token_pieces
from scratchllm.tokenizer.bpe import GPT2_PATTERN, bytes_to_unicode
from scratchllm.tokenizer.bpe_tokenizer import BPETokenizer, train_tokenizer
from scratchllm.tokenizer.chat_template import ChatTemplate
from scratchllm.tokenizer.description import TOKENIZER_FILE, same_tokenizer
from scratchllm.tokenizer.gpt2 import ENDOFTEXT, GPT2_ENDOFTEXT_ID, gpt2_files
from scratchllm.tokenizer.hf_files import HF_TOKENIZER_FILES, read_hf_tokenizer
from scratchllm.tokenizer.hf_tokenizer import HFTokenizer

__all__ = ["ENDOFTEXT", "GPT2_ENDOFTEXT_ID", "GPT2_PATTERN", "HF_TOKENIZER_FILES", "TOKENIZER_FILE", "BPETokenizer",
           "ChatTemplate", "HFTokenizer", "Tokenizer", "bytes_to_unicode", "gpt2_files", "read_hf_tokenizer",
           "same_tokenizer", "token_pieces", "train_tokenizer"]
