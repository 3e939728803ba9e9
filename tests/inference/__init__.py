"""Tests of scratchllm.inference."""
