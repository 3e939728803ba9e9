"""The language-model loss: the linear head and cross-entropy, by one of three paths.

`lm_loss(h, weight, targets, impl=...)` is the entry point (`GPT.loss` calls it):

- "chunked" (the default on a CPU): head and cross-entropy fused and computed 1,024 rows at a time,
  so the (B, T, V) logits never exist -- the largest temporary of a training step, and the one that
  costs most in page faults and memory traffic on a CPU.
- "fused" (the default on GPUs): the same fusion written for a GPU: the whole micro-batch in one
  chunk while its logits take at most an eighth of the GPU's memory (more chunks beyond that, so
  memory alone decides when to chunk), one softmax kernel, and no value read back to the host.
- "logits": the textbook path, as nanoGPT computes it: padded logits, then `F.cross_entropy`.

All three run the head on the weight padded with zero rows to a multiple of 64 (50,257 -> 50,304, as
nanoGPT pads its vocabulary), whose logits are -inf: matrix products on the padded shape run faster
(BLAS ~12% on a CPU; on GPUs the unpadded row length of 50,257 is misaligned for tensor cores), and
the padding adds nothing to the softmax and gets no gradient. The padding is done per call (one copy
of the head, ~0.1% of a GPT-2 step's memory traffic), so parameters, optimizer state and saved
checkpoints keep the real vocabulary's shape and load anywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError

LOSS_IMPLS = ("auto", "chunked", "fused", "logits")


IGNORE_INDEX = -100  # targets with this id carry no loss (PyTorch's cross-entropy default)

class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of softmax(h @ W^T) computed `chunk` rows at a time.

    The (N, V) logits tensor is the largest temporary of a training step (N = B*T rows of V = 50,257
    floats). Here each chunk's logits live only while its loss and its gradients with respect to h
    and W are computed, in the forward pass; backward just scales those saved gradients.

    The head's matmuls run on W padded with zero rows to a multiple of `multiple` (50,257 -> 50,304,
    as nanoGPT pads its vocabulary): BLAS is ~12% faster on the padded shape, and the padded columns
    get a logit of -inf, so they add nothing to the softmax and their gradient rows are dropped.

    With `softcap` c the logits are c * tanh(z / c) of the head's z (Gemma 2; the modded-nanogpt
    speedrun), and the gradient with respect to z gains the factor d/dz = 1 - tanh(z / c)^2.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, chunk: int, multiple: int, softcap: float | None):
        N, V = h.shape[0], weight.shape[0]
        valid = targets != ignore_index
        n_valid = int(valid.sum())
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # Under autocast the matmuls run in the autocast dtype; softmax and the loss stay in float32.
        amp = torch.is_autocast_enabled(h.device.type)
        mm_dtype = torch.get_autocast_dtype(h.device.type) if amp else h.dtype
        padded = -(-V // multiple) * multiple
        if padded != V:
            w = weight.new_zeros((padded, weight.shape[1]), dtype=mm_dtype)  # (V_pad, C)
            w[:V] = weight
        else:
            w = weight.to(mm_dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # One float32 buffer serves every chunk: fresh memory is slow on CPU (page faults cost as much
        # as the softmax), so the logits, log-probabilities and softmax gradient all live in it.
        buffer = torch.empty((min(chunk, N), padded), dtype=torch.float32, device=h.device)
        low = torch.empty_like(buffer, dtype=mm_dtype) if mm_dtype != torch.float32 else None
        slope = torch.empty_like(buffer) if (softcap is not None and need_grad) else None  # 1 - tanh^2 per logit
        for start in range(0, N, chunk):
            hc = h[start : start + chunk].to(mm_dtype)  # (n, C)
            tc = targets[start : start + chunk]
            vc = valid[start : start + chunk]
            logp = buffer[: len(tc)]  # (n, V_pad)
            if low is None:
                torch.mm(hc, w.t(), out=logp)
            else:
                logp.copy_(torch.mm(hc, w.t(), out=low[: len(tc)]))
            if softcap is not None:
                torch.tanh(logp.div_(softcap), out=logp)  # tanh(z / c), in place
                if slope is not None:
                    torch.mul(logp, logp, out=slope[: len(tc)]).neg_().add_(1.0)  # d tanh = 1 - tanh^2
                logp.mul_(softcap)  # the capped logits c * tanh(z / c)
            logp[:, V:] = float("-inf")
            if logp.device.type == "cpu":  # in place: the CPU kernel reads each row before writing it
                torch._log_softmax(logp, -1, False, out=logp)
            else:
                logp = torch.log_softmax(logp, dim=-1)
            safe_t = tc.clamp(min=0)
            total -= (logp.gather(1, safe_t[:, None]).squeeze(1) * vc).sum()
            if need_grad:
                # d loss / d logits = softmax - one_hot(target), zero for ignored rows.
                probs = logp.exp_()
                probs[torch.arange(len(tc), device=h.device), safe_t] -= 1.0
                probs *= vc[:, None]
                if slope is not None:  # chain rule through the cap: d loss / d z
                    probs *= slope[: len(tc)]
                g = probs if low is None else low[: len(tc)].copy_(probs)
                if grad_h is not None:
                    grad_h[start : start + chunk] = (g @ w).to(h.dtype)
                if grad_w is not None and low is None:
                    grad_w.addmm_(g.t(), hc)  # accumulates without a (V_pad, C) temporary
                elif grad_w is not None:
                    grad_w += g.t() @ hc
        scale = 1.0 / max(n_valid, 1)
        if need_grad:
            ctx.save_for_backward(
                grad_h.mul_(scale) if grad_h is not None else None,
                grad_w[:V].mul_(scale).to(weight.dtype) if grad_w is not None else None,
            )
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_out.device.type != "cpu" or grad_out.item() != 1.0:  # the usual loss.backward() skips this
            grad_h = grad_h * grad_out if grad_h is not None else None
            grad_w = grad_w * grad_out if grad_w is not None else None
        return (
            grad_h,
            grad_w,
            None,
            None,
            None,
            None,
            None,
        )


def chunked_cross_entropy(
    h, weight, targets, ignore_index: int = -100, chunk: int = 1024, multiple: int = 64, softcap: float | None = None
) -> torch.Tensor:
    """Mean cross-entropy of logits h (N, C) @ weight (V, C)^T (soft-capped at `softcap` when set)
    against targets (N,)."""
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk, multiple, softcap)


def padded_rows(vocab_size: int, multiple: int = 64) -> int:
    """vocab_size rounded up to a multiple of `multiple` (50,257 -> 50,304)."""
    return -(-vocab_size // multiple) * multiple


def padded_head(weight: torch.Tensor, dtype: torch.dtype, multiple: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The head weight (V, C) cast to `dtype` and padded with zero rows to (V_pad, C), and the bias
    (V_pad,) that gives the padded logits -inf (0 for the real ones). Differentiable in the weight."""
    V = weight.shape[0]
    padded = padded_rows(V, multiple)
    w = F.pad(weight.to(dtype), (0, 0, 0, padded - V))  # (V_pad, C)
    bias = torch.zeros(padded, dtype=dtype, device=weight.device)
    bias[V:] = float("-inf")
    return w, bias


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of softmax(h @ W^T) with its gradients computed in the forward pass, for GPUs.

    Per chunk of rows (one chunk unless memory says otherwise, see `lm_loss`): logits (n, V_pad) in
    the matmul dtype, with the padding at -inf through the product's bias; their softmax in float32
    (one kernel); the loss from the target's probability; and the gradient of the logits,
    softmax - one_hot, cast back to the matmul dtype for the two gradient products. The 1/n_valid
    scale and the zero rows of ignored targets are applied to the small (n, C) factors instead of
    the (n, V_pad) gradient. That is three passes over the logits-sized tensors where
    F.cross_entropy under autocast makes about nine (cast, log-softmax, the backward's zero fill,
    scatter, softmax backward, cast back); and no value is read back to the host, which would stall
    the queue of kernels the CPU has launched ahead.

    A target whose probability underflows float32 (a loss above 87 nats for that token) counts as
    87.3 nats; its gradient is exact.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, chunk: int, multiple: int):
        N, V = h.shape[0], weight.shape[0]
        amp = torch.is_autocast_enabled(h.device.type)
        mm_dtype = torch.get_autocast_dtype(h.device.type) if amp else h.dtype
        w, bias = padded_head(weight.detach(), mm_dtype, multiple)  # (V_pad, C), (V_pad,)
        valid = targets != ignore_index  # (N,)
        row_scale = valid.to(torch.float32) / valid.sum().clamp(min=1)  # (N,): 1 / n_valid, or 0 if ignored
        safe_t = torch.where(valid, targets, 0)[:, None]  # (N, 1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, N, chunk):
            hc = h[start : start + chunk].to(mm_dtype)  # (n, C)
            tc, sc = safe_t[start : start + chunk], row_scale[start : start + chunk, None]  # (n, 1), (n, 1)
            probs = torch.softmax(torch.addmm(bias, hc, w.t()), dim=-1, dtype=torch.float32)  # (n, V_pad)
            p_target = probs.gather(1, tc)  # (n, 1)
            total = total - (p_target.clamp(min=torch.finfo(torch.float32).tiny).log() * sc).sum()
            if not (need_h or need_w):
                continue
            g = probs.scatter_(1, tc, p_target - 1.0).to(mm_dtype)  # (n, V_pad): d loss_i / d logits_i
            if need_h:
                grad_h[start : start + chunk] = (g @ w).float().mul_(sc).to(h.dtype)  # (n, C)
            if need_w:
                gw = g.t() @ (hc.float() * sc).to(mm_dtype)  # (V_pad, C)
                grad_w = gw.float() if grad_w is None else grad_w.add_(gw)
        if need_h or need_w:
            ctx.save_for_backward(grad_h, grad_w[:V].to(weight.dtype) if grad_w is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (
            grad_h * grad_out if grad_h is not None else None,
            grad_w * grad_out if grad_w is not None else None,
            None,
            None,
            None,
            None,
        )


def fused_cross_entropy(
    h, weight, targets, ignore_index: int = -100, chunk: int | None = None, multiple: int = 64
) -> torch.Tensor:
    """Mean cross-entropy of logits h (N, C) @ weight (V, C)^T against targets (N,), the GPU way
    (see `_FusedLinearCrossEntropy`); chunk: rows per chunk (None: all)."""
    return _FusedLinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk or max(1, h.shape[0]), multiple)


def logits_cross_entropy(
    h, weight, targets, ignore_index: int = -100, multiple: int = 64, softcap: float | None = None
) -> torch.Tensor:
    """Mean cross-entropy through the full padded logits (N, V_pad) and F.cross_entropy: nanoGPT's
    path, which torch.compile fuses on its own. (The sum over valid rows / their count, not
    reduction="mean", so that a batch with every target ignored gives 0 as the other paths do.)
    With `softcap` c the logits are c * tanh(z / c) and the head is not padded (a capped -inf
    would be -c, a real logit)."""
    amp = torch.is_autocast_enabled(h.device.type)
    dtype = torch.get_autocast_dtype(h.device.type) if amp else h.dtype
    if softcap is None:
        w, bias = padded_head(weight, dtype, multiple)
        logits = F.linear(h, w, bias)  # (N, V_pad), -inf in the padded columns
    else:
        z = F.linear(h.to(dtype), weight.to(dtype))  # (N, V)
        logits = softcap * torch.tanh(z / softcap)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


def fused_chunk_rows(device: torch.device, vocab_size: int, multiple: int = 64) -> int:
    """Rows of logits the fused loss takes per chunk on `device`: as many as fit in an eighth of a
    CUDA device's memory at 8 bytes per logit (the float32 softmax, the matmul-dtype logits and
    their gradient); 1,024 elsewhere."""
    if device.type != "cuda":
        return 1024
    memory = torch.cuda.get_device_properties(device).total_memory
    return max(1024, memory // 8 // (8 * padded_rows(vocab_size, multiple)))


def lm_loss(h, weight, targets, ignore_index: int = -100, impl: str = "auto", softcap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of softmax(h (N, C) @ weight (V, C)^T) against targets (N,), ignoring
    targets equal to ignore_index, by the path `impl` names: "chunked", "fused", "logits", or
    "auto" (chunked on a CPU, fused elsewhere). Same value and gradients on every path. With a
    logit `softcap` (see `chunked_cross_entropy`), "auto" is chunked everywhere: the fused path
    does not cap."""
    if impl == "auto":
        impl = "chunked" if h.device.type == "cpu" or softcap is not None else "fused"
    if impl == "chunked":
        return chunked_cross_entropy(h, weight, targets, ignore_index, softcap=softcap)
    if impl == "fused":
        if softcap is not None:
            raise ScratchLLMError("loss impl 'fused' does not soft-cap logits; use 'chunked' or 'logits'")
        return fused_cross_entropy(h, weight, targets, ignore_index, fused_chunk_rows(h.device, weight.shape[0]))
    if impl == "logits":
        return logits_cross_entropy(h, weight, targets, ignore_index, softcap=softcap)
    raise ScratchLLMError(f"loss impl {impl!r}: expected one of {', '.join(LOSS_IMPLS)}")
