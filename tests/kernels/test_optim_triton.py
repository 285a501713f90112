"""Triton flat AdamW, SGD and Lion (fasttrain.kernels.optim) against the C++ paths (fasttrain.ops.*_step_ on CPU)
and the references in fasttrain.ops.reference. Without a GPU this runs on CPU tensors through
TRITON_INTERPRET=1 (set in tests/conftest.py): fp32 and fp16 params, small sizes."""

import pytest
import torch

pytest.importorskip("triton", reason="Triton kernels need `pip install 'fasttrain[triton]'`")

from fasttrain.kernels import optim as tk  # noqa: E402
from fasttrain.ops import adamw_step_  # noqa: E402
from fasttrain.ops.reference import adamw_reference  # noqa: E402
from _triton_fma import fma_is_exact  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _fma_is_exact() -> bool:
    return fma_is_exact(DEVICE)


def make(n, pdt, seed=0):
    g = torch.Generator().manual_seed(seed)
    master = torch.randn(n, generator=g)
    return [master.to(pdt), (torch.randn(n, generator=g) * 1e-2).to(pdt), torch.randn(n, generator=g) * 1e-2,
            torch.rand(n, generator=g) * 1e-4, torch.rand(n, generator=g) * 2e-4, master]


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("pdt, use_master", [(torch.float32, False), (torch.float16, False), (torch.float16, True)],
                         ids=["fp32", "fp16", "fp16-master"])
@pytest.mark.parametrize("cfg", [dict(), dict(amsgrad=True, maximize=True, weight_decay=0.1), dict(beta1=0.3)],
                         ids=["default", "amsgrad-maximize-wd", "beta1-0.3"])
def test_triton_adamw_matches_cpp(n, pdt, use_master, cfg):
    p, g, m, v, mx, master = make(n, pdt)
    kw = dict(lr=1e-2, beta1=cfg.get("beta1", 0.9), beta2=0.999, eps=1e-8, weight_decay=cfg.get("weight_decay", 0.01),
              step=3, maximize=cfg.get("maximize", False), amsgrad=cfg.get("amsgrad", False), grad_scale=0.5)
    cpp = [t.clone() for t in (p, g, m, v, mx, master)]
    tri = [t.clone().to(DEVICE) for t in (p, g, m, v, mx, master)]
    adamw_step_(*cpp[:4], cpp[4] if kw["amsgrad"] else None, master=cpp[5] if use_master else None, **kw)
    tk.adamw_(*tri[:4], tri[4] if kw["amsgrad"] else None, tri[5] if use_master else None, **kw)
    for name, c, t in zip(("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master"), cpp, tri):
        t = t.cpu()
        if c.dtype == torch.float16:  # rounding ties of the fp32 result may land one fp16 ulp apart
            torch.testing.assert_close(t, c, rtol=torch.finfo(torch.float16).eps, atol=1e-7, msg=name)
        else:
            torch.testing.assert_close(t, c, rtol=1e-6, atol=1e-9, msg=name)
    if pdt == torch.float32 and not use_master:  # and the reference itself, for the record
        ref = [t.clone() for t in (p, g, m, v, mx)]
        adamw_reference(*ref[:4], ref[4] if kw["amsgrad"] else None,
                        **{k: x for k, x in kw.items()})
        torch.testing.assert_close(tri[0].cpu(), ref[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("pdt, use_master", [(torch.float32, False), (torch.float16, True)], ids=["fp32", "fp16-master"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_device_scalars_match_host_scalars_and_skip(n, pdt, use_master, amsgrad):
    """adamw_device_scalars_ (scalars read from a device tensor: fasttrain.optim.AdamW's CUDA step) gives
    the same bits as adamw_ with the same fp32 scalars by value; a nonzero skip flag touches nothing."""
    import math

    p, g, m, v, mx, master = make(n, pdt)
    lr, b1, b2, wd, step, gs = 1e-2, 0.9, 0.999, 0.01, 3, 0.5
    host = [t.clone().to(DEVICE) for t in (p, g, m, v, mx, master)]
    dev = [t.clone().to(DEVICE) for t in (p, g, m, v, mx, master)]
    kw = dict(eps=1e-8, maximize=False, amsgrad=amsgrad)
    tk.adamw_(*host[:4], host[4] if amsgrad else None, host[5] if use_master else None, lr=lr, beta1=b1, beta2=b2,
              weight_decay=wd, step=step, grad_scale=gs, **kw)
    sc = [1.0 - lr * wd, -(lr / (1.0 - b1**step)), 1.0 / math.sqrt(1.0 - b2**step), gs]
    for skip in (1.0, 0.0):
        scalars = torch.tensor(sc + [skip], dtype=torch.float32, device=DEVICE)
        before = [t.clone() for t in dev]
        tk.adamw_device_scalars_(*dev[:4], dev[4] if amsgrad else None, dev[5] if use_master else None, scalars,
                                 beta1=b1, beta2=b2, **kw)
        if skip:
            assert all(torch.equal(a, b) for a, b in zip(before, dev))
    for name, h, d in zip(("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master"), host, dev):
        assert torch.equal(h, d), name


# --- blockwise 8-bit states (fasttrain::adamw_int8_) ----------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 255, 257, 4099])
@pytest.mark.parametrize("cfg", [dict(), dict(maximize=True, weight_decay=0.1, grad_scale=0.5), dict(beta1=0.3)],
                         ids=["default", "maximize-wd-scale", "beta1-0.3"])
def test_triton_adamw_int8_matches_cpp(n, cfg):
    from fasttrain.ops import adamw_int8_step_
    from fasttrain.ops.reference import quantize_int8_states_reference

    g = torch.Generator().manual_seed(n)
    p, grad = torch.randn(n, generator=g), torch.randn(n, generator=g) * 1e-2
    states = quantize_int8_states_reference(torch.randn(n, generator=g) * 1e-2,
                                            torch.rand(n, generator=g) * 1e-4 * torch.exp(3 * torch.randn(n, generator=g)))
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, maximize=False, grad_scale=1.0)
    kw.update(cfg)
    cpp = [p.clone(), grad, *(t.clone() for t in states)]
    tri = [t.clone().to(DEVICE) for t in cpp]
    for step in (1, 2):
        adamw_int8_step_(*cpp, step=step, **kw)
        tk.adamw_int8_(*tri, step=step, **kw)
    torch.testing.assert_close(tri[0].cpu(), cpp[0], rtol=1e-6, atol=1e-8)
    exact = _fma_is_exact()
    for name, c, t in zip(("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"), cpp[2:], tri[2:]):
        if exact:  # the same codes and scales, bit for bit
            assert torch.equal(t.cpu(), c), name
        elif name.endswith("scale"):  # an ulp of m (its lerp is one FMA) moves the block absmax by as much
            torch.testing.assert_close(t.cpu(), c, rtol=1e-6, atol=0, msg=name)
        else:  # ... and a code next to a rounding threshold by one step
            assert (t.cpu().int() - c.int()).abs().max() <= 1, name


def _assert_same_fmas(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """SGD and Lion: the Triton kernels make the C++ kernels' operations and FMAs, so the results are equal
    bit for bit where tl.fma rounds once; Triton 3.8's interpreter rounds it twice (an ulp of a product,
    which can be large next to a result that cancels to near zero)."""
    if _fma_is_exact():
        assert torch.equal(got, want), name
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("cfg", [dict(momentum=0.0), dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
                                 dict(momentum=0.9, nesterov=True, maximize=True), dict(momentum=0.9, first=True)],
                         ids=["plain", "momentum-dampening-wd", "nesterov-maximize", "first"])
def test_triton_sgd_matches_cpp_and_reference(n, cfg):
    from fasttrain.ops import sgd_step_
    from fasttrain.ops.reference import sgd_reference

    p, g, buf = make(n, torch.float32)[:3]
    kw = dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, first=False)
    kw.update(cfg)
    cpp, tri, ref = ([t.clone().to(dev) for t in (p, g, buf)] for dev in ("cpu", DEVICE, "cpu"))
    sgd_step_(cpp[0], cpp[1], cpp[2] if kw["momentum"] else None, **kw)
    tk.sgd_(tri[0], tri[1], tri[2] if kw["momentum"] else None, **kw)
    sgd_reference(ref[0], ref[1], ref[2] if kw["momentum"] else None, **kw)
    for name, c, t, r in zip(("param", "grad", "momentum_buffer"), cpp, tri, ref):
        _assert_same_fmas(t.cpu(), c, name)
        torch.testing.assert_close(t.cpu(), r, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("n", [1, 7, 4099])
@pytest.mark.parametrize("cfg", [dict(), dict(weight_decay=0.1, maximize=True, beta1=0.5)], ids=["default", "wd-maximize"])
def test_triton_lion_matches_cpp_and_reference(n, cfg):
    from fasttrain.ops import lion_step_
    from fasttrain.ops.reference import lion_reference

    p, g, m = make(n, torch.float32)[:3]
    g[0] = 0.0  # sign(0) = 0 when the momentum is 0 too
    m[0] = 0.0
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False)
    kw.update(cfg)
    cpp, tri, ref = ([t.clone().to(dev) for t in (p, g, m)] for dev in ("cpu", DEVICE, "cpu"))
    lion_step_(*cpp, **kw)
    tk.lion_(*tri, **kw)
    lion_reference(*ref, **kw)
    for name, c, t, r in zip(("param", "grad", "exp_avg"), cpp, tri, ref):
        _assert_same_fmas(t.cpu(), c, name)
        torch.testing.assert_close(t.cpu(), r, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("n", [7, 4099])
def test_triton_adamw_stochastic_rounding_matches_cpp(n):
    """bf16 params without masters, stochastic rounding: the same hash noise and rounding rule as the C++
    kernel (the kernel handles bf16 as int16 bit patterns, so this runs in the interpreter too). The fp32
    values before rounding may differ by an ulp (the Triton update rounds its lerp and division apart
    from the C++ FMAs), which moves a rounding only when the noise lands on that ulp: nearly all equal."""
    g = torch.Generator().manual_seed(n)
    p = torch.randn(n, generator=g).bfloat16()
    grad = (torch.randn(n, generator=g) * 1e-2).bfloat16()
    m, v = torch.randn(n, generator=g) * 1e-2, torch.rand(n, generator=g) * 1e-4
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=3, maximize=False, amsgrad=False)
    cpp = [p.clone(), grad.clone(), m.clone(), v.clone()]
    tri = [t.clone().to(DEVICE) for t in cpp]
    adamw_step_(*cpp, None, stochastic_rounding=True, seed=12345, **kw)
    tk.adamw_(*tri, None, None, stochastic_rounding=True, seed=12345, **kw)
    got, want = tri[0].cpu().view(torch.int16).int(), cpp[0].view(torch.int16).int()
    assert (got - want).abs().max() <= 1
    assert (got == want).float().mean() >= 0.999
    assert not torch.equal(tri[0].cpu(), p)  # the params moved


def test_triton_stochastic_rounding_is_unbiased():
    """The issue's acceptance test on the Triton path: 100k roundings of one fp32 value (a bf16 value plus a
    third of its ulp, made by an update with lr 0) average to it within 3e-5 relative; round-to-nearest
    would stay a third of an ulp away (~1e-3 relative)."""
    n = 100_000
    base = torch.full((n,), 1.0).bfloat16()  # ulp at 1.0: 2^-7
    target = 1.0 + 2.0**-7 / 3
    # weight decay with lr 1: p * (1 - lr * wd) = p * target exactly enough in fp32; no Adam term (lr scaled off)
    p, grad = base.clone().to(DEVICE), torch.zeros(n).bfloat16().to(DEVICE)
    m, v = torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE)
    tk.adamw_(p, grad, m, v, None, None, lr=1.0, beta1=0.9, beta2=0.999, eps=1e30, weight_decay=1.0 - target,
              step=1, maximize=False, amsgrad=False, stochastic_rounding=True, seed=7)
    mean = p.float().mean().item()
    assert abs(mean - target) / target <= 3e-5, (mean, target)
    assert set(p.float().unique().tolist()) == {1.0, 1.0 + 2.0**-7}
