"""Tests of scratchllm.tokenizer."""
