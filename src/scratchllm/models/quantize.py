"""Weight-only int8 quantization for decoding on a CPU: each Linear layer's weight as int8 numbers
with one float scale per output channel, the idea of llama.cpp's q8_0 (which keeps one scale per
32 weights and rounds the layer's input to 8 bits as well).

    W (out, in) -> q = round(W / s), s = max|W_row| / 127 (out,), q in [-127, 127]
    y = s * (x @ q^T) + b

Decoding streams every weight once per token, so int8 weights read a quarter of float32's bytes
and half of bfloat16's. The product is PyTorch's int8 kernel (`torch.ops.aten._weight_int8pack_mm`:
int8 weights, vectorised for a bfloat16 input), which takes x in bfloat16 and returns y in
bfloat16: `Int8Linear` rounds its input to bfloat16 where that kernel measures faster than in
float32 (`choose_activation`), and its output is rounded to bfloat16 either way, as in a bfloat16
model. Norms, attention, embeddings and the residual stream keep the model's dtype.

`quantize_int8(model)` swaps a GPT's Linear layers (the LM head included; a tied embedding keeps
its float table for the lookup) for `Int8Linear`s in place; `checkpoint.load(..., quantize="int8")`
and the `--quantize int8` flag of generate, chat, serve and respond call it. A quantized model is for
decoding: it cannot be written back as a model directory (`quantization` tells the writers).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.models.decode_kernels import DecodeLinear, time_passes

QUANTIZATIONS = ("int8",)
K_MULTIPLE = 16  # the int8 kernel reads the inner dimension 16 at a time (shorter rows crash it): pad to this
PREFER_BF16 = 1.2  # round inputs to bfloat16 only when that makes the product at least this much faster


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and one float32 scale per output channel (see the module
    docstring). Buffers: `qweight` (out, in rounded up to K_MULTIPLE) int8, the padding zero;
    `scale` (out,) float32. `bias` is the float Linear's own. `act` is the dtype its input is
    rounded to for the product (bfloat16 or float32). `weight` gives the dequantized matrix."""

    def __init__(self, linear: nn.Linear, act: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1) / 127  # (out,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
        pad = -self.in_features % K_MULTIPLE
        self.register_buffer("qweight", F.pad(q, (0, pad)) if pad else q)  # (out, in + pad)
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # (out,) or None, in the model's dtype
        self.dtype = linear.weight.dtype  # what `weight` and the output are in
        self.act = act

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in) in the layer's dtype: what the LM loss reads (`GPT.head_loss`)."""
        w = self.qweight[:, : self.in_features].float() * self.scale.float()[:, None]
        return w.to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.act)  # (rows, in)
        pad = self.qweight.shape[1] - self.in_features
        x2 = F.pad(x2, (0, pad)) if pad else x2.contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale.to(self.act))  # (rows, out)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = str(self.act).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, act={act}"


def quantization(model: nn.Module) -> str | None:
    """"int8" for a model `quantize_int8` changed, else None."""
    return "int8" if any(isinstance(m, Int8Linear) for m in model.modules()) else None


def check_quantize(quantize: str | None) -> None:
    """A one-line error for a quantization that is not one of QUANTIZATIONS (None: none)."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ScratchLLMError(f"quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)} or none")


def quantize_int8(model: nn.Module, what: str = "the model") -> nn.Module:
    """Swap every Linear layer of `model` (a CPU model) for an `Int8Linear`, in place; returns it.

    A layer that is not a plain Linear (a LoRA adapter not merged yet) or a model off the CPU is a
    one-line error naming `what` and why, before anything changes."""
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name, child in linears:
        if type(child) not in (nn.Linear, DecodeLinear):
            raise ScratchLLMError(f"quantize int8: {what} has a {type(child).__name__} at {name!r} (unmerged LoRA "
                                  "adapters); merge them first (load with merge=True, or scratchllm merge-lora)")
        device = child.weight.device
        if device.type != "cpu":
            raise ScratchLLMError(f"quantize int8: {what} is on {device}; int8 decoding runs on the CPU (on a GPU "
                                  "use dtype bfloat16)")
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise ScratchLLMError(f"quantize int8: this PyTorch ({torch.__version__}) has no int8 matrix kernel "
                              "(torch.ops.aten._weight_int8pack_mm); install torch >= 2.4")
    layers = {id(child): Int8Linear(child) for _, _, child in linears}
    act = choose_activation([layer.qweight for layer in layers.values()])
    for parent, name, child in linears:
        layer = layers[id(child)]
        layer.act = act
        setattr(parent, name, layer)
    return model


@functools.cache
def _activation_choice(threads: int, shapes: tuple[tuple[int, int], ...]) -> torch.dtype:
    g = torch.Generator().manual_seed(0)
    weights = [torch.randint(-127, 128, shape, dtype=torch.int8, generator=g) for shape in shapes]
    xs = {dtype: [torch.randn(1, s[1], generator=g).to(dtype) for s in shapes] for dtype in (torch.float32, torch.bfloat16)}
    scales = {dtype: [torch.ones(s[0], dtype=dtype) for s in shapes] for dtype in xs}

    def one_pass(dtype: torch.dtype) -> None:
        for x, w, s in zip(xs[dtype], weights, scales[dtype]):
            torch.ops.aten._weight_int8pack_mm(x, w, s)

    times = time_passes({dtype: functools.partial(one_pass, dtype) for dtype in xs})
    return torch.bfloat16 if times[torch.float32] >= PREFER_BF16 * times[torch.bfloat16] else torch.float32


def choose_activation(qweights: list[torch.Tensor]) -> torch.dtype:
    """The dtype Int8Linear rounds its input to: bfloat16 where the int8 kernel runs at least
    PREFER_BF16 times faster with it (it is vectorised for bfloat16 on AVX-512: ~4x here), else
    float32 (no rounding). Measured once per process and thread count, on int8 matrices of the
    model's distinct shapes (one of each, the largest first, at most 8)."""
    shapes = sorted({tuple(w.shape) for w in qweights}, key=lambda s: -s[0] * s[1])[:8]
    return _activation_choice(torch.get_num_threads(), tuple(shapes))
