"""models/decode_kernels.py: every decode kernel gives the plain product (any rows, bias or none,
float32 and bfloat16), `optimize_for_decoding` keeps parameters, ties, results, pickling and
training, chooses by measurement (once per process and weight set) or takes a forced kernel, and
`plain_linears` undoes it; the old import path still works."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.models import decode_kernels as dk
from scratchllm.models.decode_kernels import (DecodeLinear, kernel_choices, matvec_product, optimize_for_decoding,
                                              plain_linears, split_product)
from scratchllm.models.lora import apply_lora
from tests.helpers import sharpened_gpt

VOCAB = 300
PROMPT = [5, 17, 250, 3, 99, 42, 7]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("shape", "rows"), [((48, 32), (1,)), ((33, 21), (2, 3)), ((50, 7), (64,)), ((16, 64), (1, 1, 1)),
                                             ((5, 13), (1,)), ((4, 8), (0,)), ((1, 6), (2,))])
@pytest.mark.parametrize("bias", [True, False])
def test_split_product_matches_linear(threads, shape, rows, bias):
    """The per-thread slices of the inner dimension (3 threads on 32 inputs: 4 slices; on 7: 7; on
    13 with 2 threads none fits: 1) add up to the plain product, for any rows and leading dimensions."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g).t().contiguous().t()  # column-major (out, in)
    b = torch.randn(shape[0], generator=g) if bias else None
    x = torch.randn(*rows, shape[1], generator=g)
    torch.set_num_threads(threads)
    got = split_product(x, w, b)
    assert got.shape == (*rows, shape[0])
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [(1,), (1, 1), (3,), (2, 5), (64,), (0,)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("onednn", [True, False])
def test_matvec_product_matches_linear_and_leaves_onednn_as_it_was(dtype, rows, bias, onednn):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 24, generator=g).to(dtype)
    b = torch.randn(40, generator=g).to(dtype) if bias else None
    x = torch.randn(*rows, 24, generator=g).to(dtype)
    with dk._onednn(onednn):
        got = matvec_product(x, w, b)
        assert torch.backends.mkldnn.enabled is onednn
    assert got.shape == (*rows, 40) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), F.linear(x.float(), w.float(), None if b is None else b.float()), atol=tol,
                               rtol=tol)


@pytest.mark.parametrize("kernel", ["linear", "split", "matvec", "column"])
def test_optimize_for_decoding_keeps_parameters_ties_results_and_pickling(kernel):
    gpt, ref = sharpened_gpt(VOCAB, seed=2), sharpened_gpt(VOCAB, seed=2)
    params = dict(gpt.named_parameters())
    assert optimize_for_decoding(gpt, kernel=kernel) is gpt
    assert dict(gpt.named_parameters()) == params  # the same Parameter objects, still tied
    assert gpt.out_head.weight is gpt.tok_emb.weight
    linears = [m for m in gpt.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is DecodeLinear and m.kernel == kernel for m in linears)
    for m in linears:  # "split" and "column" read column-major (out, in) weights, the others row-major ones
        assert (m.weight.stride() == (1, m.weight.shape[0])) == (kernel in ("split", "column"))
    for (name, a), b in zip(gpt.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), ref(ids), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(gpt(ids[:, :1]), ref(ids[:, :1]), atol=1e-4, rtol=1e-5)
    assert generate_ids(gpt, [PROMPT], 40, 0) == generate_ids(ref, [PROMPT], 40, 0)
    buffer = io.BytesIO()
    torch.save(gpt, buffer)  # copies and pickles keep the kernel and the layout, and keep working
    buffer.seek(0)
    for other in (copy.deepcopy(gpt), torch.load(buffer, weights_only=False)):
        assert other.blocks[0].mlp.fc.kernel == kernel
        assert other.blocks[0].mlp.fc.weight.stride() == gpt.blocks[0].mlp.fc.weight.stride()
        with torch.no_grad():
            torch.testing.assert_close(other(ids), ref(ids), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["split", "matvec", "column"])
def test_optimized_model_still_trains_and_notices_changed_weights(kernel):
    """Gradients flow through the plain product; a weight changed in place is never served stale."""
    gpt, ref = sharpened_gpt(VOCAB, seed=2), sharpened_gpt(VOCAB, seed=2)
    optimize_for_decoding(gpt, kernel=kernel)
    ids = torch.tensor([PROMPT])
    gpt.loss(ids[:, :-1], ids[:, 1:]).backward()
    ref.loss(ids[:, :-1], ids[:, 1:]).backward()
    torch.testing.assert_close(gpt.blocks[0].mlp.fc.weight.grad, ref.blocks[0].mlp.fc.weight.grad)
    with torch.no_grad():
        for model in (gpt, ref):
            model.blocks[0].mlp.fc.weight.mul_(2.0)
        torch.testing.assert_close(gpt(ids), ref(ids), atol=1e-4, rtol=1e-5)
        gpt.load_state_dict(sharpened_gpt(VOCAB, seed=5).state_dict())
        torch.testing.assert_close(gpt(ids), sharpened_gpt(VOCAB, seed=5)(ids), atol=1e-4, rtol=1e-5)


def test_decode_linear_takes_the_plain_product_where_decoding_does_not():
    """More than 64 rows, gradients, autocast or a weight no longer column-major: exactly F.linear."""
    linear = torch.nn.Linear(32, 24)
    optimize_for_decoding(linear, kernel="split")
    x = torch.randn(65, 32)
    with torch.no_grad():
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))
    assert torch.equal(linear(x[:2]), F.linear(x[:2], linear.weight, linear.bias))  # grad enabled
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x[:1]).dtype == torch.bfloat16
    linear.weight.data = linear.weight.data.contiguous()
    with torch.no_grad():
        assert torch.equal(linear(x[:1]), F.linear(x[:1], linear.weight, linear.bias))


def test_bfloat16_weights_take_no_split_and_a_single_row_leaves_onednn_on():
    gpt = sharpened_gpt(VOCAB, seed=3).to(torch.bfloat16)
    optimize_for_decoding(gpt, kernel="split")  # split reorders float32 weights only
    assert {m.kernel for m in gpt.modules() if isinstance(m, DecodeLinear)} == {"linear"}
    assert all(m.weight.is_contiguous() for m in gpt.modules() if isinstance(m, DecodeLinear))
    optimize_for_decoding(gpt, kernel="matvec")
    with torch.no_grad():
        gpt(torch.tensor([PROMPT[:1]]))
    assert torch.backends.mkldnn.enabled


def test_the_choice_is_measured_once_and_reported(monkeypatch):
    """Without a forced kernel each dtype's candidates are timed on the model's weights, once per
    thread count and weight set; the fastest wins unless the plain product is within 3% of it."""
    calls = []

    def fake(weights, names, rounds=3, rows=1, clock=None):
        calls.append((weights[0].dtype, tuple(names), len(weights)))
        return {name: {"linear": 1.0, "split": 0.5, "matvec": 0.98, "column": 0.6}[name] for name in names}

    monkeypatch.setattr(dk, "measure_kernels", fake)
    monkeypatch.setattr(dk, "_CHOSEN", {})
    monkeypatch.setattr(dk, "machine_busy", lambda: False)
    gpt = sharpened_gpt(VOCAB, seed=4)
    optimize_for_decoding(gpt)
    n_weights = len({id(m.weight) for m in gpt.modules() if isinstance(m, torch.nn.Linear)})
    assert calls == [(torch.float32, ("linear", "split", "matvec", "column"), n_weights)]
    assert {m.kernel for m in gpt.modules() if isinstance(m, DecodeLinear)} == {"split"}
    optimize_for_decoding(sharpened_gpt(VOCAB, seed=5))  # same shapes, same threads: no new measurement
    assert len(calls) == 1
    bf16 = sharpened_gpt(VOCAB, seed=4).to(torch.bfloat16)
    optimize_for_decoding(bf16)  # matvec is within 3% of linear: the plain product stays
    assert calls[1][:2] == (torch.bfloat16, ("linear", "matvec"))
    assert {m.kernel for m in bf16.modules() if isinstance(m, DecodeLinear)} == {"linear"}
    report = kernel_choices()
    assert [(r["dtype"], r["chosen"]) for r in report] == [("float32", "split"), ("bfloat16", "linear")]
    assert report[0]["threads"] == 1 and report[0]["seconds"]["split"] == 0.5


def test_a_server_batch_ranks_kernels_by_one_row_and_by_its_rows(monkeypatch):
    """rows > 1: each candidate's time per token at one row plus at `rows` rows decides. Here "column"
    loses at one row by 2% (so one-row decoding keeps "linear") and wins 8-row batches by 1.5x."""
    per_pass = {1: {"linear": 1.0, "split": 1.2, "matvec": 1.1, "column": 1.02},
                8: {"linear": 3.0, "split": 3.2, "matvec": 3.4, "column": 2.0}}
    seen = []

    def fake(weights, names, rounds=3, rows=1, clock=None):
        seen.append(rows)
        return {name: per_pass[rows][name] for name in names}

    monkeypatch.setattr(dk, "measure_kernels", fake)
    monkeypatch.setattr(dk, "_CHOSEN", {})
    monkeypatch.setattr(dk, "machine_busy", lambda: False)
    weights = [torch.randn(8, 8)]
    assert dk.choose_kernel(weights) == "linear" and seen == [1]
    assert dk.choose_kernel(weights, rows=8) == "column" and seen == [1, 8]  # one-row times measured once
    batch = [r for r in kernel_choices() if r["rows"] == 8][0]
    assert batch["seconds"] == pytest.approx({"linear": 1.375, "split": 1.6, "matvec": 1.525, "column": 1.27})
    gpt = sharpened_gpt(VOCAB, seed=4)
    optimize_for_decoding(gpt, rows=8)
    assert {m.kernel for m in gpt.modules() if isinstance(m, DecodeLinear)} == {"column"}
    assert gpt.blocks[0].mlp.fc.weight.stride() == (1, gpt.blocks[0].mlp.fc.weight.shape[0])


def test_a_busy_machine_is_measured_on_one_thread_in_its_cpu_time(monkeypatch):
    """Under load, threads wait for each other for whole time slices: one thread's CPU time is what
    still ranks the kernels. The caller's thread count comes back afterwards."""
    seen = []

    def fake(weights, names, rounds=3, rows=1, clock=None):
        seen.append((torch.get_num_threads(), clock))
        return dict.fromkeys(names, 1.0)

    monkeypatch.setattr(dk, "measure_kernels", fake)
    monkeypatch.setattr(dk, "_CHOSEN", {})
    monkeypatch.setattr(dk, "machine_busy", lambda: True)
    torch.set_num_threads(2)
    assert dk.choose_kernel([torch.randn(8, 8)]) == "linear"
    assert seen == [(1, dk.time.thread_time)] and torch.get_num_threads() == 2
    assert kernel_choices()[0]["busy"] is True and kernel_choices()[0]["threads"] == 2


def test_a_real_measurement_picks_a_candidate():
    weights = [torch.randn(64, 32), torch.randn(32, 64)]
    times = dk.measure_kernels(weights, ["linear", "split", "matvec", "column"], rounds=2)
    assert set(times) == {"linear", "split", "matvec", "column"} and all(0 < t < 1 for t in times.values())
    assert dk.choose_kernel(weights) in ("linear", "split", "matvec", "column")
    assert weights[0].is_contiguous()  # measuring copies, it never reorders the model's weights


def test_plain_linears_undoes_it_and_lora_layers_are_left_alone():
    gpt = sharpened_gpt(VOCAB, seed=6)
    apply_lora(gpt, rank=2, targets=("qkv",), verbose=False)
    optimize_for_decoding(gpt, kernel="split")
    lora = gpt.blocks[0].attn.qkv
    assert type(lora).__name__ == "LoRALinear" and lora.weight.is_contiguous()  # its own forward, untouched
    assert type(gpt.blocks[0].mlp.fc) is DecodeLinear
    assert plain_linears(gpt) is gpt
    assert type(gpt.blocks[0].mlp.fc) is torch.nn.Linear and gpt.blocks[0].mlp.fc.weight.is_contiguous()
    assert "kernel" not in gpt.blocks[0].mlp.fc.__dict__


def test_an_unknown_kernel_is_one_line():
    with pytest.raises(ScratchLLMError, match=r"^decode kernel 'fast': expected one of linear, split, matvec, column$"):
        optimize_for_decoding(torch.nn.Linear(4, 4), kernel="fast")


def test_the_old_import_path_still_works():
    from scratchllm.inference import decode_kernels, generation

    assert decode_kernels.optimize_for_decoding is optimize_for_decoding
    assert generation.optimize_for_decoding is optimize_for_decoding
    assert decode_kernels.DecodeLinear is DecodeLinear
