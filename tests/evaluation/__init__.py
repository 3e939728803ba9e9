"""Tests of scratchllm.evaluation."""
