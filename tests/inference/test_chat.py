"""Tests for chat.py: ChatSession (prompt layout, history, context window, commands) in-process, and
`scratchllm chat` driven as a person would, in a pseudo-terminal with pexpect: type, read the streamed
answer, Ctrl-C in the middle of one, keep chatting, /reset, /quit.

The model is a tiny random GPT (GPT-2's tokenizer, phi3 prompt style, context 128); greedy answers
are compared with `scratchllm.generation.generate` on the prompt the style lays out.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from scratchllm.checkpoint import load, save_model
from scratchllm.cli import chat_repl
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.chat import ChatSession, ChatSettings, load_for_chat
from scratchllm.inference.generation import generate
from scratchllm.models.gpt import GPT
from scratchllm.prompts import get_style
from scratchllm.tokenizer import Tokenizer
from tests.helpers import sharpened_gpt

PHI3 = get_style("phi3")


def tiny_model(seed: int = 0) -> GPT:
    return sharpened_gpt(50257, seed, context_length=128, emb_dim=32, n_heads=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("chat") / "tiny", Tokenizer.gpt2(),
                           extra={"prompt_style": "phi3"})


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load(model_dir)


def session(loaded, **settings) -> ChatSession:
    model, tok = loaded
    return ChatSession(model, tok, "phi3", ChatSettings(**{"temperature": 0, "max_new_tokens": 12, **settings}))


def expected(loaded, messages, max_new_tokens=12) -> str:
    model, tok = loaded
    prompt = PHI3.format_chat(messages, add_generation_prompt=True)
    return generate(model, tok, prompt, max_new_tokens=max_new_tokens, temperature=0, stop=PHI3.stop_strings)


# ------------------------------------------------------------------------------------------------
# ChatSession


def test_answers_follow_the_prompt_style_and_the_history(loaded):
    chat = session(loaded, system="Be brief.")
    first = chat.say("Hello there")
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    assert first == expected(loaded, history)
    second = chat.say("And then?")
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert second == expected(loaded, history)
    assert chat.turns == history[1:] + [{"role": "assistant", "content": second}]


def test_a_base_model_gets_plain_continuation(tmp_path, loaded):
    model, tok = loaded
    base = save_model(model, tmp_path / "base", tok)  # no prompt_style: a base model
    net, tokenizer, style, name = load_for_chat(str(base), device="cpu")
    assert (style.name, name) == ("plain", "base")
    chat = ChatSession(net, tokenizer, style, ChatSettings(temperature=0, max_new_tokens=10))
    assert chat.say("Once upon a time") == generate(model, tok, "Once upon a time\n", max_new_tokens=10, temperature=0)


def test_seeded_sessions_repeat_themselves(loaded):
    runs = []
    for _ in range(2):
        chat = session(loaded, temperature=1.0, seed=3)
        runs.append([chat.say("Hi"), chat.say("Again")])
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


def test_an_answer_closed_early_stays_in_the_history(loaded):
    chat = session(loaded, max_new_tokens=40)
    answer = chat.send("Tell me a story")
    pieces = iter(answer)
    shown = "".join(next(pieces) for _ in range(3))
    pieces.close()  # what Ctrl-C does in the terminal
    assert answer.tokens == 3 and answer.text == shown and shown
    assert chat.turns == [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": shown}]
    full = chat.say("Go on")  # the next prompt holds the partial answer
    assert full == expected(loaded, chat.turns[:-1], max_new_tokens=40)


def test_oldest_turns_are_dropped_to_fit_the_context(loaded):
    chat = session(loaded, max_new_tokens=40, system="Sys")  # the prompt may use 128 - 40 = 88 tokens
    long = " ".join(["word"] * 20)
    chat.turns = [{"role": r, "content": f"{i} {long}"} for i in range(4) for r in ("user", "assistant")]
    before = list(chat.turns)
    chat.say("Last question")
    assert chat.dropped == 6 and chat.prompt_budget == 88
    assert chat.turns[:3] == before[6:] + [{"role": "user", "content": "Last question"}]
    assert len(chat.encode(chat.messages(chat.turns[:-1]))) <= 88
    keep_more = chat.messages(before[4:] + [{"role": "user", "content": "Last question"}])
    assert len(chat.encode(keep_more)) > 88  # dropping fewer would not have fitted
    assert chat.messages()[0] == {"role": "system", "content": "Sys"}  # the system prompt stays


def test_a_message_that_cannot_fit_is_an_error_and_changes_nothing(loaded):
    chat = session(loaded, max_new_tokens=40)
    chat.say("Hi")
    before = list(chat.turns)
    with pytest.raises(ScratchLLMError) as err:
        chat.send(" word" * 100)
    assert str(err.value) == ("the message makes a prompt of 115 tokens, but the model's context holds 128 with 40 "
                              "kept for the answer; shorten it (or the system prompt), or lower max_new_tokens")
    assert chat.turns == before


@pytest.mark.parametrize("line, note, check", [
    ("/reset", "conversation reset", lambda c: c.turns == []),
    ("/system Talk like a pirate", "system prompt set to 'Talk like a pirate'", lambda c: c.settings.system == "Talk like a pirate"),
    ("/system", "system prompt cleared", lambda c: c.settings.system is None),
    ("/temperature 0.25", "temperature set to 0.25", lambda c: c.settings.temperature == 0.25),
    ("/quit", None, lambda c: True),
])
def test_commands(loaded, line, note, check):
    chat = session(loaded, system="old")
    chat.say("Hi")
    assert chat.handle(line) == note and check(chat)


@pytest.mark.parametrize("line, message", [
    ("/temperature hot", "temperature must be a number >= 0 (0 = greedy), got 'hot'"),
    ("/temperature -1", "temperature must be a number >= 0 (0 = greedy), got -1.0"),
    ("/bogus", "unknown command '/bogus'; commands: /reset, /system TEXT, /temperature X, /quit"),
])
def test_bad_commands_are_errors(loaded, line, message):
    with pytest.raises(ScratchLLMError) as err:
        session(loaded).handle(line)
    assert str(err.value) == message


def test_chat_repl_reads_lines_and_prints_notes(model_dir, loaded):
    out = io.StringIO()
    lines = "Hello\n/bogus\n/temperature 0\n" + " word" * 200 + "\n/quit\nnever read\n"
    net, tokenizer, style, name = load_for_chat(str(model_dir), device="cpu")
    chat = ChatSession(net, tokenizer, style, ChatSettings(temperature=0, max_new_tokens=12))
    assert chat_repl(chat, name, stdin=io.StringIO(lines), out=out) == 0
    text = out.getvalue()
    answer = expected(loaded, [{"role": "user", "content": "Hello"}])
    assert f"you> bot> {answer}\nyou> [unknown command '/bogus';" in text
    assert "[temperature set to 0]" in text
    assert "[the message makes a prompt of 215 tokens, but the model's context holds 128" in text
    assert text.count("you> ") == 5


# ------------------------------------------------------------------------------------------------
# The terminal, as a person uses it


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored by the parent"])
def test_terminal_chat_streams_stops_on_ctrl_c_and_keeps_going(model_dir, loaded, sigint):
    # 30 ms per token: an answer of 40 tokens takes 1.2 s, long enough to interrupt in the middle.
    env = dict(os.environ, SCRATCHLLM_TOKEN_DELAY="0.03", TERM="dumb", OMP_NUM_THREADS="1")

    def start() -> None:  # runs in the child before exec: SIG_IGN is what `nohup` or `&` in a script gives
        signal.signal(signal.SIGINT, sigint)

    child = pexpect.spawn(sys.executable, ["-m", "scratchllm", "chat", "--model", str(model_dir), "--temperature", "0",
                                           "--max-new-tokens", "40", "--device", "cpu"],
                          env=env, encoding="utf-8", timeout=60, preexec_fn=start)
    mirror = session(loaded, max_new_tokens=40)  # the same conversation, in-process

    def answer_to(text: str) -> tuple[str, str]:
        """(what came before the answer: notes, the answer)."""
        child.sendline(text)
        child.expect_exact("bot> ")
        before = child.before.replace("\r\n", "\n")
        child.expect_exact("\r\nyou> ")
        return before, child.before.replace("\r\n", "\n")

    try:
        child.expect_exact("(prompt style phi3, context 128 tokens)")
        child.expect_exact("you> ")
        assert answer_to("Hello")[1] == mirror.say("Hello")

        child.sendline("Tell me a long story")
        child.expect_exact("bot> ")
        child.expect(r"[^\r\n]{20}")  # some of the answer has streamed in
        shown = child.before + child.after
        child.sendintr()  # Ctrl-C
        child.expect(r"\[stopped after (\d+) tokens\]")
        partial = (shown + child.before).replace("\r\n", "\n").removesuffix("\n").removesuffix("^C")
        stopped_after = int(child.match.group(1))
        assert 2 <= stopped_after < 40
        child.expect_exact("you> ")
        reply = mirror.send("Tell me a long story")
        pieces = iter(reply)
        while reply.tokens < stopped_after:
            next(pieces)
        pieces.close()
        assert partial == reply.text  # what was shown is what the history keeps

        # The partial answer is part of the conversation the next answer sees.
        notes, got = answer_to("And then?")
        assert got == mirror.say("And then?")
        if mirror.dropped:
            assert f"[dropped the oldest {mirror.dropped} message(s) to fit the context of 128 tokens]" in notes
        else:
            assert "dropped" not in notes

        child.sendline("/reset")
        child.expect_exact("[conversation reset]")
        child.expect_exact("you> ")
        mirror.reset()
        assert answer_to("Hello")[1] == mirror.say("Hello")

        child.sendintr()  # Ctrl-C at the prompt only explains how to leave
        child.expect_exact("[Ctrl-C stops an answer; type /quit or press Ctrl-D to leave]")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


# ------------------------------------------------------------------------------------------------
# A model with a chat template (the ChatML test tokenizer of tests/hf_tokenizers.py)


def chatml_model(tok, end: str):
    """A GPT that answers any ChatML chat with "Hello there!" and then the special token `end`."""
    from tests.inference.test_generation import bigram_gpt

    last = tok.encode("<|im_start|>assistant\n", allowed_special="all")[-1]
    script = tok.encode("Hello there!")
    chain = dict(zip([last, *script], [*script, tok.special_tokens[end]]))
    assert len(chain) == len(script) + 1
    return bigram_gpt(tok, chain)


@pytest.fixture(scope="module")
def qwen_tok(hf_tokenizer_dir):
    return Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))


def test_template_chat_stops_at_the_end_of_turn(qwen_tok, tmp_path):
    import transformers
    d = save_model(chatml_model(qwen_tok, "<|im_end|>"), tmp_path / "chatml", qwen_tok)
    net, tok, style, _ = load_for_chat(str(d), device="cpu")
    assert style.name == "template"  # the model's own template, unasked
    chat = ChatSession(net, tok, style, ChatSettings(temperature=0, max_new_tokens=20, system="Be brief."))
    answer = chat.send("Hi!")
    assert "".join(answer) == "Hello there!" and answer.finish_reason == "stop"
    hf = transformers.AutoTokenizer.from_pretrained(d)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello there!"}, {"role": "user", "content": "Again?"}]
    assert chat.messages() == messages[:3]
    assert chat.encode(messages) == hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert chat.say("Again?") == "Hello there!"


@pytest.mark.parametrize("end, stop_ids, finish", [
    ("<|im_end|>", [], "stop"),  # the template's turn end (and eos_token)
    ("<|endoftext|>", "endoftext", "stop"),  # generation_config.json's eos_token_id
    ("<|endoftext|>", [], "length"),  # not a stop id of this tokenizer: decoding goes on
    ("<|im_start|>", "endoftext", "length"),
])
def test_which_special_tokens_end_an_answer(qwen_tok, hf_tokenizer_dir, end, stop_ids, finish):
    if stop_ids == "endoftext":
        stop_ids = [qwen_tok.special_tokens["<|endoftext|>"]]
    tok = Tokenizer.from_hf(hf_tokenizer_dir("qwen2"), stop_ids=stop_ids)
    chat = ChatSession(chatml_model(tok, end), tok, "template", ChatSettings(temperature=0, max_new_tokens=8))
    answer = chat.send("Hi!")
    text = "".join(answer)
    assert answer.finish_reason == finish
    assert text == "Hello there!" if finish == "stop" else text.startswith("Hello there!" + end)
