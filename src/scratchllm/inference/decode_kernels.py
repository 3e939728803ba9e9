"""CPU kernels for decoding: faster matrix-vector products while a model generates one token at a time.

Decoding one token multiplies every weight matrix by one vector, so its speed is how fast the
weights stream from memory. `optimize_for_decoding` gives float32 CPU weights a column-major layout
served by `split_product` (one slice of the inner dimension per thread); `matrix_vector_kernels`
switches oneDNN off for single-position bfloat16 steps. The decode loop (generation.py) and the CLI
verbs use them; `python -m benchmarks.generation --kernels` measures the choices.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from scratchllm.models.gpt import GPT


def matrix_vector_kernels(weight: torch.Tensor, positions: int):
    """Fast matmul kernels for a forward pass over `positions` token positions in all (B * T).

    With one position (one sequence, one new token) every matmul is a matrix-vector product. On
    CPU, oneDNN (PyTorch's default for bfloat16 matmuls) re-packs the whole weight matrix on every
    call, which then costs more than the product itself; PyTorch's own bfloat16 kernel just streams
    the weights (2x faster here: see docs/LOG.md). With more positions oneDNN is much faster again
    (7x at 32), so the switch, process-wide while the step runs, is for single positions only.
    """
    if positions == 1 and weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
        return _onednn_disabled()
    return contextlib.nullcontext()


def optimize_for_decoding(model: GPT) -> GPT:
    """Give the float32 weight matrices of a CPU model a faster layout for decoding, in place.

    Decoding one token multiplies each weight matrix W (out, in) by one vector x, which streams W
    from memory. PyTorch's default for nn.Linear's row-major W (MKL) does that on one thread at ~13
    GB/s here, oneDNN's packed weights on two threads at 20-30 GB/s. This layout reaches 25-47 GB/s
    over GPT-2's shapes (`python -m benchmarks.generation --kernels`):

    - W is stored column-major, i.e. W^T (in, out) row-major, so that x @ W^T reads W^T row after
      row, adding x_k * row_k into the output: one plain stream through memory;
    - the inner dimension is cut into one slice per thread: W^T viewed as (b, in/b, out) times x
      viewed as (b, 1, in/b) is one batched product, whose b partial outputs are then summed.
      PyTorch runs the slices of a batched product in parallel (MKL), where it would run a single
      such product on one thread.

    Each Linear becomes a `_DecodeLinear` (an nn.Linear subclass: same parameters, state dict and
    pickling) that takes this path for calls of up to 64 rows that need no gradient, and the
    plain product otherwise. The view costs no memory; values, shapes, parameter objects and saved
    checkpoints stay the same, and results agree with the plain model to float32 rounding (the
    sums run in another order). Meant for models loaded for inference (`generate`, `chat` and
    `serve` call it). bfloat16 weights are left alone (PyTorch's own bfloat16 kernel on row-major
    weights is faster, see `matrix_vector_kernels`), and so are GPU models.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if w.dtype != torch.float32 or w.device.type != "cpu":
                continue
            if w.is_contiguous():  # (a weight shared by two Linears is converted once)
                w.data = w.data.t().contiguous().t()  # same (out, in) tensor, strides (1, out)
            module.__class__ = _DecodeLinear
    return model


class _DecodeLinear(torch.nn.Linear):
    """nn.Linear that serves calls of a few rows needing no gradient from a column-major float32
    CPU weight with `split_product` (see `optimize_for_decoding`); every other call (training,
    long inputs, autocast, another layout or dtype) is the plain product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (w.stride() == (1, w.shape[0]) and x.dtype == w.dtype == torch.float32 and x.device.type == "cpu"
                and x.numel() <= 64 * w.shape[1] and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return split_product(x, w, self.bias)
        return torch.nn.functional.linear(x, w, self.bias)


def split_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias for a column-major weight, as one batched product
    over slices of the inner dimension, one slice per thread (see `optimize_for_decoding`)."""
    out_features, in_features = weight.shape
    b = _slices(in_features, torch.get_num_threads())
    k = in_features // b
    xs = x.reshape(-1, b, k).transpose(0, 1)  # (b, rows, in/b)
    y = torch.bmm(xs, weight.t().view(b, k, out_features)).sum(0)  # (rows, out): b partial products, summed
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], out_features)


@functools.cache
def _slices(in_features: int, threads: int) -> int:
    """How many slices to cut in_features into: its smallest divisor that gives every thread one,
    up to 4 per thread; 1 (a single product) when there is none."""
    threads = max(1, threads)
    return next((d for d in range(threads, 4 * threads + 1) if in_features % d == 0), 1)


@contextlib.contextmanager
def _onednn_disabled():
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
