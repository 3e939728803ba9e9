"""The server under hostile-but-fair clients (a real uvicorn server on a loopback port): values at
the edges of their ranges, a client that hangs up on a non-streamed answer, slow headers and bodies,
and a failure inside the server, whose 500 carries no internal text."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time

import pytest
import torch

from scratchllm.inference.config import ServeSettings
from scratchllm.inference.generation import generate
from scratchllm.inference.serve import create_app, header_timeout_protocol, server_config
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from tests.conftest import serving, serving_config


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_layers=2, n_heads=2)).eval()
    return model, Tokenizer.gpt2()


@pytest.fixture(scope="module")
def server(loaded):
    with serving(create_app(loaded, ServeSettings(max_tokens_cap=48))) as port:
        yield port


def call(port: int, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data)


def health(port: int) -> dict:
    return call(port, "/health", method="GET")[1]["queue"]


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_a_seed_beyond_64_bits_is_400_naming_the_field(server, seed):
    status, body = call(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "seed": seed})
    assert status == 400 and body["error"]["param"] == "seed", body
    assert "field 'seed': Input should be" in body["error"]["message"]


def test_values_at_the_edges_of_their_ranges_are_answered(server, loaded):
    model, tok = loaded
    greedy = generate(model, tok, "Hi there", 6, temperature=0)
    for extra in ({"temperature": 1e-39}, {"temperature": 1e-300}, {"top_p": 1e-46, "seed": 5},
                  {"seed": 2**64 - 1, "temperature": 0.0}, {"seed": -(2**63), "temperature": 1e-20}):
        status, body = call(server, "/v1/completions", {"prompt": "Hi there", "max_tokens": 6, **extra})
        assert status == 200, (extra, body)
        assert body["choices"][0]["text"] == greedy, extra
    status, body = call(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "seed": 2**64 - 1})
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_a_failure_inside_the_server_is_a_500_without_its_details(loaded):
    model, tok = loaded
    broken = GPT(model.config).eval()
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    with serving(create_app((broken, tok), ServeSettings())) as port:
        status, body = call(port, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 500
        assert body["error"] == {"message": "generation failed; the server log has the details", "type": "server_error",
                                 "param": None, "code": None}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2, "stream": True}))
        events = conn.getresponse().read().decode()
        assert "generation failed; the server log has the details" in events and "NaN" not in events
        assert health(port)["admitted"] == 0  # and it keeps serving


def test_a_non_streaming_client_that_hangs_up_frees_the_model_at_once(loaded):
    """Tokens arrive every 20 ms, so a check made only when none came for 0.25 s never ran: the
    model stayed busy until max_tokens (400 tokens, 8 s here). Now it is free within a poll."""
    app = create_app(loaded, ServeSettings(token_delay=0.02))
    with serving(app) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        body = b'{"prompt": "Hi", "max_tokens": 400, "temperature": 0}'
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while not health(port)["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)  # decoding, tokens flowing
        sock.close()
        hung_up = time.monotonic()
        while health(port)["admitted"]:
            assert time.monotonic() - hung_up < 1.5, "the model is still decoding for a client that left"
            time.sleep(0.01)


@contextlib.contextmanager
def limited_server(loaded, **limits):
    """The server as `serve` runs it (server_config: header deadline, connection cap), in a thread."""

    def make_config(port: int):
        settings = ServeSettings(port=port, **limits)
        return server_config(create_app(loaded, settings), settings, log_level="warning")

    with serving_config(make_config) as port:
        yield port


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True  # EOF: the server closed it
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_slow_headers_are_cut_off_and_slow_bodies_get_408(loaded):
    with limited_server(loaded, header_timeout_s=0.5, body_timeout_s=0.5) as port:
        slow = []
        for _ in range(20):  # slowloris: a request line and one header, then nothing more
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        assert call(port, "/health", method="GET")[0] == 200  # others are served meanwhile
        started = time.monotonic()
        assert all(closed_by_server(sock, 3.0) for sock in slow)
        assert time.monotonic() - started < 3.0
        # The headers complete, the body never does: 408 in OpenAI's shape, and the connection closes.
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        sock.settimeout(5)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        # A keep-alive connection that answered once gets the same deadline for its next request.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        conn.sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert closed_by_server(conn.sock, 3.0)


def test_max_connections_are_served_and_one_more_gets_503(loaded):
    """--max-connections 3: three keep-alive connections are answered, a request on a fourth gets
    uvicorn's plain-text 503, and once one of the three closes a new one is answered again."""

    def get(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        conn.request("GET", "/health")
        r = conn.getresponse()
        return r.status, r.read()

    with limited_server(loaded, max_connections=3) as port:
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(3)]
        assert [get(conn)[0] for conn in held] == [200, 200, 200]
        assert [get(conn)[0] for conn in held] == [200, 200, 200]  # kept open, still served
        extra = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert get(extra) == (503, b"Service Unavailable")
        extra.close()
        held.pop().close()
        deadline = time.monotonic() + 5
        while (answer := get(fresh := http.client.HTTPConnection("127.0.0.1", port, timeout=10)))[0] != 200:
            fresh.close()  # the server has not yet seen the close
            assert time.monotonic() < deadline, answer
            time.sleep(0.05)
        assert json.loads(answer[1])["status"] == "ok"
        for conn in (*held, fresh):
            conn.close()


def test_a_uvicorn_without_the_hooks_serves_without_the_header_deadline(monkeypatch, capsys):
    """The header deadline extends uvicorn internals; if a uvicorn lacks them, serving still works."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert issubclass(header_timeout_protocol(1.0), H11Protocol) and capsys.readouterr().err == ""
    monkeypatch.delattr(H11Protocol, "on_response_complete")
    assert header_timeout_protocol(1.5) is H11Protocol
    err = capsys.readouterr().err
    assert err.startswith("warning: uvicorn ") and err.endswith(
        ": its h11 protocol has no on_response_complete; serving without the 1.5 s deadline on request headers\n")
