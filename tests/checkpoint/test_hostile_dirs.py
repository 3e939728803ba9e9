"""Model directories and outputs a hostile-but-fair user hands in: a config.json that lies about the
model's size or types, NaN weights, a weights file without its folder, and outputs that would replace
a directory of another kind. Each is one line on stderr and exit code 2; nothing is deleted."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoint import load
from scratchllm.checkpoint.convert import merge_lora_dir
from scratchllm.checkpoint.model_dir import save_model
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0_1_layout"


def edited_copy(tmp_path: Path, name: str, **model_fields) -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURES / "gpt", d)
    config = json.loads((d / "config.json").read_text())
    config["model"].update(model_fields)
    (d / "config.json").write_text(json.dumps(config))
    return d


def one_line_error(capsys, argv: list[str], verb: str) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"scratchllm {verb}: error: ") and err.count("\n") == 1, err
    return err.removeprefix(f"scratchllm {verb}: error: ").rstrip("\n")


def test_a_config_claiming_a_billion_layers_is_refused_at_once(tmp_path, capsys):
    d = edited_copy(tmp_path, "huge", n_layers=1_000_000_000)
    start = time.perf_counter()
    message = one_line_error(capsys, ["generate", "--model", str(d), "--prompt", "hi"], "generate")
    assert time.perf_counter() - start < 10  # before: memory grew for minutes
    assert message.startswith(f"{d / 'config.json'}: ") and "n_layers 1000000000" in message
    assert message.endswith("available; choose a smaller model")


def test_a_config_bigger_than_its_weights_is_refused_before_building(tmp_path):
    """Fits in memory, but the weights hold far fewer numbers: refused without building even the
    empty (meta-device) model, which for 20,000 layers alone takes many seconds."""
    d = edited_copy(tmp_path, "lying", n_layers=20_000)
    start = time.perf_counter()
    with pytest.raises(ScratchLLMError, match=r"describes a model of [\d,]+ parameters, but .*model.safetensors holds "
                                              r"[\d,]+ numbers; the config does not belong to these weights"):
        load(d)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("field, value, expected", [
    ("n_kv_heads", "2", "config field 'n_kv_heads' must be a positive integer, got '2'"),
    ("layer_norm_eps", "x", "config field 'layer_norm_eps' must be a number, got 'x'"),
])
def test_wrong_types_in_a_model_directory_are_one_line(tmp_path, capsys, field, value, expected):
    d = edited_copy(tmp_path, "typed", **{field: value})
    message = one_line_error(capsys, ["generate", "--model", str(d), "--prompt", "hi"], "generate")
    assert message == f"{d / 'config.json'} field 'model': {expected}"


def test_nan_weights_are_one_line_at_generate(tmp_path, capsys):
    model, tok = load(FIXTURES / "gpt")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    d = save_model(model, tmp_path / "nan", tok)
    for args in (["--temperature", "0.8"], ["--temperature", "0"]):  # sampled (multinomial) and greedy (argmax)
        message = one_line_error(capsys, ["generate", "--model", str(d), "--prompt", "hi", *args], "generate")
        assert message == ("the model's next-token scores are NaN or infinite: its weights hold non-finite values "
                           "(a diverged or corrupt checkpoint)")


def test_a_weights_file_without_its_config_names_the_file_not_the_folder(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xff" * 500)
    monkeypatch.chdir(tmp_path)
    message = one_line_error(capsys, ["import-gpt2", "--source", "garbage.bin", "--out", "imported"], "import-gpt2")
    assert message == "garbage.bin: a weights file without a config.json beside it; expected a model directory " \
                      "(its config.json and weights)"
    assert not (tmp_path / "imported").exists()


def test_merge_lora_never_replaces_a_classifier_directory(tmp_path, capsys):
    """merge-lora writes a GPT: onto a classifier directory (another kind) it is refused, and the
    classifier's head and marking stay, from the library and from the CLI."""
    target = tmp_path / "classifier"
    shutil.copytree(FIXTURES / "classifier", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    refusal = (f"{target}: exists and is not a scratchllm model directory of the same kind (gpt); refusing to "
               "replace it (remove it or choose another path)")
    with pytest.raises(ScratchLLMError) as info:
        merge_lora_dir(target, model=FIXTURES / "lora-step")
    assert str(info.value) == refusal
    assert one_line_error(capsys, ["merge-lora", "--adapter", str(FIXTURES / "lora-adapter"), "--base",
                                   str(FIXTURES / "gpt"), "--out", str(target)], "merge-lora") == refusal
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier"]
    classifier, _ = load(target, kind="classifier")  # still a working classifier
    assert classifier.labels == ["ham", "spam"]
    # A GPT directory (the same kind) is what it may replace, and what it writes is the merged model:
    # the logits of lora-step run with its adapters beside the base weights (W x + alpha/r B A x),
    # not those of its base (gpt/), which differ by up to 0.63 here.
    step, tok = load(FIXTURES / "lora-step", merge=False)
    base, _ = load(FIXTURES / "gpt")
    ids = torch.tensor([tok.encode("KING RICHARD II:\nWhat")])
    merged = merge_lora_dir(tmp_path / "merged", model=FIXTURES / "lora-step")
    merge_lora_dir(merged, model=FIXTURES / "lora-step")  # replaces the directory it wrote
    with torch.no_grad():
        want, unmerged, got = step(ids), base(ids), load(merged)[0](ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - unmerged).abs().max() > 0.1
    assert sorted(p.name for p in merged.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


# --------------------------------------------------------------------------------------------------
# Hugging Face directories: config.json types, nesting, and a chat template that is a hostile program


@pytest.fixture(scope="module")
def hf_dir(hf_tokenizer_dir, tmp_path_factory):
    """A small Qwen2 Hugging Face directory with the ChatML test tokenizer (and a padded vocabulary)."""
    from tests.hostile import padded_hf_dir

    return padded_hf_dir(hf_tokenizer_dir("qwen2"), tmp_path_factory.mktemp("hf"), "qwen2")


def hf_copy(tmp_path: Path, source: Path, name: str, content: str | None = None, **fields) -> Path:
    """A copy of `source` whose file `name` is `content`, or its JSON with `fields` changed."""
    d = tmp_path / "hfcopy"
    shutil.copytree(source, d)
    if content is None:
        data = json.loads((d / name).read_text()) if (d / name).is_file() else {}
        content = json.dumps({**data, **fields})
    (d / name).write_text(content)
    return d


@pytest.mark.parametrize("name, fields, message", [
    ("config.json", {"tie_word_embeddings": "false"}, "field 'tie_word_embeddings' is 'false' (str); expected true or false"),
    ("config.json", {"model_type": ["qwen2"]},
     "model_type is ['qwen2']; only 'gpt2', 'llama', 'qwen2', 'qwen3', 'arcee', 'starcoder2', 'stablelm' models can be imported"),
    ("config.json", {"layer_types": 5}, "field 'layer_types' is 5 (int); expected a list"),
    ("config.json", {"layer_types": [{"a": 1}]}, "field 'layer_types' is [{'a': 1}]; expected a list of strings"),
    ("generation_config.json", {"eos_token_id": "2"}, "eos_token_id is '2'; expected an id or a list of ids"),
])
def test_wrong_types_in_a_hugging_face_directory_are_one_line(hf_dir, tmp_path, capsys, name, fields, message):
    d = hf_copy(tmp_path, hf_dir, name, **fields)
    assert one_line_error(capsys, ["generate", "--model", str(d), "--prompt", "hi"], "generate") == f"{d / name}: {message}"


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"])
def test_json_nested_100000_deep_is_one_line(hf_dir, tmp_path, capsys, name):
    from tests.hostile import nested

    d = hf_copy(tmp_path, hf_dir, name, nested())
    assert one_line_error(capsys, ["generate", "--model", str(d), "--prompt", "hi"], "generate") == \
        f"{d / name}: JSON nested more than 100 levels deep; expected a config or tokenizer file (about 6)"


LOOPING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_generate_never_runs_the_chat_template(hf_dir, tmp_path, capsys):
    """Before, the stop ids rendered the template, so a template that loops hung `generate --prompt hello`."""
    d = hf_copy(tmp_path, hf_dir, "chat_template.jinja", LOOPING)
    start = time.perf_counter()
    assert main(["generate", "--model", str(d), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert time.perf_counter() - start < 30 and capsys.readouterr().out.startswith("hello")


def test_chat_refuses_a_template_that_does_not_compile_at_start(hf_dir, tmp_path, capsys):
    d = hf_copy(tmp_path, hf_dir, "chat_template.jinja", "{% if messages %}{{ messages[0] }")
    message = one_line_error(capsys, ["chat", "--model", str(d)], "chat")
    assert message == f"{d / 'chat_template.jinja'}: Jinja syntax error on line 1: unexpected '}}'"


def test_chat_with_a_template_that_loops_answers_each_line_with_one_error(hf_dir, tmp_path, capsys, monkeypatch):
    import io

    d = hf_copy(tmp_path, hf_dir, "chat_template.jinja", LOOPING)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nagain\n"))
    start = time.perf_counter()
    assert main(["chat", "--model", str(d), "--template-timeout-s", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert time.perf_counter() - start < 30 and out == ""
    assert err.splitlines() == [f"scratchllm chat: {d / 'chat_template.jinja'}: it ran longer than the time limit of "
                                "0.5 s (template_timeout_s)"] * 2
