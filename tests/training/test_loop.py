"""The training loop: schedule, optimizer groups, configs, a real run on the-verdict, exact resume after
SIGKILL / SIGTERM, NaN handling, and DDP / FSDP under torchrun against one process."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.recipes.pretrain import PretrainTask, pretrain
from scratchllm.training.config import TrainConfig, derive_grad_accum
from scratchllm.training.loop import fit
from scratchllm.training.optim import learning_rate, make_optimizer, weight_decay_groups
from scratchllm.training.run_dir import checkpoint_dirs

TINY = dict(emb_dim=64, n_layers=2, n_heads=4, context_length=32)  # gpt-tiny at context 32
RUN_MODEL = dict(emb_dim=96, n_layers=3, n_heads=4, context_length=32)  # learns visibly in 80 steps


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-dropout.json"
    path.write_text(json.dumps({**TINY, "drop_rate": 0.1}))
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scratchllm", "pretrain", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# ------------------------------------------------------------------------------------------------
# Pure pieces


def test_learning_rate_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert learning_rate(4, cfg) == pytest.approx(5e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)  # warmup ends at the peak
    assert learning_rate(10, cfg) == pytest.approx(1e-3)  # cosine starts at the peak
    assert learning_rate(60, cfg) == pytest.approx(5.5e-4)  # halfway: min + (lr - min) / 2
    assert learning_rate(110, cfg) == pytest.approx(1e-4)
    assert learning_rate(500, cfg) == pytest.approx(1e-4)  # past max_steps: the floor
    assert all(learning_rate(s, cfg) >= learning_rate(s + 1, cfg) for s in range(10, 110))
    with pytest.raises(ScratchLLMError, match=r"^train config: schedule 'time' needs max_time"):
        TrainConfig(schedule="time")


def test_weight_decay_only_on_2d_trainable_weights():
    model = GPT(GPTConfig(vocab_size=100, **TINY))
    model.blocks[1].mlp.fc.weight.requires_grad_(False)  # frozen: in no group
    decay, no_decay = weight_decay_groups(model)
    assert decay == [
        "tok_emb.weight", "pos_emb.weight",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight",
        "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.weight", "blocks.1.mlp.proj.weight",
    ]  # out_head.weight is tok_emb.weight (tied) and is listed once
    assert "blocks.0.norm1.weight" in no_decay and "blocks.0.attn.qkv.bias" in no_decay
    assert "final_norm.bias" in no_decay and len(no_decay) == 2 * 8 + 2
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [9, 18]
    assert opt.defaults["fused"] is True and opt.defaults["betas"] == (0.9, 0.95)


def test_train_config_files_flags_and_errors(tmp_path):
    (tmp_path / "run.toml").write_text('max_steps = 50\nlr = 1e-3\ndevice = "cpu"\n')
    (tmp_path / "run.json").write_text('{"max_steps": 50, "lr": 0.001}')
    (tmp_path / "run.yaml").write_text("max_steps: 50\nlr: 0.001\n")
    for name in ("run.toml", "run.json", "run.yaml"):
        cfg = TrainConfig.from_file(tmp_path / name, max_steps=70)  # the flag wins over the file
        assert (cfg.max_steps, cfg.lr, cfg.batch_size) == (70, 1e-3, 8)
    with pytest.raises(ScratchLLMError, match=r"unknown train config key\(s\) 'max_stepz'; known keys: max_steps, "):
        TrainConfig.from_dict({"max_stepz": 3})
    with pytest.raises(ScratchLLMError, match=r"train config field 'batch_size' must be int, got '8'"):
        TrainConfig(batch_size="8")
    with pytest.raises(ScratchLLMError, match=r"train config: min_lr \(0.1\) must not exceed lr \(0.001\)"):
        TrainConfig(lr=1e-3, min_lr=0.1)
    (tmp_path / "run.ini").write_text("")
    with pytest.raises(ScratchLLMError, match=r"unknown run file type '.ini'; expected .toml, .json, .yaml or .yml"):
        TrainConfig.from_file(tmp_path / "run.ini")


def test_cli_flags_are_the_train_config_fields_with_their_help(capsys):
    """Every TrainConfig field is a `pretrain` flag whose help is the text below the field (or, for the
    device, the one help every device option shares)."""
    import dataclasses

    from scratchllm.cli import main
    from scratchllm.core.options import DEVICE_HELP, field_docs

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = {**field_docs(TrainConfig), "device": DEVICE_HELP}
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
        assert docs[f.name] and docs[f.name] in text, f.name
    assert "--no-fused-adamw" in text and "{steps,time}" in text


def test_grad_accum_derived_from_tokens_per_step():
    accum, formula = derive_grad_accum(TrainConfig(batch_size=4, tokens_per_step=1024), 64, 2)
    assert accum == 2
    assert formula == "grad_accum = tokens_per_step / (batch_size * context_length * world_size) = 1024 / (4 * 64 * 2) = 2"
    with pytest.raises(ScratchLLMError, match=r"tokens_per_step=1000 is not a multiple of batch_size \* context_length \* world_size = 4 \* 64 \* 1 = 256"):
        derive_grad_accum(TrainConfig(batch_size=4, tokens_per_step=1000), 64, 1)


# ------------------------------------------------------------------------------------------------
# One real run, inspected from several sides


@pytest.fixture(scope="module")
def run(tmp_path_factory, verdict, tok_file):
    out = tmp_path_factory.mktemp("run") / "verdict"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and immune to a busy machine
    try:
        summary = pretrain(verdict, dict(RUN_MODEL), out, tokenizer=tok_file, max_steps=80, batch_size=16, lr=3e-3,
                           warmup_steps=5, eval_every=20, eval_batches=4, log_every=10, save_every=20, keep_last=2,
                           sample_every=40, sample_tokens=8, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, summary


@pytest.mark.parametrize("remeasured, expected_mfu, noted", [
    (4e9, 0.5, True),    # the start's figure was disturbed: the row divides by the new one
    (1e9, 2.0, True),    # still above: the row says so rather than hiding it
    (None, 2.0, False),  # a datasheet peak is not re-measured
])
def test_logger_measures_the_peak_again_when_mfu_comes_out_above_one(tmp_path, capsys, remeasured, expected_mfu, noted):
    from scratchllm.training.loop import Logger, Progress
    from scratchllm.training.run_dir import RunDir
    cfg = TrainConfig(max_steps=10, log_every=1, progress=False)
    remeasure = None if remeasured is None else (lambda: remeasured)
    logger = Logger(RunDir(tmp_path), cfg, flops_per_token=1e6, peak=1e9, progress=Progress(), remeasure=remeasure)
    logger.train_time = 1.0
    row = logger.row(Progress(step=1, tokens=2000), loss=1.0, lr=1e-3, grad_norm=None, elapsed=1.0)
    assert row["mfu"] == pytest.approx(expected_mfu)  # 2e9 FLOP/s done
    assert ("above the matmul peak measured at start (1)" in capsys.readouterr().err) == noted


def test_run_loss_falls_and_metrics_are_logged(run, verdict, tok_file):
    out, summary = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 10, 20, 30, 40, 50, 60, 70, 80]
    assert math.isclose(rows[0]["val_loss"], math.log(384), rel_tol=0.02)  # untrained: about uniform
    train = [r for r in rows if "loss" in r]
    derived = json.loads((out / "run_config.json").read_text())["derived"]
    for r in train:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s", "mfu", "grad_norm"} <= set(r)
        assert r["tokens"] == r["step"] * 16 * 32 and r["tokens_per_s"] > 0
        # MFU = training FLOPs per token * tokens/s / the peak measured at start (not a fixed figure)
        assert r["mfu"] == pytest.approx(derived["flops_per_token"] * r["tokens_per_s"] / derived["peak_flops"], abs=1e-5)
    assert derived["peak_flops_source"] == "measured float32 matmul on cpu"
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40, 60, 80]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    # From ln(384) = 5.95 to below 4.85, the entropy of the-verdict's token frequencies (what a model
    # that ignores context can reach): the model uses the context after 80 steps.
    assert train[-1]["loss"] < 4.4 and evals[-1]["val_loss"] < 4.5  # measured: 4.18 and 4.34
    assert summary["steps"] == 80 and summary["stopped"] == "max_steps" and summary["exit_code"] == 0
    # bits per byte: the loss in bits over the UTF-8 bytes of exactly the validation tokens evaluated
    from scratchllm.data import eval_batches, load_corpus
    from scratchllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_file)
    corpus = load_corpus(verdict, tok)
    targets = np.concatenate([y.numpy().ravel() for _, y in eval_batches(corpus.val, 16, 32, 4)])
    n_bytes = tok.token_byte_lengths()[targets].sum()
    assert summary["eval"]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] * len(targets) / math.log(2) / n_bytes)
    data = json.loads((out / "run_config.json").read_text())["data"]
    assert data["val_bytes_per_token"] == corpus.split_bytes_per_token("val") != data["bytes_per_token"]


@pytest.mark.parametrize("given", ["the data's", "none", "another"])
def test_bits_per_byte_are_exact_with_the_datas_tokenizer_else_an_estimate_under_its_own_key(
        verdict, tok_file, given, capsys):
    """val_bpb: the loss in bits over the UTF-8 bytes of exactly the evaluated targets. Without the
    data's tokenizer those are unknown: the split's average bytes per token give val_bpb_est instead."""
    from scratchllm.data import eval_batches, load_corpus
    from scratchllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_file)
    corpus = load_corpus(verdict, tok)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=384, **TINY)).eval()
    tokenizer = {"the data's": tok, "none": None, "another": Tokenizer.gpt2()}[given]
    task = PretrainTask(corpus, batch_size=4, context_length=32, eval_batches=3, tokenizer=tokenizer)
    with torch.no_grad():
        metrics = task.evaluate(model)
    targets = np.concatenate([y.numpy().ravel() for _, y in eval_batches(corpus.val, 4, 32, 3)])
    bits = metrics["val_loss"] * len(targets) / math.log(2)
    warning = capsys.readouterr().err
    if given == "the data's":
        assert set(metrics) == {"val_loss", "val_ppl", "val_bpb"} and warning == ""
        assert metrics["val_bpb"] == pytest.approx(bits / tok.token_byte_lengths()[targets].sum())
    else:
        assert set(metrics) == {"val_loss", "val_ppl", "val_bpb_est"}
        assert metrics["val_bpb_est"] == pytest.approx(bits / (corpus.split_bytes_per_token("val") * len(targets)))
        assert warning == ("" if given == "none" else
                           "warning: the tokenizer has 50257 ids but the data 384: bits per byte are estimated from "
                           "the average bytes per token (val_bpb_est), not val_bpb\n")


def test_run_directory_layout(run):
    out, _ = run
    assert [s for s, _ in checkpoint_dirs(out)] == [60, 80]  # keep_last=2
    for d in ("best", "final", "checkpoints/step-0000080"):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (out / d).iterdir()}
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    config = json.loads((out / "run_config.json").read_text())
    assert config["model"]["vocab_size"] == 384 and config["model"]["context_length"] == 32
    assert config["train"]["max_steps"] == 80
    d = config["derived"]
    assert d["tokens_per_step"] == 512 and d["grad_accum"] == 1 and d["flops_per_token"] > 0
    assert d["parameters"] == sum(p.numel() for p in GPT(GPTConfig(vocab_size=384, **RUN_MODEL)).parameters())
    assert list(_samples(out)) == [0, 40, 80]
    state = torch.load(out / "checkpoints/step-0000080/trainer.pt", weights_only=True)
    assert state["step"] == 80 and state["tokens"] == 80 * 512 and state["world_size"] == 1
    assert {"optimizer", "ranks", "best", "train_config"} <= set(state)


def _samples(run_dir: Path) -> dict[int, str]:
    """samples.txt as {step: text}: each entry is "--- step N ---\\n" + text + "\\n\\n"."""
    parts = re.split(r"^--- step (\d+) ---\n", (run_dir / "samples.txt").read_text(), flags=re.M)
    assert parts[0] == ""
    return {int(step): text.removesuffix("\n\n") for step, text in zip(parts[1::2], parts[2::2])}


def test_samples_are_the_weights_of_their_step_sampled_with_the_run_seed(run):
    """Each sample is the prompt ("\\n") and sample_tokens=8 tokens drawn at temperature 0.8, top-k 50,
    with the run's seed, from the weights of its step: step 0's are the seeded initial weights,
    step 80's the final ones."""
    from scratchllm.checkpoint import load
    from scratchllm.inference.generation import generate

    out, _ = run
    model, tok = load(out)  # final/: the weights of step 80
    torch.manual_seed(1337)  # the run's seed, as pretrain seeds the initial weights
    initial = GPT(GPTConfig(vocab_size=384, **RUN_MODEL)).eval()
    samples = _samples(out)

    def sample(m: GPT) -> str:
        return "\n" + generate(m, tok, "\n", max_new_tokens=8, temperature=0.8, top_k=50, seed=1337)

    assert samples[0] == sample(initial) and samples[80] == sample(model)
    assert len(set(samples.values())) == 3  # the weights moved between samples


def test_run_directory_loads_for_generation(run):
    from safetensors.torch import load_file

    from scratchllm.checkpoint import load
    from scratchllm.inference.generation import generate

    out, _ = run
    model, tok = load(out)  # resolves RUNDIR/final/
    final = load_file(str(out / "final/model.safetensors"))
    assert set(final) == set(model.state_dict()) - {"out_head.weight"}  # tied to tok_emb.weight
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())
    assert tok.vocab_size == 384
    # Greedy decoding is the argmax of the logits, token by token.
    ids = tok.encode("I had")
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert generate(model, tok, "I had", max_new_tokens=5, temperature=0) == tok.decode(ids[2:])


def test_fresh_run_refuses_a_directory_with_checkpoints(run, verdict, tok_file):
    out, _ = run
    with pytest.raises(ScratchLLMError, match=r"already holds checkpoints \(up to step 80\); resume it"):
        pretrain(verdict, dict(TINY), out, tokenizer=tok_file, max_steps=2, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------
# Exact resume across real process deaths


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, need_checkpoint: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-2000:]}"
        if checkpoint_dirs(run_dir) and checkpoint_dirs(run_dir)[-1][0] >= need_checkpoint:
            if (run_dir / "metrics.jsonl").is_file() and max(_losses(run_dir), default=0) >= step:
                return
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the run")


def test_resume_after_sigkill_then_sigterm_matches_an_uninterrupted_run(tmp_path, verdict, tok_file, dropout_model):
    common = ["--data", str(verdict), "--model", str(dropout_model), "--tokenizer", str(tok_file),
              "--max-steps", "60", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "10",
              "--eval-every", "0", "--log-every", "1", "--save-every", "5", "--keep-last", "2",
              "--device", "cpu", "--seed", "7"]
    run = tmp_path / "run"

    def start(*args):
        return subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref = start(*common, "--out", str(tmp_path / "ref"))  # uninterrupted, alongside
    # SIGKILL after checkpoint 10 and a few more logged steps: those are dropped and redone on resume.
    proc = start(*common, "--out", str(run))
    _wait_for_step(proc, run, 12, 10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (run / "final").exists()
    # Resume (only the run directory: the rest comes from its run_config.json), then SIGTERM: a
    # checkpoint at the step where it arrived, exit code 143.
    proc = start("--resume", str(run))
    _wait_for_step(proc, run, 22, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped_at = max(_losses(run))
    assert checkpoint_dirs(run)[-1][0] == stopped_at and not (run / "final").exists()
    assert "SIGTERM: saving a checkpoint after this step" in err and f"stopped by SIGTERM at step {stopped_at}" in err
    done = subprocess.run(_cli("--resume", str(run)), env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    expected = _losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, 61))
    assert _losses(run) == expected  # bit for bit, dropout masks included
    assert (run / "final").is_dir()


def _start_pretrain(tmp_path: Path, verdict: Path, tok_file: Path, dropout_model: Path, launcher: list[str]):
    """A run that would take 100,000 steps, logging each, with no periodic checkpoint. Returns the
    process, the list its stderr is read into line by line, and the thread that reads it."""
    import threading

    args = ["pretrain", "--data", str(verdict), "--model", str(dropout_model), "--tokenizer", str(tok_file),
            "--max-steps", "100000", "--batch-size", "4", "--eval-every", "0", "--log-every", "1",
            "--save-every", "0", "--device", "cpu", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen([*launcher, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    return proc, lines, reader


def _wait_until(proc: subprocess.Popen, lines: list[str], done) -> None:
    deadline = time.time() + 120
    while not done():
        assert proc.poll() is None and time.time() < deadline, "".join(lines)[-2000:]
        time.sleep(0.01)


def _logged_step(run_dir: Path) -> int:
    try:
        return max(_losses(run_dir), default=0)
    except (OSError, json.JSONDecodeError):  # not written yet, or a line being written
        return 0


def test_sigint_saves_a_checkpoint_at_its_step_and_exits_130(tmp_path, verdict, tok_file, dropout_model):
    run = tmp_path / "run"
    proc, lines, reader = _start_pretrain(tmp_path, verdict, tok_file, dropout_model, [sys.executable, "-m", "scratchllm"])
    try:
        _wait_until(proc, lines, lambda: _logged_step(run) >= 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, "".join(lines)[-2000:]
    finally:
        proc.kill()
    reader.join(10)  # it has read the last lines
    err = "".join(lines)
    stopped_at = max(_losses(run))
    assert "SIGINT: saving a checkpoint after this step, then stopping (send it again to stop at once)" in err
    assert f"stopped by SIGINT at step {stopped_at}: " in err and f"(resume with --resume {run})" in err
    assert [s for s, _ in checkpoint_dirs(run)] == [stopped_at] and not (run / "final").exists()


# The CLI in a process whose checkpoint save takes a minute: a second signal must not wait for it.
SLOW_SAVE = """
import sys, time
from scratchllm.cli import main
from scratchllm.training.loop import Checkpointer

def slow_save(self, progress, elapsed):
    print("slow save started", file=sys.stderr, flush=True)
    time.sleep(60)

Checkpointer.save = slow_save
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_sigint_stops_at_once_without_the_checkpoint(tmp_path, verdict, tok_file, dropout_model):
    run = tmp_path / "run"
    proc, lines, reader = _start_pretrain(tmp_path, verdict, tok_file, dropout_model, [sys.executable, "-c", SLOW_SAVE])
    try:
        _wait_until(proc, lines, lambda: _logged_step(run) >= 2)
        proc.send_signal(signal.SIGINT)
        _wait_until(proc, lines, lambda: "slow save started\n" in lines)  # the first signal ended the loop; it is saving
        proc.send_signal(signal.SIGINT)
        second = time.time()
        code = proc.wait(timeout=120)
        waited = time.time() - second
    finally:
        proc.kill()
    reader.join(10)
    err = "".join(lines)
    assert code == 130 and waited < 30, err[-2000:]  # not after the 60 s save
    assert err.endswith("scratchllm pretrain: interrupted\n") and "stopped by SIGINT" not in err
    assert checkpoint_dirs(run) == [] and not (run / "final").exists()


# ------------------------------------------------------------------------------------------------
# Failures


class _NaNAtStep(PretrainTask):
    """A task whose loss turns NaN at its 5th micro-batch (as a diverging run's would)."""

    calls = 0

    def loss(self, model, batch):
        self.calls += 1
        loss = super().loss(model, batch)
        return loss * float("nan") if self.calls == 5 else loss


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, verdict, tok_file):
    from scratchllm.data import load_corpus
    from scratchllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_file)
    data = load_corpus(verdict, tok)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))
    task = _NaNAtStep(data, batch_size=4, context_length=32, tokenizer=tok)
    cfg = TrainConfig(max_steps=10, save_every=2, keep_last=5, eval_every=0, log_every=1, device="cpu", progress=False)
    with pytest.raises(ScratchLLMError, match=r"^loss is nan at step 5; stopping \(the last good checkpoint is .*step-0000004\)"):
        fit(model, task, cfg, tmp_path / "nan", tokenizer=tok)
    assert [s for s, _ in checkpoint_dirs(tmp_path / "nan")] == [2, 4]
    assert not (tmp_path / "nan/final").exists()
    assert sorted(_losses(tmp_path / "nan")) == [1, 2, 3, 4]


def test_time_schedule_decays_over_the_wall_clock_budget(tmp_path, verdict, tok_file):
    from scratchllm.data import load_corpus
    from scratchllm.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_file)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))
    task = PretrainTask(load_corpus(verdict, tok), batch_size=4, context_length=32, tokenizer=tok)
    cfg = TrainConfig(max_steps=100_000, max_time=2.0, schedule="time", lr=1e-3, min_lr=1e-4, warmup_steps=5_000,
                      eval_every=0, eval_batches=1, log_every=1, save_every=0, device="cpu", progress=False)
    summary = fit(model, task, cfg, tmp_path / "timed", tokenizer=tok)
    assert summary["stopped"] == "max_time" and 10 < summary["steps"] < 100_000
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "timed/metrics.jsonl").read_text().splitlines()) if "lr" in r]
    peak = lrs.index(max(lrs))
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(lrs) > 0.9e-3 and lrs[-1] < 1.5e-4  # warmed up over the first 5%, then decayed to ~min_lr


def test_bad_config_key_is_one_line_and_exit_code_2(tmp_path, capsys, verdict):
    from scratchllm.cli import main

    (tmp_path / "run.toml").write_text("max_stepz = 3\n")
    code = main(["pretrain", "--config", str(tmp_path / "run.toml"), "--data", str(verdict), "--model", "gpt-tiny",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"scratchllm pretrain: error: {tmp_path / 'run.toml'}: unknown train config key(s) 'max_stepz'")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# Several processes (gloo on CPU)


DIST_ARGS = ["--model", "gpt-tiny", "--context-length", "32", "--max-steps", "8", "--lr", "3e-3",
             "--warmup-steps", "2", "--eval-every", "4", "--eval-batches", "4", "--log-every", "1",
             "--save-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, verdict, tok_file) -> Path:
    """The reference for the multi-process runs: one process, batch 4."""
    out = tmp_path_factory.mktemp("one") / "run"
    done = subprocess.run(_cli("--data", str(verdict), "--tokenizer", str(tok_file), *DIST_ARGS, "--batch-size", "4",
                               "--out", str(out)), env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, verdict, tok_file, one_process, mode):
    # Two processes of batch 2 draw, between them, the windows one process of batch 4 draws.
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scratchllm",
              "pretrain", "--data", str(verdict), "--tokenizer", str(tok_file), *DIST_ARGS, "--batch-size", "2",
              "--out", str(tmp_path / "two")]
    two = subprocess.run(launch + (["--fsdp"] if mode == "fsdp" else []), env=ENV, capture_output=True, text=True, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(one_process), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert a[8] < a[1] - 0.5  # and it did learn
    rows = [json.loads(line) for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens"] == 8 * 4 * 32 and "val_loss" in rows[-1]
    config = json.loads((tmp_path / "two/run_config.json").read_text())
    assert config["derived"]["world_size"] == 2 and config["derived"]["tokens_per_step"] == 128
    from scratchllm.checkpoint import load

    model, _ = load(tmp_path / "two")
    ref, _ = load(one_process)
    assert torch.allclose(model.tok_emb.weight, ref.tok_emb.weight, atol=1e-4)


def test_fsdp_in_one_process_matches_one_process_without_it(tmp_path, verdict, tok_file, one_process):
    """torchrun --nproc_per_node=1 --fsdp: a process group of one, each "shard" the whole tensor;
    the losses and the saved weights are those of the plain run."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "scratchllm",
              "pretrain", "--data", str(verdict), "--tokenizer", str(tok_file), *DIST_ARGS, "--batch-size", "4",
              "--out", str(tmp_path / "fsdp1"), "--fsdp"]
    done = subprocess.run(launch, env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _losses(one_process), _losses(tmp_path / "fsdp1")
    assert sorted(b) == list(range(1, 9)) and max(abs(a[s] - b[s]) for s in a) < 1e-4
    config = json.loads((tmp_path / "fsdp1/run_config.json").read_text())
    assert config["derived"]["world_size"] == 1 and config["train"]["fsdp"] is True
    from scratchllm.checkpoint import load

    model, _ = load(tmp_path / "fsdp1")
    ref, _ = load(one_process)
    assert torch.allclose(model.tok_emb.weight, ref.tok_emb.weight, atol=1e-4)


@pytest.mark.cuda
def test_cuda_fsdp_in_one_process_trains(tmp_path):
    """The issue's case: a user checks an --fsdp configuration on one GPU (nccl, a group of one).
    The text is Python's own documentation (as the demo's), so no data folder is needed."""
    from pydoc_data.topics import topics

    from scratchllm.tokenizer import Tokenizer

    text = "\n\n".join(topics.values())[:200_000]
    (tmp_path / "docs.txt").write_text(text, encoding="utf-8")
    Tokenizer.train([text], 384).save(tmp_path / "tok.json")
    args = [a if a != "cpu" else "cuda" for a in DIST_ARGS]
    done = subprocess.run(_cli("--data", str(tmp_path / "docs.txt"), "--tokenizer", str(tmp_path / "tok.json"), *args,
                               "--batch-size", "4", "--out", str(tmp_path / "run"), "--fsdp"),
                          env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9)) and losses[8] < losses[1] - 0.5

