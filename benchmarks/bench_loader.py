"""fasttrain.data.Loader / TokenLoader vs the torch ways of feeding the same data, same run.

Images: 200k in-memory uint8 CIFAR-sized images (32x32x3 = 3072 bytes) + int64 labels, batch 256,
shuffled, normalized to fp32 with per-channel mean/std (smoke: 4k images). Candidates, interleaved
in every round, each consuming `K` batches from an iterator that lives across rounds (steady state,
worker start-up excluded):
  fasttrain        Loader(dict of arrays, transforms={"image": Normalize, "label": Widen}): the native
                   pipeline (C++ producer threads filling a ring of batch slots)
  ft_pythreads     the same Loader forced onto its Python worker-thread pipeline (the one torch
                   Datasets and numba batch_transforms use; before the native producer, the only one)
  dl0 / dl2        torch DataLoader(TensorDataset, batch_size=256, shuffle=True, num_workers=0 / 2), then normalize
  dl_batched       DataLoader with a BatchSampler as sampler (one batched __getitem__ per batch), then normalize
  torch_batched    hand-written: randperm, images[idx], (x.float() - mean) / std
  gather_only      images[idx] alone (no conversion): a floor for any gather-based loader
extra_info: samples/s of each and fasttrain's ratio to each; time to first batch; the time the loop
waits for data (median and mean per batch, both pipelines) when a (simulated, CPU-idle) model step
is slower than loading.
Tokens: TokenLoader (block 1024, batch 32) vs nanoGPT's get_batch (np.memmap + torch.stack of slices)
on a 100M-token file (smoke: 1M).

    pytest benchmarks/bench_loader.py -s -q
"""

import itertools
import time

import numpy as np
import pytest
import torch

from fasttrain.bench import interleaved, memory_bandwidth
from fasttrain.data import Loader, Normalize, TokenLoader, Widen, write_tokens
from fasttrain.ops import gather_normalize
from fasttrain.ops.reference import gather_normalize_reference

MEAN = torch.tensor([125.3, 123.0, 113.9])
STD = torch.tensor([63.0, 62.1, 66.7])
BATCH = 256


def forever(make_iterable):
    """Endless stream over epochs; a DataLoader's workers persist between rounds."""
    return itertools.chain.from_iterable(make_iterable() for _ in itertools.count())


def taker(stream, k, post=None):
    def run():
        for _ in range(k):
            b = next(stream)
            if post is not None:
                post(b)
    return run


def normalize(batch):
    x, _ = batch
    return (x.float() - MEAN) / STD


@pytest.fixture(scope="module")
def images(request):
    smoke = request.config.getoption("benchmark_disable")
    n = 4_096 if smoke else 200_000
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_loader_images(benchmark, smoke, images):
    x, y = images
    n = len(x)
    k, rounds = (4, 1) if smoke else (100, 7)
    tf = {"image": Normalize(MEAN.tolist(), STD.tolist()), "label": Widen()}

    t0 = time.perf_counter()
    first = next(iter(Loader({"image": x, "label": y}, BATCH, seed=0, transforms=tf)))
    ttfb = time.perf_counter() - t0
    # Guard: the timed loader must produce what the reference computes for the same indices.
    idx = torch.from_numpy(Loader({"image": x, "label": y}, BATCH).indices(0, 0))
    assert torch.equal(first["image"], gather_normalize_reference(x, idx, MEAN, STD))
    assert torch.equal(first["image"], gather_normalize(x, idx, MEAN, STD))

    ds = torch.utils.data.TensorDataset(x, y)
    ft = Loader({"image": x, "label": y}, BATCH, seed=0, transforms=tf)
    ft_py = Loader({"image": x, "label": y}, BATCH, seed=0, transforms=tf)
    ft_py._native = False
    dl0 = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)
    dl2 = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), BATCH, drop_last=False)
    dlb = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None)

    def hand_written():
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            yield (x[idx].float() - MEAN) / STD, y[idx]

    def gather_only():
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            yield x[idx], y[idx]

    fns = {
        "fasttrain": taker(forever(lambda: ft), k),
        "ft_pythreads": taker(forever(lambda: ft_py), k),
        "dl0": taker(forever(lambda: dl0), k, normalize),
        "dl2": taker(forever(lambda: dl2), k, normalize),
        "dl_batched": taker(forever(lambda: dlb), k, normalize),
        "torch_batched": taker(forever(hand_written), k),
        "gather_only": taker(forever(gather_only), k),
    }
    t = interleaved(fns, rounds=rounds, warmup=1)
    sps = {name: k * BATCH / t[name].median for name in fns}
    result = {f"{name}_samples_per_s": v for name, v in sps.items()}
    result.update({f"speedup_vs_{name}": sps["fasttrain"] / v for name, v in sps.items() if name != "fasttrain"})
    result["time_to_first_batch_s"] = ttfb
    # Bytes moved per sample: read 3072 image bytes + an 8-byte label, write 3072 fp32 + an int64 label.
    result["fasttrain_gbps"] = sps["fasttrain"] * (3072 + 8 + 3072 * 4 + 8) / 1e9
    result.update(memory_bandwidth(nbytes=(8 << 20) if smoke else (256 << 20), rounds=1 if smoke else 5))

    # Overlap: a model step slower than loading (sleep: the CPU is idle, as while a GPU computes).
    # Both pipelines, alternating batch by batch, so load drift hits them alike.
    step = 3 * k * BATCH / sps["fasttrain"] / k
    its, waits = {}, {"native": [], "pythreads": []}
    for name in waits:
        loader = Loader({"image": x, "label": y}, BATCH, seed=1, transforms=tf)
        loader._native = name == "native"
        its[name] = iter(loader)
        next(its[name])
    for _ in range(min(k, len(ft) - 1)):
        for name, it in its.items():
            time.sleep(step)
            w0 = time.perf_counter()
            next(it)
            waits[name].append(time.perf_counter() - w0)
    result["overlap_step_s"] = step
    for name, w in waits.items():
        result[f"overlap_wait_{name}_median_s"] = float(np.median(w))
        result[f"overlap_wait_{name}_mean_s"] = float(np.mean(w))
    result["overlap_wait_per_batch_s"] = result["overlap_wait_native_mean_s"]
    benchmark.extra_info.update(result)
    print("\nimages, batch 256, shuffled, fp32 normalize: samples/s " + ", ".join(f"{n}: {v:,.0f}" for n, v in sps.items()))
    print("fasttrain speedup: " + ", ".join(f"vs {n} {sps['fasttrain'] / v:.2f}x" for n, v in sps.items() if n != "fasttrain"))
    print(f"fasttrain moves {result['fasttrain_gbps']:.1f} GB/s (box: copy {result['copy_gbps']:.1f} GB/s, same run)")
    print(f"time to first batch {ttfb * 1e3:.1f} ms; with a {step * 1e3:.2f} ms model step the loop waits per batch "
          + ", ".join(f"{name} median {result[f'overlap_wait_{name}_median_s'] * 1e6:.0f} us mean {result[f'overlap_wait_{name}_mean_s'] * 1e6:.0f} us"
                      for name in waits))
    benchmark.pedantic(fns["fasttrain"], rounds=1 if smoke else 3, iterations=1)


def test_token_loader(benchmark, smoke, tmp_path_factory):
    n_tokens, block, batch = (1_000_000, 1024, 32) if smoke else (100_000_000, 1024, 32)
    k, rounds = (4, 1) if smoke else (50, 7)
    path = tmp_path_factory.mktemp("tok") / "tokens.fttok"
    write_tokens(path, np.random.default_rng(0).integers(0, 50_257, n_tokens, dtype=np.uint16), dtype=np.uint16)
    raw = path.parent / "tokens.bin"  # nanoGPT's format: the raw uint16 array
    from fasttrain.data import read_tokens

    read_tokens(path).tofile(raw)

    def nanogpt_get_batch():
        # nanoGPT train.py: recreate the memmap every batch (avoids a memory leak), stack slices.
        data = np.memmap(raw, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        return x, y

    loader = TokenLoader(path, block, batch, seed=0)
    x, y = next(iter(loader))
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = forever(lambda: loader)
    fns = {"fasttrain": taker(stream, k), "nanogpt": lambda: [nanogpt_get_batch() for _ in range(k)]}
    t = interleaved(fns, rounds=rounds, warmup=1)
    sps = {name: k * batch / t[name].median for name in fns}
    result = {"fasttrain_samples_per_s": sps["fasttrain"], "nanogpt_samples_per_s": sps["nanogpt"], "speedup": sps["fasttrain"] / sps["nanogpt"],
              "fasttrain_gbps": sps["fasttrain"] * block * (2 * 2 + 2 * 8) / 1e9}  # read x and y as uint16, write int64
    benchmark.extra_info.update(result)
    print(f"\ntokens, block {block}, batch {batch}: fasttrain {sps['fasttrain']:,.0f} samples/s, nanoGPT get_batch "
          f"{sps['nanogpt']:,.0f} samples/s, speedup {result['speedup']:.2f}x")
    benchmark.pedantic(fns["fasttrain"], rounds=1 if smoke else 3, iterations=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the pinned ring and async copies)")
def test_loader_images_cuda(benchmark, smoke, images):
    """The image workload delivered to a CUDA device, normalized, same run. fasttrain: Loader(device="cuda")
    (native threads gather + normalize into pinned buffers, asynchronous copy; fp32 and bf16 output). The
    torch ways ship uint8 and normalize on the GPU (a quarter of the bytes over PCIe): DataLoader with
    pin_memory=True (0 and 2 workers) and a hand-written batched gather into pinned memory. Each candidate
    consumes k batches per round; the round ends with a device synchronize."""
    x, y = images
    n = len(x)
    k, rounds = (4, 1) if smoke else (100, 7)
    dev = torch.device("cuda")
    mean, std = MEAN.to(dev), STD.to(dev)
    tf = {"image": Normalize(MEAN.tolist(), STD.tolist()), "label": Widen()}
    tf16 = {"image": Normalize(MEAN.tolist(), STD.tolist(), dtype=torch.bfloat16), "label": Widen()}
    ft = Loader({"image": x, "label": y}, BATCH, seed=0, transforms=tf, device=dev)
    ft16 = Loader({"image": x, "label": y}, BATCH, seed=0, transforms=tf16, device=dev)
    first = next(iter(ft))
    idx = torch.from_numpy(ft.indices(0, 0))
    assert first["image"].device.type == "cuda"
    assert torch.equal(first["image"].cpu(), gather_normalize_reference(x, idx, MEAN, STD))
    ds = torch.utils.data.TensorDataset(x, y)
    dl0 = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, pin_memory=True)
    dl2 = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, pin_memory=True,
                                      persistent_workers=True)

    def on_gpu(batch):  # the torch way: uint8 over PCIe, normalize on the device
        xb, yb = batch
        return (xb.to(dev, non_blocking=True).float() - mean) / std, yb.to(dev, non_blocking=True)

    def hand_written():
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            j = perm[i : i + BATCH]
            yield x[j].pin_memory(), y[j].pin_memory()

    fns = {
        "fasttrain": taker(forever(lambda: ft), k),
        "fasttrain_bf16": taker(forever(lambda: ft16), k),
        "dl0_pinned": taker(forever(lambda: dl0), k, on_gpu),
        "dl2_pinned": taker(forever(lambda: dl2), k, on_gpu),
        "hand_written_pinned": taker(forever(hand_written), k, on_gpu),
    }
    t = interleaved(fns, rounds=rounds, warmup=1, sync=torch.cuda.synchronize)
    sps = {name: k * BATCH / t[name].median for name in fns}
    result = {"device": torch.cuda.get_device_name(), **{f"{name}_samples_per_s": v for name, v in sps.items()}}
    result.update({f"speedup_vs_{name}": sps["fasttrain"] / v for name, v in sps.items() if name != "fasttrain"})
    benchmark.extra_info.update(result)
    print(f"\nimages to {result['device']}, batch 256, normalized: samples/s "
          + ", ".join(f"{name}: {v:,.0f}" for name, v in sps.items()))
    print("fasttrain speedup: " + ", ".join(f"vs {name} {sps['fasttrain'] / v:.2f}x" for name, v in sps.items()
                                            if name != "fasttrain"))
    benchmark.pedantic(fns["fasttrain"], rounds=1 if smoke else 3, iterations=1)
