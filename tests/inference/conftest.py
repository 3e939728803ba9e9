"""Fixtures shared by the inference tests: GPT-2's tokenizer, and one torch thread for tiny models."""

from __future__ import annotations

import pytest
import torch

from scratchllm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models are all per-op overhead: a second intra-op thread only adds synchronisation,
    # which costs 10x when the 2-core CI machine is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
