"""A config.json written by someone else: every field's type is checked against its annotation (also
fields added later), absurd sizes are refused from the config alone before anything is built, and
both are one line naming the file and the field."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import pytest

from scratchllm.checkpoint import read_config
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits, parameter_count


@pytest.mark.parametrize("field, value, expected", [
    ("n_kv_heads", "2", "config field 'n_kv_heads' must be a positive integer, got '2'"),
    ("layer_norm_eps", "x", "config field 'layer_norm_eps' must be a number, got 'x'"),
    ("n_layers", 2.0, "config field 'n_layers' must be a positive integer, got 2.0"),
    ("qkv_bias", 1, "config field 'qkv_bias' must be true or false, got 1"),
    ("rope_theta", float("nan"), "config field 'rope_theta' must be > 0, got nan"),
])
def test_a_wrong_type_in_config_json_is_one_line_naming_file_and_field(tmp_path, capsys, field, value, expected):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"emb_dim": 32, "n_heads": 2, "n_layers": 1, field: value}))
    with pytest.raises(ScratchLLMError) as info:
        read_config(path)
    assert str(info.value) == f"{path}: {expected}"
    # The CLI: exit 2, that line, no traceback.
    assert main(["info", "--model", str(path)]) == 2
    assert capsys.readouterr().err == f"scratchllm info: error: {path}: {expected}\n"


def test_type_checks_follow_the_annotations_so_new_fields_are_covered():
    """A field another change adds (here a subclass's) is checked with no check of its own:
    GPTConfig ends its checks with core.options.check_fields over every annotation."""

    @dataclass
    class WithMore(GPTConfig):
        sliding_window: int | None = None
        layer_types: list[str] | None = None
        scale: float = 1.0

    assert WithMore(sliding_window=4096, layer_types=["full"], scale=2).sliding_window == 4096
    with pytest.raises(ScratchLLMError, match=r"^config field 'sliding_window' must be int or null, got '4096'$"):
        WithMore(sliding_window="4096")
    with pytest.raises(ScratchLLMError, match=r"^config field 'layer_types' must be list\[str\] or null, got 'full'$"):
        WithMore(layer_types="full")
    with pytest.raises(ScratchLLMError, match=r"^config field 'scale' must be float, got True$"):
        WithMore(scale=True)
    # Every GPTConfig field refuses a value of the wrong type, one line naming it.
    for f in dataclasses.fields(GPTConfig):
        rope = {"position": "rope"} if f.name == "rope_scaling" else {}  # (it needs rotary positions first)
        with pytest.raises(ScratchLLMError, match=rf"config field '{f.name}' must be"):
            GPTConfig(**{f.name: object()}, **rope)


def test_parameter_count_from_the_config_equals_the_model():
    for overrides in ({}, {"tie_embeddings": False, "n_kv_heads": 2, "position": "rope", "mlp": "swiglu"}):
        config = GPTConfig.from_preset("gpt-tiny", vocab_size=211, **overrides)
        assert parameter_count(config) == GPT(config).num_parameters()


def test_a_model_too_big_for_memory_is_refused_in_a_moment():
    """A billion layers (or emb_dim 2^22) would grow memory for minutes before failing: refused at once."""
    start = time.perf_counter()
    config = GPTConfig(n_layers=1_000_000_000)
    with pytest.raises(ScratchLLMError) as info:
        check_fits(config, "cpu", what="m.json")
    assert time.perf_counter() - start < 1.0
    n = parameter_count(config)
    assert 12 * 768**2 * 10**9 < n < 13 * 768**2 * 10**9  # attention + MLP: 12 C^2 per layer, plus biases and norms
    assert str(info.value).startswith(f"m.json: {n:,} parameters (emb_dim 768, n_layers 1000000000, "
                                      f"vocab_size 50257) need {4 * n / 1e9:,.1f} GB for its weights, but cpu has ")
    assert str(info.value).endswith(" GB available; choose a smaller model")
    with pytest.raises(ScratchLLMError, match=r"need [\d,.]+ GB to train, but cpu has"):
        check_fits(GPTConfig(emb_dim=2**22, n_heads=4, n_layers=2), "cpu", TRAINING_BYTES_PER_PARAMETER)
    check_fits(GPTConfig.from_preset("gpt-tiny"), "cpu", TRAINING_BYTES_PER_PARAMETER)  # fits: no error
