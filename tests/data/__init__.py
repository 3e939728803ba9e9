"""Tests of scratchllm.data."""
