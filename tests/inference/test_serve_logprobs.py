"""The server's log-probabilities (logprobs.py, api_logprobs.py, app.py): every prompt form of
/v1/completions, echo + logprobs against a forward pass computed here (1e-4), max_tokens 0, the top
alternatives' order and count, text_offset in characters, n choices of a batch of prompts, chat's
logprobs shape, /tokenize and /detokenize, and each bad input's 400 with its message.

The model is a tiny random GPT with GPT-2's tokenizer and a 64-token context, served with continuous
batching on and off (both engines record log-probabilities).
"""

from __future__ import annotations

import json
import threading

import pytest
import requests
import torch

from scratchllm.inference.api_logprobs import token_text
from scratchllm.inference.config import SamplingConfig
from scratchllm.inference.generation import encode_prompt
from scratchllm.inference.serve import ServeSettings, create_app
from scratchllm.inference.session import InferenceSession
from tests.conftest import serving
from tests.helpers import sharpened_gpt

KEY = "logprobs-key"
CTX = 64


@pytest.fixture(scope="module")
def model():
    return sharpened_gpt(50257, context_length=CTX, emb_dim=32, n_heads=2)


@pytest.fixture(scope="module", params=["on", "off"])
def server(request, model, tok):
    app = create_app((model, tok), ServeSettings(api_key=KEY, batching=request.param), device="cpu")
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def post(url: str, path: str, body: dict, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    r = requests.post(url + path, data=json.dumps(body), headers=headers, timeout=60)
    return r.status_code, r.json()


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(. | ids[:t+1]) for every position t: (T, V) float64, straight from the model."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)


def greedy_continuation(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(forward_logprobs(model, out)[-1].argmax()))
    return out[len(ids):]


def check_top(top: dict, lp: torch.Tensor, chosen: int, k: int, tok) -> None:
    """top: the k most likely tokens of one position, in order, then the chosen one if not among them."""
    best = lp.topk(k) if k else None
    items = list(top.items())
    if k:
        assert [key for key, _ in items[:k]] == [token_text(tok, i) for i in best.indices.tolist()]
        assert [v for _, v in items[:k]] == pytest.approx(best.values.tolist(), abs=1e-4)
    among = k and chosen in best.indices.tolist()
    assert len(top) == (k if among else k + 1)
    assert top[token_text(tok, chosen)] == pytest.approx(float(lp[chosen]), abs=1e-4)


# ------------------------------------------------------------------------------------------------
# /v1/completions


PROMPTS = ["The cat sat on", "Once upon a time there"]


@pytest.mark.parametrize("form", ["string", "list of one string", "strings", "ids", "lists of ids"])
def test_every_prompt_form_answers_each_prompt_n_times_in_order(server, model, tok, form):
    ids = [tok.encode(p) for p in PROMPTS]
    prompt = {"string": PROMPTS[0], "list of one string": PROMPTS[:1], "strings": PROMPTS, "ids": ids[0],
              "lists of ids": ids}[form]
    count = 1 if form in ("string", "list of one string", "ids") else 2
    status, body = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0, "n": 2})
    assert status == 200, body
    session = InferenceSession.of(model, tok)
    alone = session.generate(PROMPTS[:count], SamplingConfig(max_new_tokens=4, temperature=0))
    assert [c["index"] for c in body["choices"]] == list(range(2 * count))
    assert [c["text"] for c in body["choices"]] == [a for a in alone for _ in range(2)]
    assert body["usage"]["completion_tokens"] == 8 * count


@pytest.mark.parametrize("k", [0, 1, 5])
@pytest.mark.parametrize("max_tokens", [0, 3])
def test_echo_logprobs_equal_a_forward_pass(server, model, tok, k, max_tokens):
    ids = tok.encode(" the quick brown fox jumps over the lazy dog")
    status, body = post(server, "/v1/completions", {"prompt": ids, "echo": True, "logprobs": k,
                                                    "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    every = ids + greedy_continuation(model, ids, max_tokens)
    lp = forward_logprobs(model, every)
    got = choice["logprobs"]
    assert choice["text"] == tok.decode(every) and choice["finish_reason"] == "length"
    assert got["tokens"] == [token_text(tok, t) for t in every]
    assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
    assert got["token_logprobs"][1:] == pytest.approx([float(lp[t - 1, every[t]]) for t in range(1, len(every))], abs=1e-4)
    for t in range(1, len(every)):
        check_top(got["top_logprobs"][t], lp[t - 1], every[t], k, tok)
    assert got["text_offset"] == [len(tok.decode(every[:t])) for t in range(len(every))]
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": max_tokens,
                             "total_tokens": len(ids) + max_tokens}


def test_generated_logprobs_without_echo_are_the_raw_models(server, model, tok):
    """A sampled answer (temperature 1.5) reports log p under the model itself, not under the sampled
    distribution; the tokens spell the text and text_offset counts from the text's start."""
    ids = tok.encode("A long time ago")
    status, body = post(server, "/v1/completions", {"prompt": "A long time ago", "max_tokens": 5, "logprobs": 2,
                                                    "temperature": 1.5, "seed": 7})
    assert status == 200, body
    (choice,) = body["choices"]
    got = choice["logprobs"]
    assert "".join(got["tokens"]) == choice["text"] and len(got["tokens"]) == 5
    new = [tok.encode(t, allowed_special="all")[0] for t in got["tokens"]]  # each token string is one token here
    lp = forward_logprobs(model, ids + new)
    assert got["token_logprobs"] == pytest.approx([float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(new)], abs=1e-4)
    assert got["text_offset"] == [len("".join(got["tokens"][:i])) for i in range(5)]


def test_text_offset_counts_characters_of_split_utf8(server, tok):
    """GPT-2 splits 日 and 本 over byte tokens: a token inside a character starts where the character does."""
    text = "héllo 日本 wörld"
    status, body = post(server, "/v1/completions", {"prompt": text, "echo": True, "logprobs": 0, "max_tokens": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    ids = tok.encode(text)
    raw = [tok.token_bytes(t) for t in ids]
    assert choice["text"] == text
    assert choice["logprobs"]["text_offset"] == [len(b"".join(raw[:i]).decode("utf-8", "ignore")) for i in range(len(ids))]
    assert any(t.startswith("bytes:") for t in choice["logprobs"]["tokens"])  # the test does cover split characters
    for token, offset in zip(choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"]):
        assert token.startswith("bytes:") or text[offset:].startswith(token)


def test_scoring_does_not_disturb_a_running_stream(server, model, tok):
    """Prompts scored (echo) while another request streams: the stream is the answer it gets alone."""
    alone = InferenceSession.of(model, tok).generate("It was a dark", SamplingConfig(max_new_tokens=40, temperature=0))
    streamed: list[str] = []

    def stream():
        with requests.post(server + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, stream=True,
                           json={"prompt": "It was a dark", "max_tokens": 40, "temperature": 0, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    streamed.append(json.loads(line[6:])["choices"][0]["text"])

    thread = threading.Thread(target=stream)
    thread.start()
    ids = tok.encode(" and stormy night")
    for _ in range(3):
        status, body = post(server, "/v1/completions", {"prompt": [ids, ids[:2]], "echo": True, "logprobs": 1,
                                                        "max_tokens": 1, "temperature": 0})
        assert status == 200 and len(body["choices"]) == 2, body
    thread.join(60)
    assert "".join(streamed) == alone


# ------------------------------------------------------------------------------------------------
# /v1/chat/completions


@pytest.mark.parametrize("top", [None, 0, 3, 20])
def test_chat_logprobs_in_openai_chat_shape(server, model, tok, top):
    messages = [{"role": "user", "content": "Tell me a story"}]
    request = {"messages": messages, "max_tokens": 4, "temperature": 0, "logprobs": True, "n": 2}
    if top is not None:
        request["top_logprobs"] = top
    status, body = post(server, "/v1/chat/completions", request)
    assert status == 200, body
    session = InferenceSession.of(model, tok)
    ids = encode_prompt(tok, session.style.format_chat(messages, add_generation_prompt=True))
    new = greedy_continuation(model, ids, 4)
    lp = forward_logprobs(model, ids + new)
    k = top or 0
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert [e["token"] for e in content] == [token_text(tok, t) for t in new]
        assert [e["bytes"] for e in content] == [list(tok.token_bytes(t)) for t in new]
        assert [e["logprob"] for e in content] == pytest.approx([float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(new)],
                                                                abs=1e-4)
        for i, e in enumerate(content):
            best = lp[len(ids) - 1 + i].topk(k)
            assert [a["token"] for a in e["top_logprobs"]] == [token_text(tok, t) for t in best.indices.tolist()]
            assert [a["logprob"] for a in e["top_logprobs"]] == pytest.approx(best.values.tolist(), abs=1e-4)
            assert all(set(a) == {"token", "logprob", "bytes"} for a in e["top_logprobs"])
        assert "".join(e["token"] for e in content) == choice["message"]["content"]


def test_chat_without_logprobs_has_none(server):
    status, body = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200 and body["choices"][0]["logprobs"] is None, body


# ------------------------------------------------------------------------------------------------
# /tokenize, /detokenize, /tokenizer_info


def test_tokenize_and_detokenize(server, tok):
    text = "hello <|endoftext|> wörld"
    status, body = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False})
    ids = tok.encode(text, allowed_special="all")
    assert status == 200 and body == {"tokens": ids, "count": len(ids), "max_model_len": CTX}
    assert ids[1:3] == [220, 50256]  # the special token's text is the special token
    assert post(server, "/detokenize", {"tokens": ids}) == (200, {"prompt": text})
    info = requests.get(server + "/tokenizer_info", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert info["eos_token"] == "<|endoftext|>" and info["bos_token"] is None and info["model_max_length"] == CTX


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_tokenizer_routes_want_the_key(server, path):
    status, body = post(server, path, {"prompt": "x", "tokens": [1]}, key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


# ------------------------------------------------------------------------------------------------
# Bad input: 400 naming the field and the limit


LONG = list(range(1000, 1060))  # 60 token ids


@pytest.mark.parametrize("path, request_body, param, message", [
    ("/v1/completions", {"prompt": [50257]}, "prompt", "field 'prompt': token id 50257 is outside the vocabulary (0..50256)"),
    ("/v1/completions", {"prompt": [[1, 2], [3, -1]]}, "prompt", "field 'prompt': token id -1 is outside the vocabulary (0..50256)"),
    ("/v1/completions", {"prompt": []}, "prompt", "field 'prompt': expected at least one prompt, got an empty list"),
    ("/v1/completions", {"prompt": [[1], []]}, "prompt",
     "field 'prompt': prompt 1 of the list is empty; expected at least one token id"),
    ("/v1/completions", {"prompt": [1, "a"]}, "prompt", "field 'prompt': expected a string, a list of strings, a list of token "
                                                        "ids or a list of lists of token ids, got [1, \"a\"]"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs",
     "field 'logprobs': Input should be less than or equal to 5 (got 6)"),
    ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs", "field 'logprobs': Input should be a valid integer"),
    ("/v1/completions", {"prompt": LONG, "echo": True, "max_tokens": 5}, "max_tokens",
     "field 'max_tokens': with echo, the prompt (60 tokens) plus max_tokens (5) must fit the model's context of 64 tokens"),
    ("/v1/completions", {"prompt": [LONG[:2], LONG], "echo": True, "max_tokens": 5}, "max_tokens",
     "field 'max_tokens': with echo, prompt 1 (60 tokens) plus max_tokens (5) must fit the model's context of 64 tokens"),
    ("/v1/completions", {"prompt": LONG + LONG[:5], "echo": True, "max_tokens": 0}, "prompt",
     "the prompt has 65 tokens but the model's context holds 64; shorten it"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens",
     "field 'max_tokens': 0 generates nothing; it scores the prompt with echo: true"),
    ("/v1/completions", {"prompt": "x", "logprobs": 1, "stream": True}, "stream",
     "field 'stream': log-probabilities and echo are answered in one body"),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, "prompt",
     "field 'prompt': at most 8 choices per request (the server's max_batch), got 3 prompts x n=3 = 9"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs", "field 'top_logprobs': Input should be less than or equal to 20 (got 21)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs",
     "field 'top_logprobs': needs logprobs: true (got top_logprobs=2 without it)"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs",
     "field 'logprobs': Input should be a valid boolean"),
    ("/detokenize", {"tokens": [5, 60000]}, "tokens", "field 'tokens': token id 60000 is outside the vocabulary (0..50256)"),
    ("/tokenize", {"text": "x"}, "prompt", "missing required field 'prompt'"),
])
def test_bad_input_is_a_400_naming_the_field_and_the_limit(server, path, request_body, param, message):
    status, body = post(server, path, request_body)
    assert status == 400 and body["error"]["param"] == param and body["error"]["message"].startswith(message), body
