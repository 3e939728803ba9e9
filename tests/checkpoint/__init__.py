"""Tests of scratchllm.checkpoint."""
