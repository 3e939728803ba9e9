"""The inference session (session.py), the per-row decode state (rows.py) and the sampling settings passed
whole: a session's generate/stream equal the keyword functions, `load_session` is what every verb loads,
a row stops and releases its text as the keyword paths did, rows of one batch each sample by their own
settings, and `respond` takes the settings whole or as keywords (not both)."""

from __future__ import annotations

import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.responses import respond
from scratchllm.inference.config import SamplingConfig
from scratchllm.models.decode_kernels import DecodeLinear
from scratchllm.inference.generation import generate, stream
from scratchllm.inference.rows import RowState, sample_rows
from scratchllm.inference.sampling import make_generators, sample_next
from scratchllm.inference.session import InferenceSession, load_session
from scratchllm.models.quantize import Int8Linear
from tests.inference.test_generation import random_gpt


@pytest.fixture(scope="module")
def model(tok):
    return random_gpt(tok)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0, top_k=40, top_p=0.9, seed=5)])
def test_a_session_generates_what_the_keyword_functions_do(tok, model, settings):
    session = InferenceSession.of(model, tok, sampling=SamplingConfig(max_new_tokens=15, **settings))
    keywords = dict(max_new_tokens=15, **settings)
    assert session.generate("Once upon a time") == generate(model, tok, "Once upon a time", **keywords)
    assert session.generate(["Hi", "A longer prompt here"]) == generate(model, tok, ["Hi", "A longer prompt here"], **keywords)
    assert "".join(session.stream("Hello", stop="\n")) == "".join(stream(model, tok, "Hello", stop="\n", **keywords))
    other = SamplingConfig(max_new_tokens=4, temperature=0)  # a call's own settings win over the session's
    assert session.generate("Hi", other) == generate(model, tok, "Hi", 4, temperature=0)


def test_load_session_is_the_one_loader(tok, model, tmp_path):
    save_model(model, tmp_path / "phi", tok, extra={"prompt_style": "phi3"})
    save_model(model, tmp_path / "base", tok)
    session = load_session(tmp_path / "phi", device="cpu")
    assert (session.name, session.style.name, session.model.training) == ("phi", "phi3", False)
    assert any(isinstance(m, DecodeLinear) for m in session.model.modules())  # the decode layout
    assert load_session(tmp_path / "base", device="cpu", fallback_style="alpaca").style.name == "alpaca"
    assert load_session(tmp_path / "phi", device="cpu", prompt_style="plain").style.name == "plain"
    with pytest.raises(ScratchLLMError, match="^tokenizer: a model object was given without its tokenizer$"):
        InferenceSession.of(model, None)



def test_load_session_quantizes_and_the_verbs_pass_it_on(tok, model, tmp_path, capsys):
    """--quantize int8 reaches the model through load_session: int8 layers, and `scratchllm generate`
    prints what the session generates."""
    from scratchllm.cli import main

    d = save_model(model, tmp_path / "m", tok)
    session = load_session(d, device="cpu", quantize="int8", sampling=SamplingConfig(max_new_tokens=8, temperature=0))
    assert isinstance(session.model.out_head, Int8Linear) and not any(
        isinstance(m, torch.nn.Linear) for m in session.model.modules())
    want = session.generate("Once upon a time")
    assert main(["generate", "--model", str(d), "--device", "cpu", "--quantize", "int8", "--prompt", "Once upon a time",
                 "--max-new-tokens", "8", "--temperature", "0"]) in (0, None)
    assert capsys.readouterr().out == "Once upon a time" + want + "\n"

def test_a_row_stops_and_releases_its_text(tok):
    """A stop id ends a row uncounted and releases the text held back; max_new_tokens ends it with that
    text too; a stop string cuts it; a cancelled row releases nothing more."""
    ids = tok.encode("Hello, world")  # "Hello", ",", " world"

    def row(max_new_tokens=10, stops=("ld!",)):
        return RowState.for_text([0], SamplingConfig(max_new_tokens=max_new_tokens, temperature=0), tok, stops)

    r = row()
    assert [r.accept(t) for t in ids] == ["Hello", ",", " wor"]  # "ld" may start "ld!": held back
    assert r.accept(tok.eot_id) == "ld" and (r.finish_reason, r.new_tokens, r.text) == ("stop", 3, "Hello, world")
    r = row(max_new_tokens=3)
    assert "".join(r.accept(t) for t in ids) == "Hello, world" and r.finish_reason == "length"
    r = row(stops=(", w",))
    assert "".join(r.accept(t) for t in ids) == "Hello" and r.finish_reason == "stop"
    r = row()
    r.accept(ids[0]), r.accept(ids[1]), r.accept(ids[2])
    assert r.finish("cancelled") == "" and r.text == "Hello, wor" and r.finish_reason == "cancelled"
    assert RowState([1], SamplingConfig(max_new_tokens=0)).finish_reason == "length"


def test_rows_of_one_batch_sample_by_their_own_settings():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = SamplingConfig(temperature=0)
    hot, nucleus = SamplingConfig(temperature=1.5, seed=3), SamplingConfig(temperature=0.8, top_p=0.5, seed=4)
    rows = [RowState([1], hot, make_generators(3, 1)[0]), RowState([1], greedy), RowState([1], nucleus, make_generators(4, 1)[0])]
    got = sample_rows(logits, rows)
    alone = [sample_next(logits[0:1], 1.5, generators=make_generators(3, 1)).item(), logits[1].argmax().item(),
             sample_next(logits[2:3], 0.8, top_p=0.5, generators=make_generators(4, 1)).item()]
    assert got == alone


def test_respond_takes_the_settings_whole_or_as_keywords(tok, model):
    records = [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    whole = respond(model, records, sampling=SamplingConfig(max_new_tokens=6, temperature=0.0), tokenizer=tok, progress=False)
    assert whole == respond(model, records, max_new_tokens=6, tokenizer=tok, progress=False)  # respond's default: greedy
    with pytest.raises(ScratchLLMError, match=r"^respond: give sampling= or its fields \(max_new_tokens\), not both$"):
        respond(model, records, sampling=SamplingConfig(), max_new_tokens=6, tokenizer=tok)
    with pytest.raises(ScratchLLMError, match=r"^respond: unknown argument\(s\) temprature; the sampling fields are "):
        respond(model, records, temprature=0.5, tokenizer=tok)
