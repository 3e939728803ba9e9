"""Tests of scratchllm.training."""
