"""core/options.py: option groups composed by a verb's config, the flat keywords their constructors
take, and `resolve`, the one order in which settings win (defaults < run file < resumed run < flags),
here also on a real run directory being resumed."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest

from scratchllm.core.options import changed_values, composed, flat_values, group, option_fields, resolve
from scratchllm.data.config import LabelledConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import LoRAConfig
from scratchllm.recipes.config import ClassifyConfig, DPOConfig, InstructConfig, PretrainConfig
from scratchllm.recipes.pretrain import resolve_pretrain
from scratchllm.training.config import TrainConfig

# ------------------------------------------------------------------------------------------------
# Groups and flat keywords


def test_the_readme_keywords_land_in_the_groups():
    flat = InstructConfig(model="runs/pretrain", data="instruction-data.json", out="runs/sft", lora_rank=16,
                          lora_alpha=32, lr=1e-3)
    nested = InstructConfig(model="runs/pretrain", data="instruction-data.json", out="runs/sft",
                            lora=LoRAConfig(rank=16, alpha=32), train=TrainConfig(
                                max_steps=None, eval_every=None, batch_size=8, lr=1e-3, min_lr=None, warmup_steps=0,
                                seed=123))
    assert flat == nested
    assert (flat.lora.rank, flat.lora.alpha, flat.train.lr, flat.train.weight_decay) == (16, 32.0, 1e-3, 0.1)
    clf = ClassifyConfig(model="runs/pretrain", data="sms.tsv", out="runs/spam", trainable="all")
    assert clf == ClassifyConfig(model="runs/pretrain", labelled=LabelledConfig(data="sms.tsv"), out="runs/spam",
                                 trainable="all")
    assert (clf.train.patience, clf.train.lr, clf.lora.rank) == (2, None, 8)  # classify's own defaults


def test_each_verb_has_its_own_default_instance_of_a_group():
    assert (InstructConfig(model="m", data="d", out="o").train.lr, DPOConfig(model="m", data="d", out="o").train.lr,
            TrainConfig().lr) == (5e-5, 5e-6, 6e-4)
    assert DPOConfig(model="m", data="d", out="o").train.weight_decay == 0.01
    # the flag defaults are the verb's: a group's default instance, not the group's class defaults
    defaults = {f.name: f.default for f in option_fields(DPOConfig)}
    assert (defaults["lr"], defaults["weight_decay"], defaults["max_steps"], defaults["lora_rank"]) == (5e-6, 0.01, None, None)


def test_an_optional_group_exists_only_with_its_switch():
    assert InstructConfig(model="m", data="d", out="o", lora_alpha=32).lora is None  # no rank: full fine-tuning
    given = InstructConfig(model="m", data="d", out="o", lora=LoRAConfig(rank=4), lora_dropout=0.1)
    assert (given.lora.rank, given.lora.dropout) == (4, 0.1)
    assert flat_values(InstructConfig(model="m", data="d", out="o"))["lr"] == 5e-5
    assert "lora_rank" not in flat_values(InstructConfig(model="m", data="d", out="o"))


def test_a_group_checks_itself_whoever_composes_it():
    for make in (lambda: ClassifyConfig(lora_alpha=-1), lambda: InstructConfig(model="m", data="d", out="o", lora_rank=2,
                                                                                 lora_alpha=-1)):
        with pytest.raises(ScratchLLMError, match=r"^LoRA alpha must be a number > 0, got -1$"):
            make()
    with pytest.raises(ScratchLLMError, match=r"^train config field 'batch_size' must be >= 1, got 0$"):
        ClassifyConfig(batch_size=0)


def test_two_groups_may_not_give_a_field_the_same_flat_name():
    @dataclass(kw_only=True)
    class Verb:
        train: TrainConfig = group(TrainConfig)
        other: TrainConfig = group(TrainConfig)

    with pytest.raises(TypeError, match=r"two fields are called 'max_steps'"):
        composed(Verb)


def test_changed_values_are_what_the_author_set():
    cfg = PretrainConfig(data="a.txt", model="gpt-tiny", out="runs/a", max_steps=5, lr=6e-4)  # lr is the default
    assert changed_values(cfg) == {"data": "a.txt", "model": "gpt-tiny", "out": "runs/a", "max_steps": 5}


# ------------------------------------------------------------------------------------------------
# resolve: defaults < run file < resumed run < flags


def test_each_layer_wins_over_the_ones_below_it():
    cfg, sources = resolve(PretrainConfig, [
        ("run.toml", {"lr": 1e-3, "max_steps": 50, "batch_size": 4, "data": "a.txt"}),
        ("run_config.json", {"max_steps": 80, "batch_size": 6, "max_time": None}),
        ("flags", {"batch_size": 2}),
    ])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size, cfg.train.warmup_steps) == (1e-3, 80, 2, 100)
    assert cfg.data == "a.txt" and cfg.train.max_time is None  # None is a value a layer sets
    assert sources == {"lr": "run.toml", "data": "run.toml", "max_steps": "run_config.json",
                       "max_time": "run_config.json", "batch_size": "flags"}


def test_unknown_keys_name_their_layer_and_the_known_ones():
    with pytest.raises(ScratchLLMError) as err:
        resolve(PretrainConfig, [("run.toml", {"max_steps": 3}), ("flags", {"max_stepz": 3})], what="train config")
    assert str(err.value).startswith("flags: unknown train config key(s) 'max_stepz'; known keys: data, model, out, "
                                     "tokenizer, config, val_fraction, resume, objective, max_steps, max_time, ")
    with pytest.raises(ScratchLLMError, match=r"^run.toml: unknown train config key\(s\) 'resume'; known keys: data, "):
        resolve(PretrainConfig, [("run.toml", {"resume": True})], what="train config", exclude=("config", "resume"))


def test_a_bad_value_names_the_run_file():
    with pytest.raises(ScratchLLMError, match=r"^run.toml: train config field 'lr' must be > 0, got -1$"):
        resolve(PretrainConfig, [("run.toml", {"lr": -1})], where="run.toml")


def test_a_resumed_run_keeps_its_settings_over_the_run_file(tmp_path, verdict, tok_file, capsys):
    """A run directory as a run killed before its first checkpoint leaves it: run_config.json and its tokenizer."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tok_file, run / "tokenizer.json")
    train = {**TrainConfig(max_steps=80, lr=1e-3, batch_size=4, device="cpu").to_dict()}
    model = {"preset": "gpt-tiny"}
    (run / "run_config.json").write_text(json.dumps({
        "model": model, "train": train, "objective": "lm",
        "data": {"path": str(verdict.resolve()), "val_fraction": 0.2}, "tokenizer": {"type": "bpe", "vocab_size": 384}}))
    (tmp_path / "run.json").write_text(json.dumps({"lr": 5e-4, "batch_size": 3, "warmup_steps": 7}))

    cfg, tok, resume = resolve_pretrain({"resume": str(run), "config": str(tmp_path / "run.json"), "max_steps": 120})
    assert resume and tok.vocab_size == 384
    t = cfg.train
    assert (t.max_steps, t.lr, t.batch_size, t.warmup_steps) == (120, 1e-3, 4, 100)  # the flag, then the run's
    assert (t.device, t.eval_every) == ("cpu", 200)
    assert (cfg.data, cfg.val_fraction, cfg.objective, cfg.out) == (str(verdict.resolve()), 0.2, "lm", str(run))
    err = capsys.readouterr().err
    for key, mine, theirs in (("lr", 0.0005, 0.001), ("batch_size", 3, 4), ("warmup_steps", 7, 100)):
        assert (f"{tmp_path / 'run.json'}: {key} = {mine} is not the resumed run's {theirs}; the run keeps its own "
                "(a flag changes it)") in err
    # what is given again must be the run's
    with pytest.raises(ScratchLLMError, match=r"--val-fraction 0.1 is not the run's 0.2; a resumed run keeps its "
                                              r"validation split"):
        resolve_pretrain({"resume": str(run), "val_fraction": 0.1})
    with pytest.raises(ScratchLLMError, match=r"--objective mlm is not the run's lm"):
        resolve_pretrain({"resume": str(run), "objective": "mlm"})


def test_the_documented_call_and_the_config_resolve_alike(tmp_path, verdict, tok_file):
    keywords = {"data": str(verdict), "model": "gpt-tiny", "out": str(tmp_path / "v"), "tokenizer": str(tok_file),
                "max_steps": 200, "lr": 3e-3}
    by_keywords, _, _ = resolve_pretrain(keywords)
    by_config, _, _ = resolve_pretrain(changed_values(PretrainConfig(**keywords)))
    assert by_keywords == by_config
    assert (by_config.train.max_steps, by_config.train.lr, by_config.train.batch_size) == (200, 3e-3, 8)
