"""Fixtures of the evaluation tests: GPT-2's tokenizer, a small trained one, and the first 90 messages of
the SMS spam collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchllm.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def gpt2_tok() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="session")
def small_tok(shared_data) -> Tokenizer:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    return Tokenizer.train([text], vocab_size=300)


@pytest.fixture(scope="session")
def sms_slice(tmp_path_factory, shared_data) -> Path:
    lines = (shared_data / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()[:90]
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

