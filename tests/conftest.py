"""Shared test fixtures: the read-only data folder beside the repo and small models."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
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


@pytest.fixture(scope="module")
def verdict(shared_data) -> Path:
    return shared_data / "the-verdict.txt"


@pytest.fixture(scope="session")
def gpt2_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT with GPT-2's vocabulary and a 64-token context, as a model directory."""
    from scratchllm.checkpoint import save_model
    from tests.helpers import tiny_gpt

    return save_model(tiny_gpt(50257, seed=5), tmp_path_factory.mktemp("gpt2tiny") / "model")


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory, verdict) -> Path:
    """A 384-id BPE tokenizer trained on the-verdict: small vocab = fast tiny-model steps."""
    from scratchllm.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tok") / "tok.json"
    Tokenizer.train([verdict.read_text(encoding="utf-8")], 384).save(path)
    return path


@contextlib.contextmanager
def serving(app):
    """Run `app` with uvicorn on a free loopback port in a thread; yield the port (server tests)."""
    import uvicorn

    with serving_config(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")) as port:
        yield port


@contextlib.contextmanager
def serving_config(make_config):
    """Run the uvicorn server of `make_config(port)` on a free loopback port in a thread; yield the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(make_config(port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def pytest_sessionfinish(session, exitstatus):
    """No silent skips: a test that skipped proves nothing, so a run with any skip fails."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped; the suite runs every test (see the reasons above)", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory):
    """kind -> a small Hugging Face tokenizer directory (see tests/hf_tokenizers.py), each built once."""
    from tests.hf_tokenizers import build

    root = tmp_path_factory.mktemp("hf-tokenizers")
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build(kind, root / kind)
        return built[kind]

    return get
