"""The data layer: corpora (inputs.py) -> token shards (prepare.py) -> token streams (tokens.py) -> batches
(loaders.py); labelled examples for classification (labelled.py) and instruction records
(instructions.py)."""

from scratchllm.data.loaders import RandomWindowLoader, SequentialLoader, SlidingWindowDataset, eval_batches
from scratchllm.data.prepare import prepare
from scratchllm.data.tokens import TokenData, TokenStream, as_stream, load_corpus

__all__ = ["RandomWindowLoader", "SequentialLoader", "SlidingWindowDataset", "TokenData", "TokenStream", "as_stream",
           "eval_batches", "load_corpus", "prepare"]
