"""The server's continuous batch (engine.py `BatchEngine`) against the real server on a loopback port:
requests that join a running batch get the same greedy answers as alone (prompts of mixed lengths,
prefilled in chunks while others stream, an answer whose window jumps past the context), n choices
decode as rows of the batch, each row stops on its own, the queue bounds what is admitted, and a row
that fails ends its own request with a 500 while the others go on.

The model is a tiny random GPT (GPT-2's tokenizer, context 128) with sharpened weights, so that every
token depends on the whole window: a row that read another row's cache, a position off by one or a
stale cache entry changes the answer.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import openai
import pytest
import torch

from scratchllm.checkpoint.loader import for_decoding
from scratchllm.inference.generation import generate
from scratchllm.inference.serve import ServeSettings, create_app
from scratchllm.tokenizer import Tokenizer
from tests.conftest import serving
from tests.helpers import sharpened_gpt

LONG = " ".join(f"word{i}" for i in range(45))  # ~90 tokens: prefilled over several steps, and its answer jumps


@pytest.fixture(scope="module")
def loaded():
    return sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2), Tokenizer.gpt2()


def stream_completion(port: int, body: dict, log: list | None = None) -> tuple[str, str, list[float]]:
    """(text, finish_reason, arrival time of each text chunk) of a streamed completion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    text, finish, times = "", None, []
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        choice = chunk["choices"][0]
        if choice["text"]:
            text += choice["text"]
            times.append(time.monotonic())
        finish = choice["finish_reason"] or finish
    conn.close()
    if log is not None:
        log.append((body["prompt"], text, finish, times))
    return text, finish, times


def test_requests_joining_mid_stream_get_the_answer_they_get_alone(loaded):
    model, tok = loaded
    # 10 ms per step: the first answer is still streaming when the others join; prompts longer than
    # 8 tokens are fed over several steps while it streams.
    app = create_app(loaded, ServeSettings(token_delay=0.01, prefill_chunk=8))
    asks = [("Once upon a time", 60), ("Hi", 30), ("The quick brown fox jumps over the lazy dog again and again", 40),
            (LONG, 70)]  # 90 + 70 tokens > the context of 128: its window jumps mid-batch
    with serving(app) as port:
        results: list = []
        first = threading.Thread(target=stream_completion,
                                 args=(port, {"prompt": asks[0][0], "max_tokens": asks[0][1], "temperature": 0}, results))
        first.start()
        while not results and _rows(port) == 0:
            time.sleep(0.005)
        time.sleep(0.1)  # a few tokens in
        others = [threading.Thread(target=stream_completion,
                                   args=(port, {"prompt": p, "max_tokens": n, "temperature": 0}, results))
                  for p, n in asks[1:]]
        for t in others:
            t.start()
            time.sleep(0.03)
        for t in [first, *others]:
            t.join(60)
    got = {prompt: (text, finish, times) for prompt, text, finish, times in results}
    for prompt, n in asks:
        assert got[prompt][0] == generate(model, tok, prompt, max_new_tokens=n, temperature=0), prompt
        assert got[prompt][1] == "length"
    first_times = got[asks[0][0]][2]
    assert all(got[p][2][0] < first_times[-1] for p, _ in asks[1:])  # they joined while the first streamed


def _rows(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    queue = json.loads(conn.getresponse().read())["queue"]
    conn.close()
    return queue["rows_decoding"]


def test_n_choices_are_rows_of_one_batch(loaded):
    model, tok = loaded
    with serving(create_app(loaded, ServeSettings(max_batch=4, prompt_style="phi3"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        r = client.completions.create(model="m", prompt="Hello", max_tokens=12, temperature=1.0, top_p=0.9, seed=7, n=3)
        want = [generate(model, tok, "Hello", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7 + i) for i in range(3)]
        assert [c.index for c in r.choices] == [0, 1, 2] and [c.text for c in r.choices] == want
        assert len(set(want)) > 1  # the choices differ: each row has its own seed
        assert r.usage.prompt_tokens == len(tok.encode("Hello")) and r.usage.completion_tokens == 36

        greedy = generate(model, tok, "Hello", max_new_tokens=12, temperature=0)
        texts = ["", ""]
        finishes = [None, None]
        for chunk in client.completions.create(model="m", prompt="Hello", max_tokens=12, temperature=0, n=2, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.text
                finishes[c.index] = c.finish_reason or finishes[c.index]
        assert texts == [greedy, greedy] and finishes == ["length", "length"]

        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], n=2,
                                                     max_tokens=5, temperature=0, stream=True))
        roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
        assert roles == [0, 1]


def test_each_row_stops_on_its_own(loaded):
    """Rows of one batch with different max_tokens and stop strings end when they should and leave;
    the others go on to their own end."""
    model, tok = loaded
    full = generate(model, tok, "Once upon a time", max_new_tokens=30, temperature=0)
    stop = full[8:12]
    with serving(create_app(loaded, ServeSettings(token_delay=0.01))) as port:
        results: list = []
        bodies = [{"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0},
                  {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stop": stop},
                  {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}]
        threads = [threading.Thread(target=stream_completion, args=(port, b, results)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    outcomes = sorted((text, finish) for _, text, finish, _ in results)
    assert outcomes == sorted([(full, "length"), (full[: full.index(stop)], "stop"),
                               (generate(model, tok, "Once upon a time", max_new_tokens=5, temperature=0), "length")])


def test_rows_decode_together_and_the_queue_bounds_the_rest(loaded):
    """max_batch 2, queue_size 1: two requests decode at once, a third waits for a row, a fourth is 503;
    a client that leaves gives its row to the one waiting."""
    app = create_app(loaded, ServeSettings(max_batch=2, queue_size=1, token_delay=0.02))
    with serving(app) as port:
        def open_stream():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 400, "temperature": 0,
                                                                "stream": True}), {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            return response

        a, b = open_stream(), open_stream()
        a.readline(), b.readline()  # both stream at once
        c = open_stream()  # admitted: waiting for a row
        health = json.loads(_get(port, "/health"))["queue"]
        assert (health["admitted"], health["rows_decoding"], health["capacity"]) == (3, 2, 3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", '{"prompt": "x", "max_tokens": 2}', {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 503 and json.loads(r.read())["error"]["code"] == "queue_full"
        a.close()  # its row goes to the waiting one
        assert c.readline().startswith(b"data: ")
        b.close()
        c.close()
        deadline = time.monotonic() + 5
        while json.loads(_get(port, "/health"))["queue"]["admitted"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    data = conn.getresponse().read()
    conn.close()
    return data


def test_a_row_that_fails_ends_its_request_with_a_500_and_the_others_go_on(loaded):
    """One token's embedding is NaN: the request whose answer reaches that token fails (its logits turn
    NaN in the middle of decoding, its cache row holds NaN), the request beside it finishes as alone,
    and a later request that takes the failed row's place in the cache is answered right."""
    model, tok = loaded
    clean = sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2, tie_embeddings=False)
    doomed, other = "Once upon a time", "The quick brown fox"
    answer = tok.encode(generate(clean, tok, doomed, max_new_tokens=12, temperature=0))
    bad = answer[3]
    safe = tok.encode(other + generate(clean, tok, other, max_new_tokens=40, temperature=0))
    assert bad not in safe and bad not in tok.encode(doomed)
    broken = sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2, tie_embeddings=False)
    with torch.no_grad():
        broken.tok_emb.weight[bad] = float("nan")
    with serving(create_app((broken, tok), ServeSettings(token_delay=0.01))) as port:
        results: list = []
        runner = threading.Thread(target=stream_completion,
                                  args=(port, {"prompt": other, "max_tokens": 40, "temperature": 0}, results))
        runner.start()
        time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": doomed, "max_tokens": 12, "temperature": 0}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 500 and json.loads(r.read()) == {"error": {
            "message": "generation failed; the server log has the details", "type": "server_error", "param": None,
            "code": None}}
        runner.join(60)
        assert results[0][1:3] == (generate(clean, tok, other, max_new_tokens=40, temperature=0), "length")
        again: list = []  # two at once: one of them decodes in the cache row the failed request left
        threads = [threading.Thread(target=stream_completion, args=(port, {"prompt": p, "max_tokens": 20,
                                                                           "temperature": 0}, again))
                   for p in (other, "Hi")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(text for _, text, _, _ in again) == sorted(
            generate(clean, tok, p, max_new_tokens=20, temperature=0) for p in (other, "Hi"))


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_the_batch_decodes_quantized_and_bfloat16_models_as_alone(precision):
    """The model as `load(..., quantize="int8")` or `load(..., dtype="bfloat16")` returns it (decode
    kernels chosen, weights int8 or bf16): rows of one batch, joining each other, answer as that model
    does alone."""
    model = sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2)
    model = for_decoding(model, "int8") if precision == "int8" else for_decoding(model.to(torch.bfloat16))
    tok = Tokenizer.gpt2()
    asks = [("Once upon a time", 30), ("Hi", 12), ("The quick brown fox jumps over the lazy dog", 20)]
    with serving(create_app((model, tok), ServeSettings(token_delay=0.01, prefill_chunk=4))) as port:
        results: list = []
        threads = [threading.Thread(target=stream_completion, args=(port, {"prompt": p, "max_tokens": n,
                                                                           "temperature": 0}, results))
                   for p, n in asks]
        for t in threads:
            t.start()
            time.sleep(0.03)
        for t in threads:
            t.join(60)
    got = {prompt: text for prompt, text, _, _ in results}
    assert got == {p: generate(model, tok, p, max_new_tokens=n, temperature=0) for p, n in asks}


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "serve setting max_batch must be an integer >= 1, got 0"),
    (["--prefill-chunk", "-1"], "serve setting prefill_chunk must be an integer >= 1, got -1"),
    (["--batching", "maybe"], "argument --batching: invalid choice: 'maybe' (choose from 'on', 'off')"),
])
def test_bad_batching_settings_are_one_line_errors(flags, message, capsys):
    from scratchllm.cli import main

    try:
        code = main(["serve", "--model", "gpt2", *flags])
    except SystemExit as exc:  # argparse's own check (a choice)
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err == f"scratchllm serve: error: {message}\n"
