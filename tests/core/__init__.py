"""Tests of scratchllm.core."""
