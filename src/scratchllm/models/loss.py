"""The language-model loss without the (B, T, V) logits: a linear head and cross-entropy fused and
computed in chunks of rows (the largest temporary of a training step never exists).
"""

from __future__ import annotations

import torch

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

