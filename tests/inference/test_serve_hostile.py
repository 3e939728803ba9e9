"""`scratchllm serve` with an untrusted model directory (a real uvicorn server on a loopback port): a chat
template that refuses messages (400 with its own message), loops (400 after its time limit, while
/health and other clients are answered), or does not compile (refused at start); a padded vocabulary
(answers, never a 500); API keys compared after the same stripping, and keys no client can send refused
at start."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time

import pytest

from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import ServeSettings
from scratchllm.inference.serve import create_app
from tests.conftest import serving
from tests.hostile import padded_hf_dir
from tests.hf_tokenizers import CHATML_TEMPLATE

ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{% endfor %}" + CHATML_TEMPLATE)
LOOPING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
SLOW_ON_ASK = "{% if messages[-1]['content'] == 'slow' %}" + LOOPING + "{% endif %}" + CHATML_TEMPLATE


@pytest.fixture(scope="module")
def hf_dir(hf_tokenizer_dir, tmp_path_factory):
    return padded_hf_dir(hf_tokenizer_dir("qwen2"), tmp_path_factory.mktemp("hf"), "qwen2")


def with_template(tmp_path, hf_dir, source: str):
    d = tmp_path / "model"
    shutil.copytree(hf_dir, d)
    (d / "chat_template.jinja").write_text(source)
    return d


def call(port: int, path: str, body: dict | None = None, key: str | bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = b"Bearer " + key if isinstance(key, bytes) else f"Bearer {key}"
    conn.request("POST" if body is not None else "GET", path, json.dumps(body) if body is not None else None, headers)
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    return r.status, data


def chat(messages: list[dict], **more) -> dict:
    return {"messages": messages, "max_tokens": 8, **more}


def test_a_template_that_refuses_the_messages_is_400_with_its_message(hf_dir, tmp_path):
    app = create_app(str(with_template(tmp_path, hf_dir, ALTERNATING)), ServeSettings(), device="cpu")
    with serving(app) as port:
        status, body = call(port, "/v1/chat/completions", chat([{"role": "user", "content": "a"},
                                                                 {"role": "user", "content": "b"}]))
        assert status == 400 and body["error"] == {
            "message": "Conversation roles must alternate user/assistant/user/assistant/...",
            "type": "invalid_request_error", "param": "messages", "code": "chat_template_refused"}
        status, body = call(port, "/v1/chat/completions", chat([{"role": "user", "content": "a"}], temperature=1.0))
        assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")  # padded rows never sampled


def test_a_template_that_loops_is_stopped_and_the_server_answers_meanwhile(hf_dir, tmp_path):
    app = create_app(str(with_template(tmp_path, hf_dir, SLOW_ON_ASK)), ServeSettings(template_timeout_s=2.0), device="cpu")
    with serving(app) as port:
        result = {}
        slow = threading.Thread(target=lambda: result.update(
            answer=call(port, "/v1/chat/completions", chat([{"role": "user", "content": "slow"}]))))
        start = time.perf_counter()
        slow.start()
        time.sleep(0.5)  # the template is running now
        health_start = time.perf_counter()
        assert call(port, "/health")[0] == 200
        assert time.perf_counter() - health_start < 1.0  # before: /health waited for the template
        status, body = call(port, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})  # no template: answered
        assert status == 200
        status, body = call(port, "/v1/chat/completions", chat([{"role": "user", "content": "fast"}]))
        assert status == 200  # waited for the slow render's turn, then answered
        slow.join(30)
        status, body = result["answer"]
        assert status == 400 and body["error"]["code"] == "chat_template_error"
        assert body["error"]["message"] == ("the model's chat template failed on these messages: it ran longer than the "
                                            "time limit of 2 s (template_timeout_s)")
        assert time.perf_counter() - start < 10


@pytest.mark.parametrize("source, cause", [
    ("{% for m in messages %}", "Jinja syntax error on line 1: Unexpected end of template. Jinja was looking for the "
                                "following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'."),
    (LOOPING, "it ran longer than the time limit of 1 s (template_timeout_s)"),  # on a two-message conversation
])
def test_a_template_that_does_not_compile_or_always_loops_is_refused_at_start(hf_dir, tmp_path, source, cause):
    d = with_template(tmp_path, hf_dir, source)
    with pytest.raises(ScratchLLMError) as info:
        create_app(str(d), ServeSettings(template_timeout_s=1.0), device="cpu")
    assert str(info.value) == f"{d / 'chat_template.jinja'}: {cause}"


def test_a_key_read_with_its_newline_matches_after_the_same_stripping(hf_dir):
    from scratchllm.checkpoint.loader import load

    app = create_app(load(hf_dir, device="cpu"), ServeSettings(api_key="s3cret-key\n"))
    with serving(app) as port:
        hello = {"prompt": "Hello", "max_tokens": 2}
        assert call(port, "/v1/completions", hello, key="s3cret-key")[0] == 200  # before: 401 for ever
        assert call(port, "/v1/completions", hello, key=b"s3cret-key \t")[0] == 200
        assert call(port, "/v1/completions", hello, key="s3cret-kez")[0] == 401
        assert call(port, "/v1/completions", hello, key="s3cret-key\u00e9".encode())[0] == 401


@pytest.mark.parametrize("key, what", [("clé-secrète", "a non-ASCII character, 'é', at index 2"),
                                       ("ab\ncd", "a control character, '\\n', at index 2")])
def test_a_key_no_client_can_send_is_refused_at_start(capsys, monkeypatch, key, what):
    monkeypatch.setenv("SCRATCHLLM_API_KEY", key)
    assert main(["serve", "--model", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert err == (f"scratchllm serve: error: serve setting api_key holds {what}; HTTP clients send only printable "
                   "ASCII keys (the openai client and browsers refuse others): choose one, e.g. openssl rand -hex 16\n")
