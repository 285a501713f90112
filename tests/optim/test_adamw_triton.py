"""fasttrain.optim.AdamW's Triton path (the CUDA path) against its C++ path.

Without a GPU the Triton path runs on CPU tensors: the private switch `fasttrain.optim._flat._BACKEND =
"triton"` sends CPU groups through it, and tests/conftest.py sets TRITON_INTERPRET=1 (fp32/fp16 only,
so bf16 cases need a GPU). With a GPU the same tests run the Triton groups on CUDA for real.
Tolerances: both paths do the same fp32 arithmetic per element; the step scalars are rounded from fp64
in both, so results agree to a couple of fp32 ulp (rtol 1e-6) after a few steps."""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton path needs `pip install 'fasttrain[triton]'`")

import fasttrain.optim  # noqa: E402
from fasttrain.optim import _flat  # noqa: E402
from _optim_backend import optim_backend  # noqa: E402
from _sync import SyncCounter  # noqa: E402
from _triton_fma import fma_is_exact  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
STEPS = 4


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setattr(_flat, "_BACKEND", "triton")


def tiny(pdt, device, seed=0):
    torch.manual_seed(seed)
    # odd sizes (7, 37, 1) so the flat buffers have padding and a program ends mid-block
    return torch.nn.Sequential(torch.nn.Linear(7, 37), torch.nn.GELU(), torch.nn.Linear(37, 1)).to(device, pdt)


def run(device, pdt=torch.float32, steps=STEPS, drop=None, scaler=None, backend="triton", **kw):
    """`steps` AdamW steps on fixed random grads (backend "auto" on CPU: the C++ path); returns the model
    and the optimizer."""
    model = tiny(pdt, device)
    with optim_backend(backend):
        opt = fasttrain.optim.AdamW(model.parameters(), **{"lr": 1e-2, **kw})
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        for i, p in enumerate(model.parameters()):
            if drop is not None and s == 1 and i == drop:
                p.grad = None  # torch semantics: skipped this step (the per-tensor path)
            else:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(torch.randn(p.shape, generator=g).to(pdt))
        if scaler is not None:
            opt.found_inf, opt.grad_scale = (t.to(device) for t in scaler(s))
        opt.step()
    return model, opt


def assert_models_close(a, b, pdt):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        x, y = x.detach().cpu().float(), y.detach().cpu().float()
        if pdt == torch.float32:
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7, msg=name)
        else:  # the rounded params: one low-precision ulp at a rounding tie
            torch.testing.assert_close(y, x, rtol=torch.finfo(pdt).eps, atol=1e-7, msg=name)


CASES = {
    "default": dict(),
    "amsgrad-maximize-wd": dict(amsgrad=True, maximize=True, weight_decay=0.1),
    "beta1-0.3": dict(betas=(0.3, 0.999)),
    "clip": dict(max_grad_norm=0.5),
    "tensor-lr": dict(lr=torch.tensor(3e-3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_cpp(triton_backend, case):
    kw = CASES[case]
    ref_model, ref = run("cpu", backend="auto", **kw)
    model, opt = run(DEVICE, **kw)
    assert all(fg.triton for fg in opt._flat) and not any(fg.triton for fg in ref._flat)
    assert_models_close(ref_model, model, torch.float32)
    for p, q in zip(ref_model.parameters(), model.parameters()):
        # the C++ kernels contract m's lerp into an FMA, the interpreter does not: a few ulp over the steps
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[q][k].cpu(), ref.state[p][k], rtol=1e-5, atol=1e-9)
        assert float(opt.state[q]["step"]) == float(ref.state[p]["step"]) == STEPS
    if "max_grad_norm" in kw:
        torch.testing.assert_close(opt.last_grad_norm.cpu(), ref.last_grad_norm, rtol=1e-6, atol=0)


LOW = [torch.float16] + ([torch.bfloat16] if CUDA else [])  # the interpreter has no bf16


@pytest.mark.parametrize("pdt", LOW, ids=str)
@pytest.mark.parametrize("state_dtype", ["fp32"] + (["bf16"] if CUDA else []))
def test_low_precision_masters_match_cpp(triton_backend, pdt, state_dtype):
    kw = dict(master_weights=True, state_dtype=state_dtype)
    ref_model, ref = run("cpu", pdt, backend="auto", **kw)
    model, opt = run(DEVICE, pdt, **kw)
    assert_models_close(ref_model, model, pdt)
    for p, q in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(opt.state[q]["master"].cpu(), ref.state[p]["master"], rtol=1e-6, atol=1e-7)


def test_missing_grad_runs_per_tensor_and_matches_cpp(triton_backend):
    ref_model, ref = run("cpu", backend="auto", drop=1)
    model, opt = run(DEVICE, drop=1)
    assert_models_close(ref_model, model, torch.float32)
    steps = [float(opt.state[p]["step"]) for p in model.parameters()]
    assert steps == [float(ref.state[p]["step"]) for p in ref_model.parameters()] == [4, 3, 4, 4]


def scaler_protocol(skip_at):
    """What torch.amp.GradScaler sets before step(): found_inf (1 at step `skip_at`) and the scale."""
    return lambda s: (torch.tensor(1.0 if s == skip_at else 0.0), torch.tensor(2.0 ** (10 - s)))


def test_grad_scaler_unscale_and_inf_skip(triton_backend):
    # Step 2 is skipped on both paths: no param, state or step count changes; the rest unscale in the pass.
    ref_model, ref = run("cpu", backend="auto", scaler=scaler_protocol(2), max_grad_norm=1.0)
    model, opt = run(DEVICE, scaler=scaler_protocol(2), max_grad_norm=1.0)
    assert_models_close(ref_model, model, torch.float32)
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [STEPS - 1] * 4
    # a skipped step alone leaves everything as it was
    before = [p.detach().clone() for p in model.parameters()]
    states = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    opt.found_inf, opt.grad_scale = torch.tensor(1.0, device=DEVICE), torch.tensor(8.0, device=DEVICE)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, opt.state[p]["exp_avg"]) for a, p in zip(states, model.parameters()))
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [STEPS - 1] * 4


def test_real_grad_scaler(triton_backend):
    """torch.amp.GradScaler drives the Triton path (scale, inf check, skip, update) as it drives the C++ one."""
    x = torch.randn(16, 7, generator=torch.Generator().manual_seed(2))
    results = []
    for device in ("cpu", DEVICE):
        model = tiny(torch.float32, device)
        with pytest.MonkeyPatch.context() as mp:  # the C++ run on CPU, then the Triton run on DEVICE
            mp.setattr(_flat, "_BACKEND", "triton" if results else "auto")
            opt = fasttrain.optim.AdamW(model.parameters(), lr=1e-2)
        assert opt._flat[0].triton == bool(results)
        scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
        for s in range(STEPS):
            loss = model(x.to(device)).square().mean() * (float("inf") if s == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        results.append((model, [float(opt.state[p]["step"]) for p in model.parameters()], scaler.get_scale()))
    (ref_model, ref_steps, ref_scale), (model, steps, scale) = results
    assert steps == ref_steps == [STEPS - 1] * 4 and scale == ref_scale
    assert_models_close(ref_model, model, torch.float32)


@pytest.mark.parametrize("drop", [None, 1], ids=["flat", "per-tensor"])
def test_no_host_sync_per_step(triton_backend, drop):
    """GradScaler tensors, a tensor lr and clipping: not one device-to-host read in step(). (On CPU the
    reads would be free, but the same code runs on CUDA, where each would stall the stream.)"""
    model = tiny(torch.float32, DEVICE)
    opt = fasttrain.optim.AdamW(model.parameters(), lr=torch.tensor(1e-2, device=DEVICE), max_grad_norm=1.0,
                                amsgrad=True)
    for s in range(3):
        for i, p in enumerate(model.parameters()):
            p.grad = None if (drop == i and s == 1) else torch.randn_like(p)
        opt.found_inf = torch.tensor(float(s == 2), device=DEVICE)
        opt.grad_scale = torch.tensor(4.0, device=DEVICE)
        with SyncCounter() as counter:
            opt.step()
        assert counter.count == 0, f"step {s}: {counter.count} host syncs"
        opt.zero_grad()


def test_state_dict_round_trip(triton_backend):
    model, opt = run(DEVICE)
    sd = opt.state_dict()
    assert sd["state"][0]["step"].device.type == torch.device(DEVICE).type  # on the device, like torch fused
    model2 = tiny(torch.float32, DEVICE)
    model2.load_state_dict(model.state_dict())
    opt2 = fasttrain.optim.AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    for m, o in ((model, opt), (model2, opt2)):
        for p in m.parameters():
            p.grad.fill_(0.5)
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("drop", [None, 1], ids=["flat", "per-tensor"])
def test_stochastic_rounding_matches_cpp(triton_backend, drop):
    """bf16 params without masters, stochastic_rounding=True: the Triton path uses the C++ path's seeds, noise
    and rounding rule, so the params agree bit for bit except where an ulp of difference in the fp32 update
    (the Triton kernel rounds its lerp and division apart from the C++ FMAs) meets the noise: one bf16 ulp."""
    model, opt = run(DEVICE, torch.bfloat16, drop=drop, stochastic_rounding=True, lr=1e-3)
    ref_model, _ = run("cpu", torch.bfloat16, drop=drop, backend="auto", stochastic_rounding=True, lr=1e-3)
    assert all(fg.triton for fg in opt._flat)
    got = torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()]).view(torch.int16).int()
    want = torch.cat([p.detach().reshape(-1) for p in ref_model.parameters()]).view(torch.int16).int()
    assert (got - want).abs().max() <= 1
    assert (got == want).float().mean() >= 0.99


def test_off_cpu_and_cuda_raise():
    # meta tensors stand in for another accelerator: the check is on the device type, before any kernel runs
    params = list(tiny(torch.float32, "meta").parameters())
    for cls in (fasttrain.optim.AdamW, fasttrain.optim.SGD, fasttrain.optim.Lion):
        with pytest.raises(ValueError, match=f"{cls.__name__} supports CPU and CUDA parameters"):
            cls(params, lr=0.1)


def run_int8(device, backend, steps=4, drop=None, skip_step=None):
    """state_dtype="int8" on a model with one 8-bit tensor (67 x 129 >= 4096 elements) and fp32-state small
    ones; drop=i: parameter i has no gradient at step 1; skip_step=s: a GradScaler inf at step s."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(67, 129), torch.nn.GELU(), torch.nn.Linear(129, 3)).to(device)
    with optim_backend(backend):
        opt = fasttrain.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, state_dtype="int8")
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        for i, p in enumerate(model.parameters()):
            grad = torch.randn(p.shape, generator=g).to(device)
            p.grad = None if (drop == i and s == 1) else grad
        if skip_step is not None:
            opt.found_inf = torch.tensor(float(s == skip_step), device=device)
        opt.step()
    return model, opt


@pytest.mark.parametrize("drop, skip_step", [(None, None), (0, None), (None, 2)], ids=["flat", "per-tensor", "skip"])
def test_int8_states_match_cpp(triton_backend, drop, skip_step):
    """The Triton path of state_dtype="int8" (8-bit segment + fp32 tail, device-side scalars) against the
    C++ path: same params, codes and scales (bit for bit where tl.fma rounds once; else a code may sit
    one step away at a rounding threshold, which moves the params by up to ~lr * 2/127)."""
    model, opt = run_int8(DEVICE, "triton", drop=drop, skip_step=skip_step)
    assert all(fg.triton for fg in opt._flat) and opt._flat[0].int8.n8 > 0
    ref_model, ref = run_int8("cpu", "auto", drop=drop, skip_step=skip_step)
    exact = fma_is_exact(DEVICE)
    tol = dict(rtol=1e-6, atol=1e-7) if exact else dict(rtol=0, atol=1e-3)
    for x, y in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(x.detach().cpu(), y.detach(), **tol)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        a, b = opt.state[p], ref.state[q]
        assert float(a["step"]) == float(b["step"])
        for k in b:
            if k == "step":
                continue
            if a[k].dtype == torch.float32 and not k.endswith("scale"):
                # the small tensors' fp32 states: the fp32 kernel rounds its lerp apart from the C++ FMA
                torch.testing.assert_close(a[k].cpu(), b[k], rtol=1e-6, atol=1e-7, msg=k)
            elif exact:  # 8-bit codes and block scales: the int8 kernels share every FMA
                assert torch.equal(a[k].cpu(), b[k]), k


def test_int8_no_host_sync_per_step(triton_backend):
    model, opt = run_int8(DEVICE, "triton", steps=1)
    for s in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.found_inf = torch.tensor(float(s == 1), device=DEVICE)
        with SyncCounter() as counter:
            opt.step()
        assert counter.count == 0, f"step {s}: {counter.count} host syncs"


@pytest.mark.parametrize("state_dtype", ["fp32", "int8"])
def test_step_in_backward_matches_cpp(triton_backend, state_dtype):
    """step_in_backward=True on the Triton path: each parameter's update runs from its hook (one launch,
    the step count read on the device), the gradient is freed, and the result equals the C++ path's."""
    def train(device, backend):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(67, 129), torch.nn.GELU(), torch.nn.Linear(129, 3)).to(device)
        with optim_backend(backend):
            opt = fasttrain.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, step_in_backward=True,
                                        state_dtype=state_dtype)
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            x, y = torch.randn(8, 67, generator=g).to(device), torch.randn(8, 3, generator=g).to(device)
            with SyncCounter() as counter:
                torch.nn.functional.mse_loss(model(x), y).backward()  # the updates run here
            assert all(p.grad is None for p in model.parameters())
            opt.step()
        return model, opt, counter.count

    model, opt, syncs = train(DEVICE, "triton")
    assert all(fg.triton for fg in opt._flat) and syncs == 0
    ref, ref_opt, _ = train("cpu", "auto")
    tol = dict(rtol=1e-6, atol=1e-7) if fma_is_exact(DEVICE) or state_dtype == "fp32" else dict(rtol=0, atol=1e-3)
    for x, y in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(x.detach().cpu(), y.detach(), **tol)
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [4.0] * 4
