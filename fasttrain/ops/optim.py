"""Fused optimizer update ops over flat buffers.

`adamw_step_` applies one torch.optim.AdamW (decoupled weight decay) step to a flat fp32 param
buffer and its grad / exp_avg / exp_avg_sq (/ max_exp_avg_sq) buffers in one pass: 28 bytes moved
per parameter (32 with amsgrad), the minimum for fp32 AdamW. The per-element arithmetic follows
torch's single-tensor implementation, operation by operation, so results match
`torch.optim.AdamW(foreach=False)` to a few ulp.

CPU tensors run the C++ kernels (fasttrain._C.optim: ISA-dispatched, OpenMP). CUDA tensors run the
Triton kernels in fasttrain.kernels.optim (AdamW timed on an H200; all of them tested through the Triton
interpreter against the C++ kernels, see tests/kernels/test_optim_triton.py).
fasttrain.optim.AdamW is the user-facing optimizer; these ops are its building blocks.
"""

from __future__ import annotations

import torch

from fasttrain._ext import _C, num_threads
from fasttrain.ops import _eager, reference
from fasttrain.ops._checks import DTYPE_CODES
from fasttrain.ops._registry import OpSpec, register

__all__ = ["adamw_step_", "sgd_step_", "lion_step_"]

_OP = "fasttrain.ops.adamw_step_"


_LOW = (torch.float32, torch.bfloat16, torch.float16)
_STATE = (torch.float32, torch.bfloat16)


def _dtype_names(ds) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in ds)


def _check_buffers(op: str, named: dict[str, torch.Tensor | None], dtypes: dict[str, tuple[torch.dtype, ...]]) -> None:
    """Same numel, allowed dtypes, dense, contiguous, one device, no two buffers sharing memory."""
    ref_name, ref = "param", named["param"]
    present = {k: t for k, t in named.items() if t is not None}
    for name, t in present.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{op}: `{name}` has layout {t.layout}; sparse gradients are not supported (use dense ones)")
        if t.is_complex():
            raise TypeError(f"{op}: `{name}` is complex ({t.dtype}); only real tensors are supported "
                            "(view complex params as real with torch.view_as_real)")
        if t.dtype not in dtypes[name]:
            raise TypeError(f"{op}: `{name}` has dtype {t.dtype}; supported: {_dtype_names(dtypes[name])}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: `{name}` is not contiguous (stride {t.stride()}); pass .contiguous() buffers")
        if t.numel() != ref.numel():
            raise ValueError(f"{op}: `{name}` has {t.numel()} elements but `{ref_name}` has {ref.numel()}; "
                             "all buffers must be the same size")
        if t.device != ref.device:
            raise ValueError(f"{op}: `{name}` is on {t.device} but `{ref_name}` is on {ref.device}; "
                             "move all buffers to one device")
    if ref.device.type == "meta":
        return
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), k) for k, t in present.items() if t.numel())
    for (_s0, e0, k0), (s1, _e1, k1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{op}: `{k0}` and `{k1}` share memory; each buffer must be a separate tensor")


def _check_hparams(op: str, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"{op}: Invalid learning rate: {lr}")
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"{op}: Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"{op}: Invalid beta parameter at index 1: {beta2}")
    if not eps >= 0.0:
        raise ValueError(f"{op}: Invalid epsilon value: {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{op}: Invalid weight_decay value: {weight_decay}")
    if not step >= 1.0:
        raise ValueError(f"{op}: step must be >= 1 (the count after this update), got {step}")


def _adamw_cpu(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    master: torch.Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    maximize: bool,
    amsgrad: bool,
    grad_scale: float,
    stochastic_rounding: bool,
    seed: int,
) -> None:
    mx = max_exp_avg_sq.data_ptr() if amsgrad else 0
    if param.dtype == exp_avg.dtype == torch.float32 and master is None:  # the fp32 fast path
        _C.optim.adamw_f32_(
            param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), mx, param.numel(),
            lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_scale, num_threads(),
        )
        return
    _C.optim.adamw_mixed_(
        param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), mx,
        master.data_ptr() if master is not None else 0, param.numel(),
        DTYPE_CODES[param.dtype], DTYPE_CODES[exp_avg.dtype],
        lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_scale, stochastic_rounding, seed & 0xFFFFFFFF,
        num_threads(),
    )


_adamw_op = torch.library.custom_op(
    "fasttrain::adamw_", mutates_args=("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master"), device_types="cpu",
)(_adamw_cpu)


@_adamw_op.register_fake
def _(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, lr, beta1, beta2, eps, weight_decay, step, maximize,
      amsgrad, grad_scale, stochastic_rounding, seed):
    return None


@_adamw_op.register_kernel("cuda")
def _(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, lr, beta1, beta2, eps, weight_decay, step, maximize,
      amsgrad, grad_scale, stochastic_rounding, seed):
    from fasttrain.kernels import optim as triton_optim

    triton_optim.adamw_(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, lr=lr, beta1=beta1, beta2=beta2,
                        eps=eps, weight_decay=weight_decay, step=step, maximize=maximize, amsgrad=amsgrad,
                        grad_scale=grad_scale, stochastic_rounding=stochastic_rounding, seed=seed)


@torch.no_grad()
def adamw_step_(
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
    stochastic_rounding: bool = False,
    seed: int = 0,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step, in place, as torch.optim.AdamW(foreach=False) computes it (in fp32).

    param: (N,) or any shape, fp32 / bf16 / fp16, contiguous, updated in place.
    grad: same numel and dtype as param (read only).
    exp_avg, exp_avg_sq (, max_exp_avg_sq): same numel, fp32 or bf16 (all one dtype), updated in place
    (bf16 states are computed in fp32 and rounded to nearest even when stored).
    master: optional fp32 master weights (same numel): the update reads and writes the master and
    writes param = master rounded to param's dtype, in the same pass.
    stochastic_rounding: bf16 param without master only; rounds the new param up with probability
    equal to the dropped fraction (unbiased). `seed` picks the noise (same seed + step -> same bits).
    step: the step count *after* this update (1 on the first call); bias corrections use it.
    max_exp_avg_sq is required (and updated) iff amsgrad. All buffers on one CPU device, disjoint.
    grad_scale: the gradient is multiplied by it before use (1 / loss scale, times a clip coefficient),
    so unscaling and clipping cost no pass of their own; grad itself is not modified.
    """
    lr, beta1, beta2, eps, weight_decay, step = (float(x) for x in (lr, beta1, beta2, eps, weight_decay, step))
    _check_hparams(_OP, lr, beta1, beta2, eps, weight_decay, step)
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError(f"{_OP}: amsgrad=True needs `max_exp_avg_sq` (a zero-initialised buffer like exp_avg_sq)")
    named = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
             "max_exp_avg_sq": max_exp_avg_sq if amsgrad else None, "master": master}
    _check_buffers(_OP, named, {"param": _LOW, "grad": _LOW, "exp_avg": _STATE, "exp_avg_sq": _STATE,
                                "max_exp_avg_sq": _STATE, "master": (torch.float32,)})
    if grad.dtype != param.dtype:
        raise TypeError(f"{_OP}: `grad` is {grad.dtype} but `param` is {param.dtype}; they must match")
    for k in ("exp_avg_sq", "max_exp_avg_sq"):
        if named[k] is not None and named[k].dtype != exp_avg.dtype:
            raise TypeError(f"{_OP}: `{k}` is {named[k].dtype} but `exp_avg` is {exp_avg.dtype}; states share one dtype")
    if stochastic_rounding and (param.dtype != torch.bfloat16 or master is not None):
        raise ValueError(f"{_OP}: stochastic_rounding applies to bf16 params without master weights; "
                         f"got {param.dtype} param{' with master' if master is not None else ''}")
    mx = max_exp_avg_sq if amsgrad else None
    _call_adamw(param, grad, exp_avg, exp_avg_sq, mx, master, lr, beta1, beta2, eps, weight_decay, step,
                bool(maximize), bool(amsgrad), float(grad_scale), bool(stochastic_rounding), int(seed))


def _call_adamw(param, grad, exp_avg, exp_avg_sq, mx, master, *args) -> None:
    """The checked call of fasttrain::adamw_ (eagerly without the torch.library round trip when possible)."""
    _eager.call(_adamw_op, _adamw_cpu, (param, exp_avg, exp_avg_sq, mx, master),
                param, grad, exp_avg, exp_avg_sq, mx, master, *args)


def adamw_flat_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                max_exp_avg_sq: torch.Tensor | None, *, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, step: float, maximize: bool, amsgrad: bool, master: torch.Tensor | None,
                stochastic_rounding: bool, seed: int, grad_scale: float) -> None:
    """`adamw_step_` for the flat buffers fasttrain.optim allocates itself, which are valid by
    construction (one dtype and device per group, contiguous, equal sizes, disjoint; fasttrain/optim/
    _flat.py): the hyperparameters are still checked, the buffers not again on every step. Private to
    fasttrain.optim; call `adamw_step_` with your own tensors."""
    _check_hparams(_OP, lr, beta1, beta2, eps, weight_decay, step)
    mx = max_exp_avg_sq if amsgrad else None
    _call_adamw(param, grad, exp_avg, exp_avg_sq, mx, master, lr, beta1, beta2, eps, weight_decay, step,
                maximize, amsgrad, grad_scale, stochastic_rounding, seed)


# ---------------------------------------------------------------------------------------------
# AdamW over lists of fp32 tensors (multi-tensor apply, the shape of torch's _fused_adamw_): what
# fasttrain.optim.AdamW runs when the gradients are autograd's own tensors rather than views of its
# flat buffer (after zero_grad(set_to_none=True)), so backward never accumulates into a kept buffer
# and zero_grad never clears one.

__all__ += ["adamw_multi_step_"]

_MULTI = "fasttrain.ops.adamw_multi_step_"


def _adamw_multi_cpu(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    maximize: bool,
    amsgrad: bool,
    grad_scale: float,
) -> None:
    _C.optim.adamw_f32_multi_(
        [t.data_ptr() for t in params], [t.data_ptr() for t in grads], [t.data_ptr() for t in exp_avgs],
        [t.data_ptr() for t in exp_avg_sqs], [t.data_ptr() for t in max_exp_avg_sqs] if amsgrad else [],
        [t.numel() for t in params], lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_scale,
        num_threads(),
    )


_adamw_multi_op = torch.library.custom_op(
    "fasttrain::adamw_multi_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    device_types="cpu",
)(_adamw_multi_cpu)


@_adamw_multi_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step, maximize,
      amsgrad, grad_scale):
    return None


@torch.no_grad()
def adamw_multi_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None = None,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    step: float,
    maximize: bool = False,
    amsgrad: bool = False,
    grad_scale: float = 1.0,
) -> None:
    """`adamw_step_` over lists of tensors in one call, all at the same `step` (fp32 only).

    params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] (, max_exp_avg_sqs[i] iff amsgrad): fp32, CPU,
    contiguous, the same numel within each i (any shapes); params and states are updated in place.
    Tensor i may differ in size from tensor j: the tensors form one index space that the threads split
    into equal shares (a share may start or end inside a tensor). Same arithmetic, element for
    element, as `adamw_step_`, for any thread count.
    """
    lr, beta1, beta2, eps, weight_decay, step = (float(x) for x in (lr, beta1, beta2, eps, weight_decay, step))
    _check_hparams(_MULTI, lr, beta1, beta2, eps, weight_decay, step)
    lists = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if amsgrad:
        if max_exp_avg_sqs is None:
            raise ValueError(f"{_MULTI}: amsgrad=True needs `max_exp_avg_sqs` (zero-initialised like exp_avg_sqs)")
        lists["max_exp_avg_sqs"] = max_exp_avg_sqs
    for k, v in lists.items():
        if not isinstance(v, (list, tuple)):
            raise TypeError(f"{_MULTI}: `{k}` must be a list of tensors, got {type(v).__name__}")
        if len(v) != len(params):
            raise ValueError(f"{_MULTI}: `{k}` has {len(v)} tensors but `params` has {len(params)}")
    for i in range(len(params)):
        named = {"param": params[i], "grad": grads[i], "exp_avg": exp_avgs[i], "exp_avg_sq": exp_avg_sqs[i],
                 "max_exp_avg_sq": max_exp_avg_sqs[i] if amsgrad else None}
        try:
            _check_buffers(_MULTI, named, dict.fromkeys(named, _F32))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{e} (tensor {i} of the lists)") from None
        if params[i].device.type != "cpu":
            raise ValueError(f"{_MULTI}: tensor {i} is on {params[i].device}; CPU tensors only "
                             "(on CUDA, torch.optim.AdamW(fused=True) or fasttrain.optim.AdamW)")
    written = [t for k in ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs") for t in lists.get(k, ())]
    spans = sorted((t.data_ptr(), t.data_ptr() + 4 * t.numel()) for t in written if t.numel())
    if any(s1 < e0 for (_, e0), (s1, _) in zip(spans, spans[1:])):
        raise ValueError(f"{_MULTI}: two of the tensors updated in place share memory; each must be separate")
    _call_adamw_multi(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                      list(max_exp_avg_sqs) if amsgrad else [], (), lr, beta1, beta2, eps, weight_decay, step,
                      bool(maximize), bool(amsgrad), float(grad_scale))


def _call_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, bases, *args, ptrs=None) -> None:
    """The call of fasttrain::adamw_multi_, eager when unobservable. bases: tensors whose version
    counters stand for the lists' (views share their base's counter); () to bump each tensor's own.
    ptrs: (params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or [], numels) the caller keeps for its own
    fixed buffers (fasttrain.optim's flat views), so the eager call only reads the gradients' pointers."""
    mutated = tuple(bases) if bases else (*params, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs)
    if not params:
        return
    def own_buffers(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *a):
        _C.optim.adamw_f32_multi_(ptrs[0], [g.data_ptr() for g in grads], ptrs[1], ptrs[2], ptrs[3], ptrs[4], *a,
                                  num_threads())

    _eager.call(_adamw_multi_op, _adamw_multi_cpu if ptrs is None else own_buffers, mutated, params, grads, exp_avgs,
                exp_avg_sqs, max_exp_avg_sqs, *args)


def _adamw_multi_samples():
    g = torch.Generator().manual_seed(0)
    for sizes, amsgrad, maximize in (([1], False, False), ([7, 4099, 1], True, False), ([70000, 33], False, True)):
        mk = lambda scale, rand=False: [(torch.rand(n, generator=g) if rand else torch.randn(n, generator=g)) * scale
                                        for n in sizes]
        yield (mk(1.0), mk(0.1), mk(0.1), mk(0.01, True), mk(0.01, True) if amsgrad else [], 1e-3, 0.9, 0.999, 1e-8,
               0.01, 3.0, maximize, amsgrad, 1.0), {}


register(OpSpec(qualname="fasttrain::adamw_multi_", public=adamw_multi_step_, reference=reference.adamw_multi_reference,
                test="tests/ops/test_optim.py", benchmark="benchmarks/bench_adamw.py", samples=_adamw_multi_samples))


@torch.no_grad()
def touch_4r3w_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c: float = 0.0) -> None:
    """Benchmark roofline (not an optimizer): p, m, v += c * g in one pass, i.e. the exact memory
    traffic of an fp32 AdamW step (read 4 arrays, write 3) with no arithmetic to speak of.

    p, g, m, v: same numel, fp32, contiguous, CPU.
    """
    op = "fasttrain.ops.optim.touch_4r3w_"
    f32 = (torch.float32,)
    _check_buffers(op, {"param": p, "grad": g, "exp_avg": m, "exp_avg_sq": v}, dict.fromkeys(("param", "grad", "exp_avg", "exp_avg_sq"), f32))
    if p.device.type != "cpu":
        raise ValueError(f"{op}: CPU tensors only, got {p.device}")
    _C.optim.touch4r3w_(p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), float(c), num_threads())


def _adamw_samples():
    g = torch.Generator().manual_seed(0)
    cases = [  # (n, amsgrad, maximize, param dtype, state dtype, master, stochastic rounding)
        (1, False, False, torch.float32, torch.float32, False, False),
        (7, True, False, torch.float32, torch.float32, False, False),
        (4099, False, True, torch.float32, torch.float32, False, False),
        (37, True, False, torch.bfloat16, torch.float32, True, False),
        (37, False, False, torch.float16, torch.bfloat16, True, False),
        (37, False, False, torch.bfloat16, torch.bfloat16, False, True),
    ]
    for n, amsgrad, maximize, pdt, sdt, use_master, sr in cases:
        master = torch.randn(n, generator=g)
        p, gr = master.to(pdt), (torch.randn(n, generator=g) * 0.1).to(pdt)
        m, v = (torch.randn(n, generator=g) * 0.1).to(sdt), (torch.rand(n, generator=g) * 0.01).to(sdt)
        mx = (torch.rand(n, generator=g) * 0.01).to(sdt) if amsgrad else None
        yield (p, gr, m, v, mx, master if use_master else None, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0, maximize, amsgrad,
               0.5 if sr else 1.0, sr, 1234), {}


register(
    OpSpec(
        qualname="fasttrain::adamw_",
        public=adamw_step_,
        reference=reference.adamw_reference,
        test="tests/ops/test_optim.py",
        benchmark="benchmarks/bench_adamw.py",
        samples=_adamw_samples,
    )
)


# ---------------------------------------------------------------------------------------------
# SGD and Lion (fp32 only for now)

_SGD = "fasttrain.ops.sgd_step_"
_LION = "fasttrain.ops.lion_step_"
_F32 = (torch.float32,)


def _sgd_cpu(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor | None, lr: float, momentum: float,
            dampening: float, weight_decay: float, nesterov: bool, maximize: bool, first: bool) -> None:
    _C.optim.sgd_f32_(param.data_ptr(), grad.data_ptr(), momentum_buffer.data_ptr() if momentum_buffer is not None else 0,
                      param.numel(), lr, momentum, dampening, weight_decay, nesterov, maximize, first, num_threads())


_sgd_op = torch.library.custom_op("fasttrain::sgd_", mutates_args=("param", "momentum_buffer"), device_types="cpu")(_sgd_cpu)


@_sgd_op.register_fake
def _(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first):
    return None


@_sgd_op.register_kernel("cuda")
def _(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first):
    from fasttrain.kernels import optim as triton_optim

    triton_optim.sgd_(param, grad, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, first=first)


@torch.no_grad()
def sgd_step_(
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
    """One SGD step in place, as torch.optim.SGD(foreach=False) computes it.

    param, grad (, momentum_buffer): same numel, fp32, contiguous, one device (CPU or CUDA), disjoint.
    momentum_buffer: required iff momentum != 0; first=True on the first step (the buffer becomes grad).
    """
    lr, momentum, dampening, weight_decay = (float(x) for x in (lr, momentum, dampening, weight_decay))
    if not lr >= 0.0:
        raise ValueError(f"{_SGD}: Invalid learning rate: {lr}")
    if not momentum >= 0.0:
        raise ValueError(f"{_SGD}: Invalid momentum value: {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{_SGD}: Invalid weight_decay value: {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"{_SGD}: Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0.0 and momentum_buffer is None:
        raise ValueError(f"{_SGD}: momentum={momentum} needs `momentum_buffer` (an fp32 buffer like param)")
    buf = momentum_buffer if momentum != 0.0 else None
    _check_buffers(_SGD, {"param": param, "grad": grad, "momentum_buffer": buf}, dict.fromkeys(
        ("param", "grad", "momentum_buffer"), _F32))
    _eager.call(_sgd_op, _sgd_cpu, (param, buf), param, grad, buf, lr, momentum, dampening, weight_decay,
                bool(nesterov), bool(maximize), bool(first))


def _lion_cpu(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, lr: float, beta1: float, beta2: float,
             weight_decay: float, maximize: bool) -> None:
    _C.optim.lion_f32_(param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), param.numel(), lr, beta1, beta2,
                       weight_decay, maximize, num_threads())


_lion_op = torch.library.custom_op("fasttrain::lion_", mutates_args=("param", "exp_avg"), device_types="cpu")(_lion_cpu)


@_lion_op.register_fake
def _(param, grad, exp_avg, lr, beta1, beta2, weight_decay, maximize):
    return None


@_lion_op.register_kernel("cuda")
def _(param, grad, exp_avg, lr, beta1, beta2, weight_decay, maximize):
    from fasttrain.kernels import optim as triton_optim

    triton_optim.lion_(param, grad, exp_avg, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                       maximize=maximize)


@torch.no_grad()
def lion_step_(
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
    """One Lion step in place (fasttrain.ops.reference.lion_reference).

    param, grad, exp_avg: same numel, fp32, contiguous, one device (CPU or CUDA), disjoint.
    """
    lr, beta1, beta2, weight_decay = (float(x) for x in (lr, beta1, beta2, weight_decay))
    _check_hparams(_LION, lr, beta1, beta2, 0.0, weight_decay, 1.0)
    _check_buffers(_LION, {"param": param, "grad": grad, "exp_avg": exp_avg}, dict.fromkeys(("param", "grad", "exp_avg"), _F32))
    _eager.call(_lion_op, _lion_cpu, (param, exp_avg), param, grad, exp_avg, lr, beta1, beta2, weight_decay, bool(maximize))


def _sgd_samples():
    g = torch.Generator().manual_seed(0)
    for n, momentum, nesterov, first in ((1, 0.0, False, False), (7, 0.9, True, True), (4099, 0.9, False, False)):
        p, gr, buf = (torch.randn(n, generator=g) for _ in range(3))
        yield (p, gr, buf if momentum else None, 0.1, momentum, 0.0, 0.01, nesterov, False, first), {}


def _lion_samples():
    g = torch.Generator().manual_seed(0)
    for n, maximize in ((1, False), (7, True), (4099, False)):
        p, gr, m = (torch.randn(n, generator=g) for _ in range(3))
        yield (p, gr, m, 1e-4, 0.9, 0.99, 0.1, maximize), {}


register(OpSpec(qualname="fasttrain::sgd_", public=sgd_step_, reference=reference.sgd_reference,
                test="tests/ops/test_optim_sgd_lion.py", benchmark="benchmarks/bench_sgd.py", samples=_sgd_samples))
register(OpSpec(qualname="fasttrain::lion_", public=lion_step_, reference=reference.lion_reference,
                test="tests/ops/test_optim_sgd_lion.py", benchmark="benchmarks/bench_lion.py", samples=_lion_samples))


# ---------------------------------------------------------------------------------------------
# AdamW with blockwise 8-bit states (fp32 params). Code maps: csrc/optim/optim_int8.h, and in torch
# fasttrain.ops.reference.quantize_int8_states_reference.

__all__ += ["adamw_int8_step_"]

_INT8 = "fasttrain.ops.adamw_int8_step_"
INT8_BLOCK = reference.INT8_BLOCK


def _adamw_int8_cpu(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    exp_avg_scale: torch.Tensor,
    exp_avg_sq_scale: torch.Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    maximize: bool,
    grad_scale: float,
) -> None:
    _C.optim.adamw_int8_(
        param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), exp_avg_scale.data_ptr(),
        exp_avg_sq_scale.data_ptr(), param.numel(), lr, beta1, beta2, eps, weight_decay, step, maximize, grad_scale,
        num_threads(),
    )


_adamw_int8_op = torch.library.custom_op(
    "fasttrain::adamw_int8_", mutates_args=("param", "exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"),
    device_types="cpu",
)(_adamw_int8_cpu)


@_adamw_int8_op.register_fake
def _(param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, lr, beta1, beta2, eps, weight_decay, step,
      maximize, grad_scale):
    return None


@_adamw_int8_op.register_kernel("cuda")
def _(param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, lr, beta1, beta2, eps, weight_decay, step,
      maximize, grad_scale):
    from fasttrain.kernels import optim as triton_optim

    triton_optim.adamw_int8_(param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, lr=lr, beta1=beta1,
                             beta2=beta2, eps=eps, weight_decay=weight_decay, step=step, maximize=maximize,
                             grad_scale=grad_scale)


@torch.no_grad()
def adamw_int8_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    exp_avg_scale: torch.Tensor,
    exp_avg_sq_scale: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    step: float,
    maximize: bool = False,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step with blockwise 8-bit states, in place, in one pass per block of 256 elements:
    dequantize m and v, the fp32 AdamW arithmetic of `adamw_step_`, write param, requantize m and v
    with the block's new absmax (fasttrain.ops.reference.adamw_int8_reference).

    param: (N,) or any shape, fp32, contiguous; grad: fp32, same numel (read only).
    exp_avg: int8 codes, exp_avg_sq: uint8 codes (of sqrt(v)), same numel; exp_avg_scale,
    exp_avg_sq_scale: (ceil(N / 256),) fp32 per-block scales. Element i is in block i // 256, so a
    flat buffer of several tensors must start each tensor at a multiple of 256 to keep blocks per
    tensor (fasttrain.optim.AdamW lays its buffers out that way). All buffers on one CPU device,
    disjoint. step: the count after this update. grad_scale multiplies the gradient first.
    A new state is all-zero codes and scales (m = v = 0).
    """
    lr, beta1, beta2, eps, weight_decay, step = (float(x) for x in (lr, beta1, beta2, eps, weight_decay, step))
    _check_hparams(_INT8, lr, beta1, beta2, eps, weight_decay, step)
    _check_buffers(_INT8, {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
                   {"param": _F32, "grad": _F32, "exp_avg": (torch.int8,), "exp_avg_sq": (torch.uint8,)})
    blocks = -(-param.numel() // INT8_BLOCK)
    for name, t in (("exp_avg_scale", exp_avg_scale), ("exp_avg_sq_scale", exp_avg_sq_scale)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or not t.is_contiguous():
            raise TypeError(f"{_INT8}: `{name}` must be a contiguous float32 tensor (one scale per block of "
                            f"{INT8_BLOCK} elements)")
        if t.numel() != blocks:
            raise ValueError(f"{_INT8}: `{name}` has {t.numel()} elements; {param.numel()} params need "
                             f"ceil({param.numel()} / {INT8_BLOCK}) = {blocks} scales")
        if t.device != param.device:
            raise ValueError(f"{_INT8}: `{name}` is on {t.device} but `param` is on {param.device}; "
                             "move all buffers to one device")
    if param.device.type != "meta" and exp_avg_scale.numel() and exp_avg_scale.data_ptr() == exp_avg_sq_scale.data_ptr():
        raise ValueError(f"{_INT8}: `exp_avg_scale` and `exp_avg_sq_scale` share memory; pass separate tensors")
    _eager.call(_adamw_int8_op, _adamw_int8_cpu, (param, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale),
                param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, lr, beta1, beta2, eps,
                weight_decay, step, bool(maximize), float(grad_scale))


def _adamw_int8_samples():
    g = torch.Generator().manual_seed(0)
    for n, maximize, gs in ((1, False, 1.0), (257, True, 0.5), (4099, False, 1.0)):
        p, gr = torch.randn(n, generator=g), torch.randn(n, generator=g) * 1e-2
        qm, qv, am, as_ = reference.quantize_int8_states_reference(torch.randn(n, generator=g) * 1e-2,
                                                                   torch.rand(n, generator=g) * 1e-4)
        yield (p, gr, qm, qv, am, as_, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0, maximize, gs), {}


register(OpSpec(qualname="fasttrain::adamw_int8_", public=adamw_int8_step_, reference=reference.adamw_int8_reference,
                test="tests/ops/test_optim_int8.py", benchmark="benchmarks/bench_adamw.py",
                samples=_adamw_int8_samples))
