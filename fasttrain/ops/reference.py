"""Pure-torch references for every fasttrain op.

Tests and benchmarks import these same functions (never a private copy), so the definition of
"correct" lives in one place. They favour clarity and accuracy over speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["total_norm_reference", "clip_grad_norm_reference"]


@torch.no_grad()
def total_norm_reference(
    tensors: Sequence[torch.Tensor], norm_type: float = 2.0, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Global `norm_type`-norm of all elements of `tensors`, computed in `dtype` (fp32 by default).

    tensors: list of any-shape float tensors on one device. Returns a 0-dim `dtype` tensor.
    Pass dtype=torch.float64 for a ground truth to measure fp32 kernels against.
    """
    # Empty tensors contribute nothing (torch's inf-norm would raise on them: |x| >= 0 gives 0 as identity).
    tensors = [t for t in tensors if t.numel()]
    if len(tensors) == 0:
        return torch.zeros((), dtype=dtype)
    norms = [torch.linalg.vector_norm(t.to(dtype), norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def clip_grad_norm_reference(
    tensors: Sequence[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ semantics on a list of tensors, with the norm and the scaling
    computed in `dtype` (fp32 default) and each result rounded once to the tensor's own dtype.

    Mutates `tensors` in place; returns the total norm (0-dim `dtype`).
    """
    total = total_norm_reference(tensors, norm_type, dtype=dtype)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients is non-finite, so it cannot be clipped. "
            "To scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for t in tensors:
        t.copy_(t.to(dtype) * coef)
    return total


# ---------------------------------------------------------------------------------------------
# Fused optimizers (fasttrain.ops.optim, fasttrain.optim)

__all__ += ["adamw_reference"]


@torch.no_grad()
def adamw_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None = None,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    step: float,
    maximize: bool = False,
    amsgrad: bool = False,
    master: torch.Tensor | None = None,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step in place, written as torch.optim.AdamW(foreach=False) writes it.

    param, exp_avg, exp_avg_sq (, max_exp_avg_sq): any shape, updated in place; grad: same shape.
    step: the step count after this update (1 on the first call). Run on fp64 copies for a ground truth.
    Mixed precision (the fused op's contract): when the buffers do not all share one dtype, or an
    fp32 `master` is given, the step runs on fp32 copies (the master instead of param if given) and
    each result is rounded to its buffer's dtype once (round-to-nearest-even). grad_scale multiplies
    the gradient first (unscaling / clipping folded into the step; grad itself is left unchanged).
    """
    if grad_scale != 1.0:
        grad = grad.float() * grad_scale if grad.dtype != torch.float64 else grad * grad_scale
    bufs = [t for t in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq) if t is not None]
    if master is not None or len({t.dtype for t in bufs}) > 1:
        work = [t.float() if t is not None else None for t in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)]
        if master is not None:
            work[0] = master
        adamw_reference(*work, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                        maximize=maximize, amsgrad=amsgrad)
        for dst, src in zip((param, exp_avg, exp_avg_sq, max_exp_avg_sq), (work[0], *work[2:])):
            if dst is not None:
                dst.copy_(src)
        return
    if maximize:
        grad = -grad
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if amsgrad:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


__all__ += ["sgd_reference", "lion_reference"]


@torch.no_grad()
def sgd_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first: bool = False,
) -> None:
    """One SGD step in place, as torch.optim.SGD(foreach=False) writes it.

    param, grad (, momentum_buffer): same shape and dtype. momentum_buffer is required iff
    momentum != 0; first=True means it holds no history yet (torch's None buffer): it becomes grad.
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if first:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)


@torch.no_grad()
def lion_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """One Lion step in place (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
    Algorithm 2, with decoupled weight decay):

        p <- p * (1 - lr * wd) - lr * sign(beta1 * m + (1 - beta1) * g);   m <- beta2 * m + (1 - beta2) * g

    param, grad, exp_avg: same shape and dtype.
    """
    if maximize:
        grad = -grad
    param.mul_(1 - lr * weight_decay)
    update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
    param.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
