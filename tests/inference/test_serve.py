"""Tests for serve.py: the real server (uvicorn on a loopback port, in a thread) spoken to with the
official `openai` client and with raw HTTP for the error cases.

The model is a tiny random GPT with GPT-2's tokenizer and the phi3 prompt style. Greedy answers must
equal `scratchllm.generation.generate` on the same prompt; a seeded sampled answer must equal
`generate` with that seed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai  # noqa: E402
import pytest

from scratchllm.checkpoint import load, save_model  # noqa: E402
from scratchllm.cli import main  # noqa: E402
from scratchllm.inference.generation import generate  # noqa: E402
from scratchllm.inference.serve import ServeSettings, create_app  # noqa: E402
from scratchllm.prompts import get_style  # noqa: E402
from scratchllm.tokenizer import Tokenizer  # noqa: E402
from tests.conftest import serving  # noqa: E402
from tests.helpers import sharpened_gpt  # noqa: E402

KEY = "test-key-123"
PHI3 = get_style("phi3")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model = sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2)
    return save_model(model, tmp_path_factory.mktemp("serve") / "tiny", Tokenizer.gpt2(), extra={"prompt_style": "phi3"})


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    """The server of most tests: loads the model directory itself, wants KEY, caps max_tokens at 48."""
    app = create_app(str(model_dir), ServeSettings(api_key=KEY, max_tokens_cap=48, max_body_bytes=20_000), device="cpu")
    with serving(app) as port:
        yield port


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key=KEY, max_retries=0, timeout=30)


def call(port: int, method: str, path: str, body: bytes | str | None = None, key: str | None = KEY,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body.encode() if isinstance(body, str) else body, h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def chat_prompt(text: str) -> str:
    return PHI3.format_chat([{"role": "user", "content": text}], add_generation_prompt=True)


# ------------------------------------------------------------------------------------------------
# The openai client against the real server


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    status, _, body = call(server, "GET", "/health", key=None)
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["prompt_style"] == "phi3"
    assert health["context_length"] == 128 and health["api_key_required"] is True


@pytest.mark.parametrize("prompt", ["Once upon a time", "The quick brown fox"])
def test_completion_greedy_equals_generate(client, loaded, prompt):
    model, tok = loaded
    want = generate(model, tok, prompt, max_new_tokens=20, temperature=0)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        len(tok.encode(prompt)), 20, len(tok.encode(prompt)) + 20)
    pieces = [c.choices[0].text for c in client.completions.create(model="tiny", prompt=prompt, max_tokens=20,
                                                                    temperature=0, stream=True)]
    assert len(pieces) > 2 and "".join(pieces) == want


def test_chat_greedy_equals_generate_on_the_formatted_prompt(client, loaded):
    model, tok = loaded
    want = generate(model, tok, chat_prompt("Hello there"), max_new_tokens=16, temperature=0, stop=PHI3.stop_strings)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(tok.encode(chat_prompt("Hello there"))) and r.usage.completion_tokens == 16

    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_seeded_sampling_equals_generate_with_that_seed(client, loaded):
    model, tok = loaded
    want = generate(model, tok, "Hello", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    got = [client.completions.create(model="tiny", prompt="Hello", max_tokens=12, temperature=1.0, top_p=0.9,
                                     seed=7).choices[0].text for _ in range(2)]
    assert got == [want, want]


def test_stop_strings_cut_the_answer(client, loaded):
    model, tok = loaded
    full = generate(model, tok, "Once upon a time", max_new_tokens=20, temperature=0)
    stop = full[5:9]
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_max_tokens_is_capped_by_the_server(client):
    r = client.completions.create(model="tiny", prompt="Hi", max_tokens=5000, temperature=0)
    assert r.usage.completion_tokens == 48 and r.choices[0].finish_reason == "length"


def test_stream_is_server_sent_events_ending_in_done(server):
    status, headers, body = call(server, "POST", "/v1/completions",
                                 json.dumps({"prompt": "Hi", "max_tokens": 5, "temperature": 0, "stream": True}))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# ------------------------------------------------------------------------------------------------
# Errors, in OpenAI's shape


@pytest.mark.parametrize("path, body, status, param, message", [
    ("/v1/completions", '{"prompt": "x",', 400, None, "request body is not valid JSON"),
    ("/v1/completions", "[1, 2]", 400, None, "request body must be a JSON object, got list"),
    ("/v1/completions", "{}", 400, "prompt", "missing required field 'prompt'"),
    ("/v1/completions", '{"prompt": 5}', 400, "prompt", "field 'prompt': expected a string, a list of strings, a list of token ids or a list of lists of token ids, got 5"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens",
     "field 'max_tokens': Input should be a valid integer (got \"5\")"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": -3}', 400, "max_tokens",
     "field 'max_tokens': Input should be greater than or equal to 0 (got -3)"),
    ("/v1/completions", '{"prompt": "x", "temperature": 3}', 400, "temperature",
     "field 'temperature': Input should be less than or equal to 2 (got 3)"),
    ("/v1/completions", '{"prompt": "x", "stream": 1}', 400, "stream", "field 'stream': Input should be a valid boolean"),
    ("/v1/completions", '{"prompt": "x", "n": 9}', 400, "n",
     "field 'n': at most 8 choices per request (the server's max_batch), got n=9"),
    ("/v1/completions", '{"prompt": "x", "n": 2, "seed": 18446744073709551615}', 400, "seed",
     "field 'seed': seed must be an integer in [-2**63, 2**64 - 2], got 18446744073709551615"),
    ("/v1/completions", '{"prompt": "x", "suffix": "y"}', 400, "suffix", "field 'suffix' is not supported by this server"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "echo": true}', 400, "echo",
     "field 'echo' is not supported by this server"),
    ("/v1/completions", '{"prompt": "x", "stop": ["a", ""]}', 400, "stop", "field 'stop': expected a non-empty string"),
    ("/v1/completions", json.dumps({"prompt": " word" * 300}), 400, "prompt",
     "the prompt has 300 tokens but the model's context holds 128; shorten it"),
    ("/v1/chat/completions", '{"messages": []}', 400, "messages", "field 'messages': List should have at least 1 item"),
    ("/v1/chat/completions", '{"messages": [{"role": "robot", "content": "hi"}]}', 400, "messages.0.role",
     "field 'messages.0.role': Input should be 'system', 'developer', 'user' or 'assistant'"),
    ("/v1/chat/completions", '{"messages": [{"role": "user"}]}', 400, "messages.0.content",
     "missing required field 'messages.0.content'"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "word " * 300}]}), 400, "messages",
     "but the model's context holds 128; shorten it"),
])
def test_bad_requests_get_clear_openai_errors(server, path, body, status, param, message):
    got, _, data = call(server, "POST", path, body)
    error = json.loads(data)["error"]
    assert got == status and message in error["message"], error
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("key", [None, "wrong-key"])
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")])
def test_v1_routes_want_the_api_key(server, key, method, path):
    status, headers, data = call(server, method, path, '{"prompt": "x"}' if method == "POST" else None, key=key)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(data)["error"]["code"] == "invalid_api_key"


def test_page_and_health_need_no_key(server):
    status, headers, body = call(server, "GET", "/", key=None)
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/v1/chat/completions" in body
    assert call(server, "GET", "/health", key=None)[0] == 200


def test_wrong_key_with_the_openai_client(server):
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_huge_bodies_get_413(server):
    big = json.dumps({"prompt": "x" * 50_000})
    status, _, data = call(server, "POST", "/v1/completions", big)
    assert status == 413 and "over this server's limit of 20000 bytes" in json.loads(data)["error"]["message"]
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)  # chunked: no Content-Length to trust
    conn.request("POST", "/v1/completions", (b"x" * 1000 for _ in range(50)),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert conn.getresponse().status == 413


# ------------------------------------------------------------------------------------------------
# The queue: 503 when full, and a client that leaves frees its slot


def admitted(port: int) -> int:
    return json.loads(call(port, "GET", "/health", key=None)[2])["queue"]["admitted"]


def open_stream(port: int, max_tokens: int = 400) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions",
                 json.dumps({"prompt": "Hi", "max_tokens": max_tokens, "temperature": 0, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    return r


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("engine", [{"batching": "off"}, {"batching": "on", "max_batch": 1}])
def test_full_queue_gets_503_and_leaving_clients_free_their_slots(loaded, engine):
    """One request decoding (the one-at-a-time engine, or a batch of one row), one waiting, a third 503.
    tests/inference/test_serve_batching.py has the same with rows decoding together."""
    # Each token takes >= 20 ms, so a 400-token answer is still decoding while the test runs.
    app = create_app(loaded, ServeSettings(queue_size=1, token_delay=0.02, prompt_style="phi3", **engine))
    with serving(app) as port:
        running = open_stream(port)
        running.readline()  # the first event: this one is decoding
        waiting = open_stream(port)  # admitted, waiting its turn
        assert admitted(port) == 2
        status, headers, data = call(port, "POST", "/v1/completions", '{"prompt": "x", "max_tokens": 2}', key=None)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(data)["error"]["code"] == "queue_full"

        running.close()  # a streaming client disconnects mid-answer: its job stops within a token
        waiting.readline()  # so the waiting one starts decoding
        wait_for(lambda: admitted(port) == 1)

        # A non-streaming client that gives up frees its slot too.
        sock = socket.create_connection(("127.0.0.1", port))
        body = b'{"prompt": "Hi", "max_tokens": 400}'
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: admitted(port) == 2)
        sock.close()
        wait_for(lambda: admitted(port) == 1)

        waiting.close()
        wait_for(lambda: admitted(port) == 0)
        status, _, data = call(port, "POST", "/v1/completions", '{"prompt": "x", "max_tokens": 2}', key=None)
        assert status == 200 and json.loads(data)["usage"]["completion_tokens"] == 2


# ------------------------------------------------------------------------------------------------
# The CLI verb


def test_serve_cli_starts_a_loopback_server(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "serve", "--model", str(model_dir), "--port", str(port),
                             "--device", "cpu", "--api-key", KEY, "--max-connections", "2"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, body = call(port, "GET", "/v1/models")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"
        assert call(port, "GET", "/v1/models", key=None)[0] == 401
        # --max-connections 2: with two connections open, a request on a third gets 503.
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(3)]
        statuses = []
        for conn in held:  # each stays open (keep-alive)
            conn.request("GET", "/health")
            statuses.append(conn.getresponse().status)
        assert statuses == [200, 200, 503]
        for conn in held:
            conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"OpenAI API at http://127.0.0.1:{port}/v1" in err


def test_serve_cli_bad_setting_is_one_line_error(model_dir, capsys):
    assert main(["serve", "--model", str(model_dir), "--queue-size", "-1"]) == 2
    assert capsys.readouterr().err == "scratchllm serve: error: serve setting queue_size must be an integer >= 0, got -1\n"


def test_chat_completions_with_the_model_chat_template(hf_tokenizer_dir):
    """A model with a ChatML template: /v1/chat/completions lays the messages out with it (the prompt is
    transformers' apply_chat_template ids) and the answer ends at <|im_end|>."""
    import transformers

    from tests.inference.test_chat import chatml_model

    d = hf_tokenizer_dir("qwen2")
    tok = Tokenizer.from_hf(d)
    app = create_app((chatml_model(tok, "<|im_end|>"), tok), ServeSettings())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    with serving(app) as port:
        status, _, body = call(port, "POST", "/v1/chat/completions", json.dumps({"messages": messages, "temperature": 0}))
        _, _, health = call(port, "GET", "/health")
    answer = json.loads(body)
    assert status == 200 and json.loads(health)["prompt_style"] == "template"
    assert answer["choices"][0]["message"]["content"] == "Hello there!"
    assert answer["choices"][0]["finish_reason"] == "stop"
    prompt = transformers.AutoTokenizer.from_pretrained(d).apply_chat_template(messages, add_generation_prompt=True,
                                                                               return_dict=False)
    assert answer["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(tok.encode("Hello there!")),
                               "total_tokens": len(prompt) + len(tok.encode("Hello there!"))}
