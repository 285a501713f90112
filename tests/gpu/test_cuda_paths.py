"""CUDA paths end to end, for a machine with a GPU (benchmarks/gpu/check.sh runs them there; CPU CI
skips this module): the loader's pinned ring and asynchronous copies, the Trainer on CUDA (accuracy,
bf16, no host sync between log points, checked by CUDA's own sync detector), quantized modules on the
Triton kernels, and fasttrain.optim.AdamW's one-launch step against torch.optim.AdamW.
The kernels themselves are checked against the C++ path in tests/kernels (interpreter on CPU)."""

import copy
import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import fasttrain  # noqa: E402
from fasttrain.data import Loader, Normalize, TokenLoader  # noqa: E402
from fasttrain.examples.digits import digits_mlp, load_digits_tensors  # noqa: E402

CE = nn.functional.cross_entropy


def images(n=1000, seed=0):
    g = np.random.default_rng(seed)
    return {"image": g.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), "label": g.integers(0, 10, n).astype(np.int64)}


def batches(loader, k=None):
    """The next k batches (all: the rest of the epoch), on the CPU. islice takes exactly k, so the
    loader's resume position is k (a for-loop with break would fetch one more)."""
    return [{name: t.cpu() for name, t in b.items()} if isinstance(b, dict) else tuple(t.cpu() for t in b)
            for b in itertools.islice(loader, k)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x.values() if isinstance(x, dict) else x, y.values() if isinstance(y, dict) else y):
            assert torch.equal(u, v)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_loader_to_cuda_equals_cpu_batches(num_threads):
    src = images()
    tf = {"image": Normalize(mean=(120.0, 110.0, 100.0), std=(60.0, 61.0, 62.0))}
    cpu = Loader(src, 64, seed=3, transforms=tf, num_threads=num_threads)
    gpu = Loader(src, 64, seed=3, transforms=tf, num_threads=num_threads, device="cuda")
    assert gpu.pin_memory
    first = next(iter(Loader(src, 64, seed=3, transforms=tf, device="cuda")))  # (a loader resumes where left)
    assert all(t.device.type == "cuda" for t in first.values())
    for epoch in range(2):  # buffers are reused across epochs: a reused pinned buffer must not corrupt a batch
        cpu.set_epoch(epoch)
        gpu.set_epoch(epoch)
        assert_same(batches(cpu), batches(gpu))


def test_loader_cuda_resume_mid_epoch():
    src = images()
    full = batches(Loader(src, 64, seed=1, device="cuda"))
    a = Loader(src, 64, seed=1, device="cuda")
    head = batches(a, 5)
    state = a.state_dict()
    b = Loader(src, 64, seed=1, device="cuda")
    b.load_state_dict(state)
    assert_same(head + batches(b), full)


def test_token_loader_cuda(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50000, 100_003).astype(np.uint16)
    path = fasttrain.data.write_tokens(tmp_path / "t.tokens", tokens)
    cpu = batches(TokenLoader(path, 64, 16, seed=2), 10)
    x, y = next(iter(TokenLoader(path, 64, 16, seed=2, device="cuda")))
    assert x.device.type == "cuda" and x.dtype == torch.int64
    assert_same(cpu, batches(TokenLoader(path, 64, 16, seed=2, device="cuda"), 10))


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors()


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "bf16-true"])
def test_trainer_cuda_digits(digits, precision):
    train, val = digits
    torch.manual_seed(0)
    t = fasttrain.Trainer(digits_mlp(), loss_fn=CE, precision=precision, max_epochs=15, loggers=None, verbose=False,
                          device="cuda")
    t.fit(train, val_data=val)
    assert next(t.model.parameters()).device.type == "cuda"
    assert isinstance(t.optimizer, fasttrain.optim.AdamW)
    assert t.validate(val)["val_acc"] >= 0.95


@pytest.mark.parametrize("optimizer, kw", [("sgd", {"lr": 0.05, "momentum": 0.9}), ("lion", {"lr": 3e-4})])
def test_trainer_cuda_sgd_lion(digits, optimizer, kw):
    """Trainer(optimizer="sgd" | "lion") on CUDA takes fasttrain's optimizers (one Triton launch per group)."""
    train, val = digits
    torch.manual_seed(0)
    t = fasttrain.Trainer(digits_mlp(), optimizer=optimizer, optimizer_kwargs=kw, loss_fn=CE, max_epochs=15,
                          loggers=None, verbose=False, device="cuda")
    t.fit(train, val_data=val)
    assert type(t.optimizer).__module__.startswith("fasttrain.optim")
    assert all(fg.triton for fg in t.optimizer._flat)
    assert t.validate(val)["val_acc"] >= 0.95  # 0.978 / 0.969 on CPU with these settings


@pytest.mark.parametrize("clip", [None, 1.0])
def test_trainer_cuda_no_host_sync_between_log_points(digits, clip):
    """CUDA's sync detector (torch.cuda.set_sync_debug_mode) warns on every call that waits for the GPU:
    .item(), .cpu(), nonzero, a synchronous copy. The only waits allowed are the log points' reads."""
    train, _ = digits
    steps, log_every = 40, 10
    t = fasttrain.Trainer(digits_mlp(), loss_fn=CE, max_steps=steps, log_every=log_every, clip_grad_norm=clip,
                          loggers=None, verbose=False, device="cuda")
    t.fit(train, val_data=None)  # warm: kernels compiled, buffers allocated, the first-step setup done
    t2 = fasttrain.Trainer(digits_mlp(), loss_fn=CE, max_steps=steps, log_every=log_every, clip_grad_norm=clip,
                           loggers=None, verbose=False, device="cuda")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            t2.fit(train)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    log_points = steps // log_every
    assert len(t2.history) == log_points
    assert len(syncs) <= 2 * log_points + 2, syncs[:5]  # two reads per log point (+ fit's start and end)


SCHEMES = {"int8-dynamic": 33.0, "int8-weight": 38.0, "int4-weight": 15.0}  # as tests/quant (measured on CPU)


def sqnr_db(ref, x):
    return float(20 * torch.log10(ref.norm() / (ref - x).norm()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_quantize_cuda_matches_cpu(scheme, dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(130, 257), nn.GELU(), nn.Linear(257, 64), nn.GELU(), nn.Linear(64, 7)).eval()
    x = torch.randn(33, 130)
    with torch.no_grad():
        ref = net(x)
    gpu_net = copy.deepcopy(net).cuda()
    fasttrain.quant.quantize(net, scheme, group_size=64)
    fasttrain.quant.quantize(gpu_net, scheme, group_size=64)
    with torch.no_grad():
        cpu_out = net(x)
        gpu_out = gpu_net(x.to("cuda", dtype)).float().cpu()
    assert sqnr_db(ref, cpu_out) >= SCHEMES[scheme]
    # fp32: both devices do exact products in fp32 (order differs); low precision rounds the input once
    assert sqnr_db(ref, gpu_out) >= SCHEMES[scheme] - (0 if dtype == torch.float32 else 6)
    if dtype == torch.float32:
        torch.testing.assert_close(gpu_out, cpu_out, rtol=1e-4, atol=1e-4)
    # packed weights are device-independent: the GPU model's state dict loads into a CPU model
    cpu2 = nn.Sequential(nn.Linear(130, 257), nn.GELU(), nn.Linear(257, 64), nn.GELU(), nn.Linear(64, 7)).eval()
    fasttrain.quant.quantize(cpu2, scheme, group_size=64)
    cpu2.load_state_dict({k: v.cpu() for k, v in gpu_net.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(cpu2(x), cpu_out)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_cuda_100_steps_match_torch(amsgrad):
    """The issue's acceptance test on the device: 100 steps with random grads vs torch.optim.AdamW
    (foreach=False, fp32) to 1e-6 relative (plus a tiny absolute floor for entries near zero)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(67, 129), nn.GELU(), nn.Linear(129, 3)).cuda()
    b = copy.deepcopy(a)
    ours = fasttrain.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.1, amsgrad=amsgrad)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.1, amsgrad=amsgrad, foreach=False)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(100):
        for p, q in zip(a.parameters(), b.parameters()):
            grad = torch.randn(p.shape, device="cuda", generator=g)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(grad)
            q.grad = grad.clone()
        ours.step()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_attention_on_cuda_is_sdpa_and_the_gpt_trains():
    """fasttrain.ops.attention hands CUDA tensors to scaled_dot_product_attention; the char-LM GPT
    (which uses it) gets the same loss and gradients on CUDA as the SDPA-configured one."""
    from fasttrain.examples.charlm import GPT, GPTConfig
    from fasttrain.ops import attention

    q, k, v = (torch.randn(2, 3, 40, 16, device="cuda") for _ in range(3))
    assert torch.equal(attention(q, k, v), nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.manual_seed(0)
    a = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)).cuda()
    b = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, attention="torch")).cuda()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 256, (4, 16), device="cuda")
    la, lb = a(idx, idx), b(idx, idx)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
