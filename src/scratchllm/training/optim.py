"""The optimizer and its schedule: AdamW (Loshchilov & Hutter 2019) over decayed and undecayed
parameter groups, or Muon (Jordan et al. 2024) for the matrices inside the transformer blocks with
AdamW for the rest; and the learning rate of a linear warmup then cosine decay (GPT-3, Brown et al.
2020, appendix B).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.training.config import TrainConfig

def learning_rate(step: float, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to cfg.lr over warmup_steps, then a
    cosine decay to min_lr at max_steps (Loshchilov & Hutter 2017 without restarts; GPT-3 app. B).

    With schedule="time" the loop passes step = max_steps * elapsed / max_time instead, so that a
    run with a wall-clock budget decays fully whatever its speed (warmup is then the fraction
    warmup_steps / max_steps of the budget). That run depends on timing, so it is not reproducible.
    """
    floor = cfg.lr if cfg.min_lr is None else cfg.min_lr  # None: no decay (the book's constant rate)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return floor
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) names of the trainable parameters.

    Weight decay pulls 2-D weights (linear layers, embeddings) towards zero; biases and LayerNorm
    gains are 1-D and are left alone, as in GPT-2/3 and nanoGPT. Frozen parameters are in neither.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight is listed once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(name)
    return decay, no_decay


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """True for the 2-D weights inside the transformer blocks (attention and MLP matrices): what Muon
    updates. Embeddings, the LM head, norms and biases are not hidden matrices and stay with AdamW."""
    return p.dim() == 2 and (name.startswith("blocks.") or ".blocks." in name)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None,
                   amp_dtype: torch.dtype | None = None) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer names over the trainable parameters, weight decay on the 2-D ones only.

    "adamw": torch's AdamW. "muon": `Muon` for the hidden matrices (`is_hidden_matrix`) at
    cfg.muon_lr, AdamW for the rest at cfg.lr. The loop writes the scheduled AdamW lr into every
    group as lr * group["lr_scale"], so Muon's lr follows the same warmup and decay. Weight decay
    shrinks every decayed matrix by the same 1 - lr * weight_decay per step whichever optimizer
    updates it (Muon's group gets weight_decay / lr_scale). `amp_dtype`, the run's autocast dtype,
    is the one Muon orthogonalises in (bf16 under bf16 autocast, as Jordan et al. do; else float32).
    """
    params = dict(model.named_parameters())
    decay, no_decay = weight_decay_groups(model)
    if not decay and not no_decay:
        raise ScratchLLMError("no trainable parameters: every parameter has requires_grad=False")
    if fused is None:
        fused = cfg.fused_adamw and device.type in ("cpu", "cuda", "mps")
    if cfg.optimizer == "muon":
        hidden = [n for n in decay if is_hidden_matrix(n, params[n])]
        decay = [n for n in decay if n not in set(hidden)]
        scale = cfg.muon_lr / cfg.lr
        groups = [
            {"params": [params[n] for n in hidden], "muon": True, "lr": cfg.muon_lr, "lr_scale": scale,
             "weight_decay": cfg.weight_decay / scale},
            {"params": [params[n] for n in decay], "muon": False, "weight_decay": cfg.weight_decay},
            {"params": [params[n] for n in no_decay], "muon": False, "weight_decay": 0.0},
        ]
        return Muon([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.muon_momentum,
                    betas=(cfg.beta1, cfg.beta2), fused=bool(fused), ns_dtype=amp_dtype or torch.float32)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)


# Coefficients of the quintic Newton-Schulz iteration of Muon (Jordan et al. 2024): chosen so that
# five steps push every singular value of a matrix of Frobenius norm <= 1 into about [0.7, 1.2].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """About U V^T of g = U S V^T (the nearest semi-orthogonal matrix) for g (m, n), computed in
    `dtype` (float32, or bf16: the iteration only needs singular values near 1, which bf16's 8-bit
    mantissa gives; Jordan et al. run it in bf16), returned in float32.

    Each step maps X to a X + b (X X^T) X + c (X X^T)^2 X, an odd polynomial of X that acts on every
    singular value s as p(s) = a s + b s^3 + c s^5 and leaves the singular vectors alone; five steps
    of this p take any s in (0, 1] close to 1. X X^T is (m, m) with m the smaller side (a tall g is
    transposed first), so a step costs 2 m^2 n + m^3 multiply-adds twice over."""
    a, b, c = NEWTON_SCHULZ
    x = g.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.t()  # (m, n) with m <= n
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside p's basin
    for _ in range(steps):
        gram = x @ x.t()  # (m, m)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X: (m, n)
    return (x.t() if tall else x).float()


class Muon(torch.optim.Optimizer):
    """Muon ("MomentUm Orthogonalized by Newton-schulz", Jordan et al. 2024, the optimizer of the
    modded-nanogpt speedrun) for groups with "muon": True, AdamW for the other groups.

    A Muon step for a weight W (out, in) with gradient G: the momentum buffer M <- beta M + (1 - beta) G;
    the update U = G + beta (M - G) with Nesterov momentum (M without); W <- W (1 - lr wd) - lr
    sqrt(max(1, out / in)) orthogonalize(U), in `ns_dtype`. Orthogonalising makes every direction of the update the
    same size, which for the hidden matrices of a transformer learns faster per step than Adam's
    per-coordinate scaling; the sqrt factor keeps the update's per-entry size for tall matrices.

    It only reads each process's full gradient, so under DDP (gradients already all-reduced before
    `step`) every process computes the same update. FSDP shards the matrices, which Muon would
    need whole; TrainConfig refuses that combination.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 fused: bool = False, ns_dtype: torch.dtype = torch.float32):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        betas=betas, eps=eps, muon=True, lr_scale=1.0)
        super().__init__(params, defaults)
        self.fused, self.ns_dtype = fused, ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict) -> None:
        beta = group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.dim() != 2:
                raise ScratchLLMError(f"Muon updates matrices; got a parameter of shape {tuple(p.shape)}")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)  # (out, in)
            update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
            update = orthogonalize(update, group["ns_steps"], dtype=self.ns_dtype)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update.to(p.dtype), alpha=-group["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)

    def _adamw(self, group: dict) -> None:
        from torch.optim.adamw import adamw

        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # torch's AdamW layout (the fused kernel keeps its step counter on the device)
                state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device if self.fused else None)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=self.fused or None, foreach=None if self.fused else True,
              amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
              eps=group["eps"], maximize=False)

