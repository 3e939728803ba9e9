"""Tests of scratchllm.models."""
