"""Shared test fixtures: the read-only data folder beside the repo and small models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread avoids thread start-up and contention costs that make a
# step many times slower with two (measured on the 2-core CI machine).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"test data folder {SHARED_DATA} is missing (expected ../shared/data beside the repo)"
    return SHARED_DATA
