"""Checkpoint I/O primitives, each timed interleaved with what it replaces or what a user would use.

- CRC-32C (`fasttrain._C.crc32c`, three interleaved crc32 chains) over 1 MB vs `zlib.crc32` (the
  checksum in Python's standard library) and `hashlib.sha256` (the checkpoint checksum before FTCKPT03).
- Staging the digits Trainer's checkpoint state (1 MB: model, AdamW states, RNG states) into a recycled
  file (the pruned checkpoint, its pages still cached) vs into a new file, on disk (the temp dir) and on
  tmpfs (/dev/shm), each followed by the fsync + rename commit outside the timed part; and `torch.save`
  of the same state to a new file (no fsync) as the anchor a user would write.

    pytest benchmarks/bench_checkpoint_io.py -s
"""

import hashlib
import os
import tempfile
import time
import zlib

import torch

from fasttrain._ext import _C
from fasttrain.bench import interleaved
from fasttrain.train.checkpoint import commit_checkpoint, prune_checkpoints, recycle_path, stage_checkpoint


def _state(n_params: int = 85_000) -> dict:
    g = torch.Generator().manual_seed(0)
    shapes = [(256, 64), (256,), (256, 256), (256,), (10, 256), (10,)]
    model = {f"w{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    opt = {f"s{i}": {"exp_avg": torch.randn(s, generator=g), "exp_avg_sq": torch.rand(s, generator=g),
                     "step": torch.tensor(100.0)} for i, s in enumerate(shapes)}
    return {"model": model, "optimizer": opt, "rng": torch.get_rng_state(), "step": 100}


def test_crc32c_1mb(benchmark, smoke):
    data = os.urandom(1 << 20)
    view = memoryview(data)
    t = interleaved({"crc32c": lambda: _C.crc32c([view]), "zlib_crc32": lambda: zlib.crc32(data),
                     "sha256": lambda: hashlib.sha256(data).digest()}, rounds=1 if smoke else 51, warmup=0 if smoke else 3)
    us = {k: v.median * 1e6 for k, v in t.items()}
    gbs = {k: (1 << 20) / v / 1e3 for k, v in us.items()}
    benchmark.extra_info.update({f"{k}_us": v for k, v in us.items()})
    print(f"\n1 MiB checksum: CRC-32C {us['crc32c']:.1f} us ({gbs['crc32c']:.1f} GB/s), zlib.crc32 {us['zlib_crc32']:.1f} us "
          f"({gbs['zlib_crc32']:.1f} GB/s), SHA-256 {us['sha256']:.1f} us; CRC-32C {us['zlib_crc32'] / us['crc32c']:.2f}x zlib.crc32, "
          f"{us['sha256'] / us['crc32c']:.1f}x SHA-256 (medians of interleaved rounds)")
    benchmark.pedantic(lambda: _C.crc32c([view]), rounds=1, iterations=1)


def test_stage_recycled_vs_new_file(benchmark, smoke):
    state = _state()
    roots = {"disk": tempfile.gettempdir(), "tmpfs": "/dev/shm"}
    roots = {k: v for k, v in roots.items() if os.path.isdir(v)}
    # One directory per configuration: the recycled side's pruned files are its own.
    dirs = {f"{k}_{kind}": tempfile.mkdtemp(dir=v) for k, v in roots.items() for kind in ("recycled", "new", "torch_save")}
    counter = iter(range(10**9))

    def stage(where: str, recycle: bool):
        d = dirs[f"{where}_{'recycled' if recycle else 'new'}"]
        path = os.path.join(d, f"step-{next(counter)}.ckpt")
        staged = stage_checkpoint(path, state, recycle=recycle)
        return lambda: (commit_checkpoint(staged), prune_checkpoints(d, 1, recycle=recycle))

    pending = []

    def timed(where, recycle):
        def run():
            pending.append(stage(where, recycle))
        return run

    def torch_save(where):
        def run():
            p = os.path.join(dirs[f"{where}_torch_save"], f"step-{next(counter)}.pt")
            old = [f for f in os.listdir(dirs[f"{where}_torch_save"]) if f != os.path.basename(p)]
            torch.save(state, p)
            for f in old:  # keep the last one, as prune_checkpoints(keep=1) does for the others
                os.unlink(os.path.join(dirs[f"{where}_torch_save"], f))
        return run

    fns = {}
    for where in roots:
        fns[f"{where}_recycled"] = timed(where, True)
        fns[f"{where}_new"] = timed(where, False)
        fns[f"{where}_torch_save"] = torch_save(where)

    # The commit (fsync, rename, prune) of each staged write runs after its timed part: the Trainer runs
    # it on its writer thread. Each configuration writes to its own directory.
    def flush():
        while pending:
            pending.pop()()

    t = interleaved({k: (lambda f=f: (f(), flush())) for k, f in fns.items()}, rounds=1 if smoke else 31,
                    warmup=0 if smoke else 3)
    # The training-thread part alone: the same rotation, the commit outside the timed span.
    stage_only = {k: [] for k in fns}
    for _ in range(1 if smoke else 31):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            stage_only[k].append(time.perf_counter() - t0)
            flush()
    med = {k: sorted(v)[len(v) // 2] * 1e6 for k, v in stage_only.items()}
    benchmark.extra_info.update({f"{k}_stage_us": v for k, v in med.items()})
    benchmark.extra_info.update({f"{k}_with_commit_us": v.median * 1e6 for k, v in t.items()})
    d0 = next(d for k, d in dirs.items() if k.endswith("_new"))
    nbytes = sum(os.path.getsize(os.path.join(d0, f)) for f in os.listdir(d0) if f.startswith("step-"))
    for where in roots:
        print(f"\n{where}: staging a {nbytes / 1e6:.2f} MB checkpoint (training-thread part): recycled file "
              f"{med[f'{where}_recycled']:.0f} us, new file {med[f'{where}_new']:.0f} us "
              f"({med[f'{where}_new'] / med[f'{where}_recycled']:.2f}x); torch.save to a new file "
              f"{med[f'{where}_torch_save']:.0f} us; with the fsync + rename commit: recycled "
              f"{t[f'{where}_recycled'].median * 1e3:.2f} ms, new {t[f'{where}_new'].median * 1e3:.2f} ms (medians)")
    for d in dirs.values():
        prune_checkpoints(d, 1)  # the end of a run: the parked file goes too
        assert not recycle_path(d).exists()
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
