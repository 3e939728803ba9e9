"""Single-file outputs (`respond`, `evaluate ... --out`, `classify --out`): an existing file is
replaced only with overwrite=True (the CLI's --overwrite), and the refusal comes before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.lm import write_report
from scratchllm.evaluation.responses import evaluate_responses, respond
from scratchllm.inference.classify import classify_texts

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0_1_layout"
RECORDS = [{"instruction": "Say hello", "input": "", "output": "hello"}]


@pytest.mark.parametrize("what, write", [
    ("responses file", lambda out, **kw: respond(str(FIXTURES / "gpt"), RECORDS, out, max_new_tokens=2, device="cpu",
                                                 progress=False, **kw)),
    ("report file", lambda out, **kw: evaluate_responses([{**RECORDS[0], "model_response": "hello"}], out=out,
                                                         progress=False, **kw)),
    ("report file", lambda out, **kw: write_report({"loss": 1.0}, out, **kw)),
    ("predictions file", lambda out, **kw: classify_texts(str(FIXTURES / "classifier"), texts=["Win cash now"], out=out,
                                                          **kw)),
])
def test_an_existing_output_file_is_replaced_only_when_asked(tmp_path, what, write):
    out = tmp_path / "out.json"
    out.write_text("keep me")
    with pytest.raises(ScratchLLMError) as info:
        write(out)
    assert str(info.value) == f"{what} {out}: already exists (pass overwrite=True / --overwrite to replace it)"
    assert out.read_text() == "keep me"
    write(out, overwrite=True)
    text = out.read_text()
    assert text != "keep me" and json.loads(text.splitlines()[0] if what == "predictions file" else text)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def cli_case(verb: str, tmp_path: Path) -> tuple[list[str], str]:
    """(argv without --out, the file kind its error names) of a verb that writes one file."""
    records, responses = tmp_path / "records.json", tmp_path / "responses.json"
    records.write_text(json.dumps(RECORDS))
    responses.write_text(json.dumps([{**RECORDS[0], "model_response": "hello"}]))
    return {
        "respond": (["respond", "--model", str(FIXTURES / "gpt"), "--data", str(records), "--max-new-tokens", "2",
                     "--device", "cpu"], "responses file"),
        "evaluate perplexity": (["evaluate", "perplexity", "--model", str(FIXTURES / "gpt"), "--data",
                                 str(SHARED / "the-verdict.txt"), "--max-tokens", "64", "--device", "cpu"], "report file"),
        "evaluate responses": (["evaluate", "responses", "--data", str(responses)], "report file"),
        "classify": (["classify", "--model", str(FIXTURES / "classifier"), "--input", str(SHARED / "the-verdict.txt"),
                      "--device", "cpu"], "predictions file"),
        "tokenizer train": (["tokenizer", "train", "--input", str(SHARED / "the-verdict.txt"), "--vocab-size", "300"],
                            "tokenizer file"),
    }[verb]


@pytest.mark.parametrize("verb", ["respond", "evaluate perplexity", "evaluate responses", "classify", "tokenizer train"])
def test_cli_refuses_an_existing_out_until_overwrite(tmp_path, capsys, verb):
    from scratchllm.cli import main

    argv, what = cli_case(verb, tmp_path)
    out = tmp_path / "out.json"
    out.write_text("keep me")
    assert main([*argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"scratchllm {verb.split()[0]}: error: {what} {out}: already exists "
                                       "(pass overwrite=True / --overwrite to replace it)\n")
    assert out.read_text() == "keep me"
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() != "keep me"
