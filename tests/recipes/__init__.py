"""Tests of scratchllm.recipes."""
