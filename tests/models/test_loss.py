"""The loss paths of models/loss.py: chunked (CPU), fused (GPU) and logits + F.cross_entropy give the
same loss and gradients as plain cross-entropy, in float32 and under bf16 autocast; the padded head
never reaches parameters, checkpoints or sampling; the GPU path traces into one graph for
torch.compile. Tests marked `cuda` need a GPU (deselected by default; run them with -m cuda)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.models.loss import fused_chunk_rows, fused_cross_entropy, lm_loss, padded_head

IMPLS = ["chunked", "fused", "logits"]
VOCAB = 211  # padded to 256 inside the loss


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=VOCAB, **overrides))


def batch(ignored: str = "some"):
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, VOCAB, (3, 40), generator=g), torch.randint(0, VOCAB, (3, 40), generator=g)
    if ignored == "some":
        targets[0, :10] = -100
        targets[2, 7] = -100
    elif ignored == "all":
        targets[:] = -100
    return idx, targets


def loss_and_grads(model: GPT, impl: str | None, idx, targets, amp: bool, scale: float = 1.0):
    """(loss, {name: grad}); impl None is the reference: full logits and F.cross_entropy."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        if impl is None:
            loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        else:
            loss = model.loss(idx, targets, impl=impl)
    (scale * loss).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("impl", IMPLS)
def test_every_path_gives_cross_entropy_and_its_gradients_in_float32(impl):
    model = tiny()
    idx, targets = batch()
    ref_loss, ref_grads = loss_and_grads(model, None, idx, targets, amp=False, scale=3.0)
    loss, grads = loss_and_grads(model, impl, idx, targets, amp=False, scale=3.0)  # 3.0: upstream gradient
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_path_agrees_under_bf16_autocast(impl):
    """Under autocast the head runs in bf16 on every path, softmax and the loss in float32: the paths
    agree with autocast's own cross-entropy to bf16 rounding, and gradients stay float32."""
    model = tiny()
    idx, targets = batch()
    ref_loss, ref_grads = loss_and_grads(model, None, idx, targets, amp=True)
    fp32_loss, _ = loss_and_grads(model, None, idx, targets, amp=False)
    loss, grads = loss_and_grads(model, impl, idx, targets, amp=True)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 2e-3 and abs(loss.item() - fp32_loss.item()) / fp32_loss.item() < 0.02
    for name, g in grads.items():
        assert g.dtype == torch.float32, name
        # relative to the gradient's scale: bf16 keeps 8 bits of mantissa
        assert (g - ref_grads[name]).abs().max() <= 0.02 * ref_grads[name].abs().max() + 1e-6, name


@pytest.mark.parametrize("impl", IMPLS)
def test_a_batch_with_every_target_ignored_gives_zero_loss_and_zero_gradients(impl):
    model = tiny()
    idx, targets = batch("all")
    loss, grads = loss_and_grads(model, impl, idx, targets, amp=False)
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


@pytest.mark.parametrize("chunk", [1, 7, 64, 120, 500])
def test_fused_chunks_change_nothing(chunk):
    """How memory cuts the fused path into chunks leaves the loss and the gradients as one chunk's."""
    torch.manual_seed(2)
    h, w = torch.randn(120, 16, requires_grad=True), torch.randn(VOCAB, 16, requires_grad=True)
    t = torch.randint(0, VOCAB, (120,))
    t[::9] = -100
    whole = fused_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(whole, (h, w))
    part = fused_cross_entropy(h, w, t, chunk=chunk)
    ph, pw = torch.autograd.grad(part, (h, w))
    assert abs(whole.item() - part.item()) < 1e-5
    torch.testing.assert_close(ph, gh)
    torch.testing.assert_close(pw, gw, atol=1e-6, rtol=1e-5)


def test_padded_head_pads_to_a_multiple_of_64_with_minus_infinity():
    w = torch.randn(VOCAB, 8, requires_grad=True)
    padded, bias = padded_head(w, torch.bfloat16)
    assert padded.shape == (256, 8) and padded.dtype == torch.bfloat16 and bias.shape == (256,)
    assert torch.equal(padded[:VOCAB], w.detach().to(torch.bfloat16)) and not padded[VOCAB:].any()
    assert not bias[:VOCAB].any() and bool(torch.isneginf(bias[VOCAB:]).all())
    padded.float().sum().backward()  # the padding is a function of the weight, not a parameter
    assert w.grad.shape == (VOCAB, 8) and bool((w.grad == 1).all())


@pytest.mark.parametrize("impl", ["fused", "logits"])
def test_padded_paths_leave_parameters_checkpoints_and_sampling_unpadded(tmp_path, impl):
    """Training on the padded GPU paths (forced here on a CPU) changes only the real vocabulary's
    rows; the saved directory holds (vocab_size, C) tensors that load anywhere, and generation
    draws only real ids."""
    from scratchllm.checkpoint.loader import load
    from scratchllm.checkpoint.model_dir import save_model
    from scratchllm.checkpoint.weights import read_safetensors
    from scratchllm.inference.generation import generate_ids

    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        idx, targets = batch()
        model.loss(idx, targets, impl=impl).backward()
        assert model.tok_emb.weight.grad.shape == (VOCAB, 64)
        opt.step()
        opt.zero_grad()
    assert model.tok_emb.weight.shape == (VOCAB, 64) and model(idx).shape == (3, 40, VOCAB)
    save_model(model, tmp_path / "m")
    files = list((tmp_path / "m").glob("*.safetensors"))
    shapes = {k: tuple(v.shape) for f in files for k, v in read_safetensors(f).items()}
    assert shapes["tok_emb.weight"] == (VOCAB, 64)
    loaded, _ = load(tmp_path / "m")
    torch.testing.assert_close(loaded.loss(idx, targets), model.loss(idx, targets))
    g = torch.Generator().manual_seed(0)
    drawn = generate_ids(loaded, [[1, 2, 3]] * 4, 200, temperature=3.0, generators=[g] * 4)
    assert max(max(row) for row in drawn) < VOCAB and len({t for row in drawn for t in row}) > 150


def test_auto_is_chunked_on_a_cpu_and_bad_paths_are_errors():
    assert fused_chunk_rows(torch.device("cpu"), 50257) == 1024
    model = tiny()
    idx, targets = batch()
    with torch.no_grad():
        assert torch.equal(model.loss(idx, targets), model.loss(idx, targets, impl="chunked"))
    with pytest.raises(ScratchLLMError, match=r"loss impl 'fast': expected one of auto, chunked, fused, logits"):
        lm_loss(torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long), impl="fast")


def test_fused_path_traces_into_one_graph_for_torch_compile():
    """The GPU default must compile without graph breaks (a host read such as .item() would cut the
    graph around the loss): fullgraph tracing through dynamo and AOT autograd, on a CPU."""
    model = tiny()
    idx, targets = batch()
    compiled = torch.compile(lambda x, y: model.loss(x, y, impl="fused"), backend="aot_eager", fullgraph=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(idx, targets)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    finally:
        torch._dynamo.reset()
    ref_loss, ref_grads = loss_and_grads(model, "fused", idx, targets, amp=True)
    assert loss.item() == ref_loss.item()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], msg=name)


# ------------------------------------------------------------------------------------------------
# On a GPU


@pytest.mark.cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_paths_under_bf16_autocast_match_float32_on_the_cpu(impl):
    model = tiny()
    idx, targets = batch()
    ref_loss, ref_grads = loss_and_grads(model, None, idx, targets, amp=False)
    gpu = tiny().cuda()
    gpu.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = gpu.loss(idx.cuda(), targets.cuda(), impl=impl)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 0.01
    for name, p in gpu.named_parameters():
        assert (p.grad.cpu() - ref_grads[name]).abs().max() <= 0.03 * ref_grads[name].abs().max() + 1e-6, name


@pytest.mark.cuda
def test_cuda_fused_path_compiles_with_inductor_and_chunks_by_memory():
    total = torch.cuda.get_device_properties(0).total_memory
    assert fused_chunk_rows(torch.device("cuda"), 50257) == max(1024, total // 8 // (8 * 50304))
    model = tiny().cuda()
    idx, targets = (t.cuda() for t in batch())
    compiled = torch.compile(lambda x, y: model.loss(x, y), fullgraph=True)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(idx, targets)
            eager = model.loss(idx, targets)
    finally:
        torch._dynamo.reset()
    assert math.isfinite(loss.item()) and abs(loss.item() - eager.item()) < 1e-2
