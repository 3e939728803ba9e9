"""The data layer: corpora (inputs.py) -> token shards (prepare.py) -> token streams (tokens.py) -> batches
(loaders.py); labelled examples for classification (labelled.py), instruction records
(instructions.py), and the options of these and of the text verbs (config.py). The exports are
imported on first use (core/lazy.py): config.py needs no torch."""

from scratchllm.core.lazy import lazy_exports

__all__ = ["RandomWindowLoader", "SequentialLoader", "SlidingWindowDataset", "TokenData", "TokenStream", "as_stream",
           "eval_batches", "load_corpus", "prepare"]
lazy_exports(__name__, {**dict.fromkeys(["RandomWindowLoader", "SequentialLoader", "SlidingWindowDataset", "eval_batches"],
                                        "scratchllm.data.loaders"),
                        "prepare": "scratchllm.data.prepare",
                        **dict.fromkeys(["TokenData", "TokenStream", "as_stream", "load_corpus"], "scratchllm.data.tokens")})
