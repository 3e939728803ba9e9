"""Muon: the Newton-Schulz orthogonalisation against a reference computed from the SVD, one step
against an update written out by hand, its parameter groups, exact state round trips, the config's
checks (FSDP refused), and two DDP processes against one."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.training.config import TrainConfig
from scratchllm.training.optim import NEWTON_SCHULZ, Muon, is_hidden_matrix, make_optimizer, orthogonalize

CPU = torch.device("cpu")


def newton_schulz_by_svd(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The reference: the iteration's polynomial p(s) = a s + b s^3 + c s^5 applied `steps` times to
    each singular value of g / ||g||_F, in float64, around g's own singular vectors."""
    a, b, c = NEWTON_SCHULZ
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / g.double().norm()
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return u @ torch.diag(s) @ vh


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (48, 16)])
def test_orthogonalize_is_the_newton_schulz_polynomial_of_the_singular_values(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    got = orthogonalize(g)
    assert got.shape == shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), newton_schulz_by_svd(g), atol=2e-4, rtol=1e-3)
    # ... which is close to the orthogonal factor U V^T: singular values near 1, same directions
    s = torch.linalg.svdvals(got)
    assert 0.6 < s.min() and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (got * (u @ vh)).sum() / (got.norm() * (u @ vh).norm())
    assert cosine > 0.95


def test_orthogonalize_in_bf16_is_the_float32_result_to_bf16_precision():
    """Under bf16 autocast Muon orthogonalises in bf16 (Jordan et al.); the iteration needs only
    singular values near 1, which bf16 keeps: the result is float32's to within bf16's precision."""
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    bf16 = orthogonalize(g, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, orthogonalize(g))
    assert (bf16 - orthogonalize(g)).norm() / orthogonalize(g).norm() < 0.03
    opt = make_optimizer(tiny(), TrainConfig(optimizer="muon"), CPU, amp_dtype=torch.bfloat16)
    assert opt.ns_dtype == torch.bfloat16
    assert make_optimizer(tiny(), TrainConfig(optimizer="muon"), CPU).ns_dtype == torch.float32


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_layers=2, n_heads=2, tie_embeddings=False))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny()
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1), CPU)
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, decay, no_decay = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert sorted(muon) == sorted(f"blocks.{i}.{m}.weight" for i in range(2)
                                  for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert sorted(decay) == ["out_head.weight", "pos_emb.weight", "tok_emb.weight"]
    assert all(n.endswith("bias") or "norm" in n for n in no_decay)
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]
    assert opt.param_groups[0]["lr_scale"] == pytest.approx(20.0) and opt.param_groups[1]["lr_scale"] == 1.0
    # the same shrink per step for every decayed matrix: lr * weight_decay
    assert opt.param_groups[0]["lr"] * opt.param_groups[0]["weight_decay"] == pytest.approx(1e-3 * 0.1)
    assert is_hidden_matrix("body.blocks.0.mlp.fc.weight", torch.zeros(2, 2))
    assert not is_hidden_matrix("blocks.0.mlp.fc.bias", torch.zeros(2))


def _grads(model: GPT, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 97, (3, 16), generator=g), torch.randint(0, 97, (3, 16), generator=g)
    model.zero_grad(set_to_none=True)
    model.loss(x, y).backward()


def test_two_muon_steps_match_the_update_written_out_by_hand():
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05, muon_momentum=0.9, weight_decay=0.1, beta2=0.99)
    model, twin = tiny(), tiny()
    opt = make_optimizer(model, cfg, CPU)
    # the AdamW part must be torch's AdamW, step for step
    adam_names = ["tok_emb.weight", "pos_emb.weight", "out_head.weight"]
    ref_adam = torch.optim.AdamW([dict(twin.named_parameters())[n] for n in adam_names], lr=1e-3, betas=(0.9, 0.99),
                                 weight_decay=0.1)
    w = model.blocks[0].mlp.fc.weight  # (128, 32): tall, so the update is scaled by sqrt(128 / 32) = 2
    expected, buf = w.detach().clone(), torch.zeros_like(w)
    for step in range(2):
        with torch.no_grad():  # the twin's hidden matrices follow the model's (AdamW does not update them)
            for (n, p), q in zip(model.named_parameters(), twin.parameters()):
                if n not in adam_names:
                    q.copy_(p)
        _grads(model, step)
        _grads(twin, step)
        g = w.grad.detach().clone()
        buf = 0.9 * buf + 0.1 * g
        nesterov = g + 0.9 * (buf - g)
        expected = expected * (1 - 1e-3 * 0.1) - 0.05 * 2.0 * orthogonalize(nesterov)
        opt.step()
        ref_adam.step()
    torch.testing.assert_close(w.detach(), expected, atol=1e-6, rtol=1e-5)
    for n in adam_names:
        torch.testing.assert_close(dict(model.named_parameters())[n], dict(twin.named_parameters())[n])


def test_muon_state_round_trips_exactly():
    cfg = TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.03)
    model = tiny()
    opt = make_optimizer(model, cfg, CPU)
    _grads(model, 0)
    opt.step()
    copy = tiny()
    copy.load_state_dict(model.state_dict())
    restored = make_optimizer(copy, cfg, CPU)
    blob = io.BytesIO()
    torch.save(opt.state_dict(), blob)  # as trainer.pt holds it, read back the way resume reads it
    blob.seek(0)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    for m, o in ((model, opt), (copy, restored)):
        _grads(m, 1)
        o.step()
    for a, b in zip(model.parameters(), copy.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "fields, message",
    [({"optimizer": "sgd"}, "'optimizer' must be one of 'adamw', 'muon', got 'sgd'"),
     ({"muon_lr": 0.0}, "'muon_lr' must be > 0, got 0.0"),
     ({"muon_momentum": 1.0}, "'muon_momentum' must be in \\[0, 1\\), got 1.0"),
     ({"optimizer": "muon", "fsdp": True}, "optimizer 'muon' does not work with fsdp")],
)
def test_muon_settings_are_checked(fields, message):
    with pytest.raises(ScratchLLMError, match=message):
        TrainConfig(**fields)


def test_two_ddp_processes_with_muon_match_one_process(tmp_path, shared_data):
    """Under DDP the gradients are all-reduced before step(), so each process orthogonalises the same
    full gradient: two processes of batch 2 give one process's losses with batch 4."""
    from scratchllm.tokenizer import Tokenizer

    verdict = shared_data / "the-verdict.txt"
    tok = tmp_path / "tok.json"
    Tokenizer.train([verdict.read_text(encoding="utf-8")], 384).save(tok)
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"optimizer": "muon", "muon_lr": 0.02, "lr": 3e-3}))
    args = ["pretrain", "--data", str(verdict), "--tokenizer", str(tok), "--config", str(run_file), "--model", "gpt-tiny",
            "--context-length", "32", "--max-steps", "8", "--warmup-steps", "2", "--eval-every", "0",
            "--log-every", "1", "--save-every", "0", "--device", "cpu"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "scratchllm", *args, "--batch-size", "4", "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "scratchllm", *args, "--batch-size", "2", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    losses = []
    for run in ("one", "two"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        losses.append({r["step"]: r["loss"] for r in rows if "loss" in r})
        assert json.loads((tmp_path / run / "run_config.json").read_text())["train"]["optimizer"] == "muon"
    a, b = losses
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert a[8] < a[1] - 0.4  # and it learned
    from scratchllm.checkpoint import load

    m1, _ = load(tmp_path / "one")
    m2, _ = load(tmp_path / "two")
    torch.testing.assert_close(m1.blocks[0].mlp.fc.weight, m2.blocks[0].mlp.fc.weight, atol=1e-4, rtol=1e-3)

