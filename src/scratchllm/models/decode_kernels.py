"""CPU kernels for decoding: the matrix-vector products of a model that generates one token at a
time, the fastest of them chosen per weight dtype by measuring them on the model's own weights.

Decoding one token multiplies every weight matrix W (out, in) by one vector (a few, for a batch), so
a step costs about the time it takes to stream the weights from memory. PyTorch offers several
kernels for that product, and which one streams fastest depends on the CPU, its vector units and
the BLAS (docs/LOG.md has the measurements):

- "linear": F.linear, as nn.Linear computes it: MKL for float32; for a single bfloat16 row
  PyTorch's own kernel with oneDNN switched off (oneDNN re-packs the whole weight on every call of
  a plain F.linear, which costs more than the product);
- "split": a float32 W stored column-major (W^T row-major) and the inner dimension cut into one
  slice per thread, as one batched product (`split_product`): MKL runs the slices in parallel where
  it runs a single matrix-vector product on one thread (1.5x on an AVX2 AMD EPYC);
- "column": F.linear on a float32 W stored column-major (W^T row-major), which MKL multiplies without
  transposing: about as fast as "linear" for one row, and 1.3-1.5x faster for the 4-16 rows of a
  server's batch on a Xeon with AMX, where MKL's small-M product on a row-major W runs far below the
  memory's speed (docs/LOG.md, 2026-12-08);
- "matvec": W as the large operand of torch.mv, or of torch.mm(W, X^T) for a few rows, with oneDNN
  on: oneDNN then reads W where it lies (no re-packing) with the CPU's own bf16 instructions
  (AVX-512 BF16 / AMX): 1.35x PyTorch's own bfloat16 kernel on a Xeon with AMX.

`optimize_for_decoding(model)` turns the nn.Linear layers of a CPU model into `DecodeLinear`s (same
parameters, state dict and pickling) that serve the calls of decoding (no gradient needed, at most
64 rows) with the kernel `choose_kernel` measured fastest for their dtype, and every other call
(training, prompts, autocast) with the plain product. `checkpoint.load` applies it to every CPU
model it returns; `plain_linears` undoes it (the training loop does, before it wraps a model for
DDP, FSDP or torch.compile). `python -m benchmarks.generation --kernels` times the kernels alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError

MAX_ROWS = 64  # calls with more rows (prompts, long batches) take the plain product

# The kernels worth measuring for each weight dtype ("split" and "column" reorder float32 weights only).
CANDIDATES: dict[torch.dtype, tuple[str, ...]] = {
    torch.float32: ("linear", "split", "matvec", "column"),
    torch.bfloat16: ("linear", "matvec"),
    torch.float16: ("linear", "matvec"),
}

MEASURE_BYTES = 256 * 2**20  # weights a measurement streams per pass: past the caches, like a decode step
MEASURE_ROUNDS = 3


# ------------------------------------------------------------------------------------------------
# The kernels: x (..., in) @ W (out, in)^T + bias -> (..., out)


def linear_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; a single bfloat16 row with oneDNN off (PyTorch's own kernel, see the module docstring)."""
    if weight.dtype == torch.bfloat16 and x.numel() == weight.shape[1]:
        with _onednn(False):
            return F.linear(x, weight, bias)
    return F.linear(x, weight, bias)


def split_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias for a column-major weight, as one batched product
    over slices of the inner dimension, one slice per thread (see the module docstring)."""
    out_features, in_features = weight.shape
    b = _slices(in_features, torch.get_num_threads())
    k = in_features // b
    xs = x.reshape(-1, b, k).transpose(0, 1)  # (b, rows, in/b)
    y = torch.bmm(xs, weight.t().view(b, k, out_features)).sum(0)  # (rows, out): b partial products, summed
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], out_features)


def matvec_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """W @ x for each row x, with W as the large operand and oneDNN on: torch.mv (addmv with a bias)
    for one row, torch.mm(W, X^T) for several (see the module docstring)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    with _onednn(True):  # (the decode loop turns oneDNN off for bfloat16 steps)
        if rows == 1:
            v = x.reshape(in_features)
            y = torch.mv(weight, v) if bias is None else torch.addmv(bias, weight, v)  # (out,)
        else:
            y = torch.mm(weight, x.reshape(rows, in_features).t()).t()  # (rows, out)
            if bias is not None:
                y = y + bias
    return y.reshape(*x.shape[:-1], out_features)


def _column_major(weight: torch.Tensor) -> bool:
    return weight.stride() == (1, weight.shape[0])


def _split_or_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The "split" kernel, which needs a column-major weight (a weight replaced since is served plainly)."""
    if _column_major(weight) and weight.dtype == torch.float32:
        return split_product(x, weight, bias)
    return linear_product(x, weight, bias)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_product, "split": _split_or_linear, "matvec": matvec_product, "column": linear_product,
}
COLUMN_MAJOR = ("split", "column")  # the kernels that read a column-major float32 weight


@functools.cache
def _slices(in_features: int, threads: int) -> int:
    """How many slices to cut in_features into: its smallest divisor that gives every thread one,
    up to 4 per thread; 1 (a single product) when there is none."""
    threads = max(1, threads)
    return next((d for d in range(threads, 4 * threads + 1) if in_features % d == 0), 1)


class _onednn:
    """oneDNN on or off for the products inside (a process-wide switch, put back afterwards). A class,
    not a generator: it runs around every product of a decode step (~1 us instead of ~3)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> None:  # torch.backends.mkldnn.enabled's own getter and setter, without its wrapper
        self.before = torch._C._get_mkldnn_enabled()
        if self.before != self.enabled:
            torch._C._set_mkldnn_enabled(self.enabled)

    def __exit__(self, *exc) -> None:
        if self.before != self.enabled:
            torch._C._set_mkldnn_enabled(self.before)


def matrix_vector_kernels(weight: torch.Tensor, positions: int):
    """Fast matmul kernels for a forward pass over `positions` token positions in all (B * T), for a
    model whose layers are plain nn.Linear: oneDNN off for a single bfloat16 position (see
    `linear_product`); with more positions oneDNN is much faster again (7x at 32). A `DecodeLinear`
    picks its own kernel whatever this says."""
    if positions == 1 and weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
        return _onednn(False)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# The layer


class DecodeLinear(nn.Linear):
    """nn.Linear whose decoding calls (CPU, no gradient needed, at most MAX_ROWS rows, no autocast, input
    in the weight's dtype) go to `KERNELS[self.kernel]`; every other call is the plain product."""

    kernel: str = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type == "cpu" and x.dtype == w.dtype and x.numel() <= MAX_ROWS * w.shape[1]
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return KERNELS[self.kernel](x, w, self.bias)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


def optimize_for_decoding(model: nn.Module, kernel: str | None = None, rows: int = 1) -> nn.Module:
    """Serve the decoding calls of `model`'s CPU nn.Linear layers with the fastest kernel for their
    weight dtype, in place; returns `model`.

    kernel: None measures the candidates on the model's weights (`choose_kernel`, cached per process),
    for decoding one row at a time, or batches of up to `rows` rows as well (a server);
    "linear", "split", "matvec" or "column" forces one (a dtype it does not serve keeps "linear").
    Parameters stay the same objects with the same values (ties kept); "split" and "column" store
    float32 weights column-major (the same (out, in) tensors with strides (1, out)), the others
    row-major. Results agree with the plain model to rounding (sums in another order). Layers on a
    GPU, of another class (LoRALinear) or of another dtype are left alone.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ScratchLLMError(f"decode kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    groups: dict[torch.dtype, list[nn.Linear]] = {}
    for module in model.modules():
        if type(module) in (nn.Linear, DecodeLinear) and _plain_cpu_tensor(module.weight):
            if module.weight.dtype in CANDIDATES:
                groups.setdefault(module.weight.dtype, []).append(module)
    for dtype, modules in groups.items():
        choice = kernel if kernel is not None else choose_kernel(_unique([m.weight for m in modules]), rows)
        if choice not in CANDIDATES[dtype]:
            choice = "linear"
        for module in modules:
            _set_layout(module.weight, column_major=choice in COLUMN_MAJOR)
            module.__class__ = DecodeLinear
            module.kernel = choice
    return model


def plain_linears(model: nn.Module) -> nn.Module:
    """Undo `optimize_for_decoding`: plain nn.Linear layers with row-major weights (what DDP, FSDP and
    torch.compile expect of a model about to train). In place; returns `model`."""
    for module in model.modules():
        if type(module) is DecodeLinear:
            _set_layout(module.weight, column_major=False)
            module.__class__ = nn.Linear
            module.__dict__.pop("kernel", None)
    return model


def _plain_cpu_tensor(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and type(t.data) is torch.Tensor and t.dim() == 2


def _unique(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]


def _set_layout(weight: torch.Tensor, column_major: bool) -> None:
    """Store `weight` column-major or row-major in place (same Parameter, same values; a weight shared
    by two layers is converted once)."""
    if column_major and not _column_major(weight):
        weight.data = weight.data.t().contiguous().t()  # same (out, in) tensor, strides (1, out)
    elif not column_major and not weight.is_contiguous():
        weight.data = weight.data.contiguous()


# ------------------------------------------------------------------------------------------------
# Choosing by measurement


# (dtype, threads, sampled shapes) -> (chosen kernel, {kernel: seconds per pass}, measured on one thread)
_CHOSEN: dict[tuple, tuple[str, dict[str, float], bool]] = {}


def choose_kernel(weights: Sequence[torch.Tensor], rows: int = 1) -> str:
    """The fastest decode kernel for `weights` (one dtype, in the order a decode step reads them),
    measured once per process for each thread count, set of shapes and `rows`.

    Each candidate of CANDIDATES[dtype] multiplies one random vector by each weight, over the first
    MEASURE_BYTES of them (a decode step streams them from memory, so the measurement does too);
    rounds alternate the candidates and each keeps its fastest pass (the one other processes
    disturbed least). "linear", the plain product, stays unless another is at least 3% faster. On a
    busy machine (load average at least its CPU count) threads wait for each other for whole time
    slices, which no number of rounds averages out: the passes then run on one thread and are timed
    in that thread's CPU time.

    rows > 1 (a server's batch of up to that many rows): each candidate is also timed on `rows` rows
    (the one-row times are the one-row choice's, measured once), and ranked by its time per token at
    one row plus its time per token at `rows` rows, since a server decodes both: MKL's float32
    product of a few rows by a row-major weight runs well below the memory's speed on some CPUs,
    where a column-major one does not (the "column" kernel)."""
    dtype = weights[0].dtype
    sample = _sample(weights)
    threads = torch.get_num_threads()
    shapes = tuple(tuple(w.shape) for w in sample)
    key = (dtype, threads, rows, shapes)
    if key not in _CHOSEN:
        if rows > 1:  # the one-row times, and whether they were taken on a busy machine (the same clock here)
            choose_kernel(weights)
            _, one_row, busy = _CHOSEN[dtype, threads, 1, shapes]
        else:
            busy = machine_busy()
        if busy:
            torch.set_num_threads(1)
        try:
            times = measure_kernels(sample, CANDIDATES[dtype], rows=rows,
                                    clock=time.thread_time if busy else time.perf_counter)
        finally:
            torch.set_num_threads(threads)
        if rows > 1:
            times = {name: one_row[name] + times[name] / rows for name in times}
        best = min(times, key=times.__getitem__)
        _CHOSEN[key] = ("linear" if times["linear"] <= 1.03 * times[best] else best, times, busy)
    return _CHOSEN[key][0]


def machine_busy() -> bool:
    """Whether the 1-minute load average reaches the CPUs this process may run on."""
    try:
        return os.getloadavg()[0] >= len(os.sched_getaffinity(0))
    except (OSError, AttributeError):  # not Unix: nothing known
        return False


def kernel_choices() -> list[dict]:
    """What `choose_kernel` measured in this process: per dtype, thread count and rows, the bytes of
    one pass, each candidate's time (with rows > 1: its time per token at one row plus at `rows`),
    whether the machine was busy (then timed on one thread) and the choice (benchmarks/generation.py
    prints them)."""
    return [{"dtype": str(key[0]).removeprefix("torch."), "threads": key[1], "rows": key[2],
             "bytes": sum(torch.Size(s).numel() * key[0].itemsize for s in key[3]),
             "seconds": dict(times), "busy": busy, "chosen": chosen} for key, (chosen, times, busy) in _CHOSEN.items()]


def _sample(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The first weights, up to MEASURE_BYTES (at least one)."""
    out, total = [], 0
    for w in weights:
        out.append(w)
        total += w.numel() * w.element_size()
        if total >= MEASURE_BYTES:
            break
    return out


def measure_kernels(weights: Sequence[torch.Tensor], names: Sequence[str], rounds: int = MEASURE_ROUNDS,
                    rows: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds of the fastest of `rounds` passes of each kernel in `names` over `weights` (x of `rows`
    rows times each weight), kernels alternating within each round. "split" and "column" get
    column-major copies of the weights and the others row-major ones (copies only where a weight is
    stored otherwise)."""
    g = torch.Generator().manual_seed(0)  # not the global RNG: measuring must not change a run's random numbers
    xs = [torch.randn(rows, w.shape[1], generator=g).to(w.dtype) for w in weights]
    layouts = {column: [_laid_out(w, column) for w in weights] for column in {name in COLUMN_MAJOR for name in names}}
    laid_out = {name: layouts[name in COLUMN_MAJOR] for name in names}
    return time_passes({name: functools.partial(_one_pass, KERNELS[name], xs, laid_out[name]) for name in names},
                       rounds, clock)


def time_passes(passes: dict, rounds: int = MEASURE_ROUNDS, clock: Callable[[], float] = time.perf_counter
                ) -> dict:
    """Seconds (by `clock`) of the fastest of `rounds` calls of each function (after one warm-up call
    each), the functions alternating within each round; run under inference mode."""
    best = dict.fromkeys(passes, float("inf"))
    with torch.inference_mode():
        for run in passes.values():
            run()
        for _ in range(rounds):
            for name, run in passes.items():
                start = clock()
                run()
                best[name] = min(best[name], clock() - start)
    return best


def _laid_out(weight: torch.Tensor, column_major: bool) -> torch.Tensor:
    w = weight.detach()
    if column_major:
        return w if _column_major(w) else w.t().contiguous().t()
    return w if w.is_contiguous() else w.contiguous()


def _one_pass(kernel: Callable[..., torch.Tensor], xs: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    for x, w in zip(xs, weights):
        kernel(x, w)
