"""fasttrain.ops.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_(foreach=True), same run.

Used by benchmarks/bench_grad_norm.py and by `fasttrain demo`.
"""

from __future__ import annotations

import torch

from fasttrain.bench.timing import interleaved
from fasttrain.bench.workloads import make_grads
from fasttrain.ops import clip_grad_norm_, get_total_norm

__all__ = ["compare_clip_grad_norm"]


def compare_clip_grad_norm(
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype = torch.float32,
    clip: bool = True,
    rounds: int = 15,
    min_seconds: float = 0.0,
    device: str = "cpu",
) -> dict[str, float | str | bool]:
    """Times both implementations interleaved on identical gradient lists.

    clip=True sets max_norm to half the norm, so the call rescales (torch always does; fasttrain
    reads everything once and writes everything once more). A clipped list would not clip again, so
    each timed call first restores the gradients from a pristine copy; that copy is timed on its own
    in the same rounds and its median subtracted. clip=False sets max_norm 10x above the norm:
    fasttrain then only reads, while torch still multiplies every gradient by 1.
    Returns medians (ms), the speedup torch/fasttrain and fasttrain's achieved GB/s.
    """
    ours, theirs = make_grads(shapes, dtype, device=device), make_grads(shapes, dtype, device=device)
    pristine = [p.grad.clone() for p in ours]
    norm = get_total_norm(pristine).item()
    max_norm = norm * (0.5 if clip else 10.0)

    def restore(params):
        if clip:
            torch._foreach_copy_([p.grad for p in params], pristine)

    def run_ours():
        restore(ours)
        clip_grad_norm_(ours, max_norm)

    def run_torch():
        restore(theirs)
        torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)

    fns = {"fasttrain": run_ours, "torch": run_torch}
    if clip:
        fns["restore"] = lambda: restore(ours)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    t = interleaved(fns, rounds=rounds, min_seconds=min_seconds, sync=sync)
    base = t["restore"].median if clip else 0.0
    nbytes = sum(p.numel() for p in ours) * ours[0].element_size()
    moved = 3 * nbytes if clip else nbytes  # norm read (+ scale read and write)
    ft, th = t["fasttrain"].median - base, t["torch"].median - base
    if ft <= 0 or th <= 0:  # on a loaded box the copy's noise can exceed the op's time: no ratio then
        ft = th = float("nan")
    return {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "clip": clip,
        "params": sum(p.numel() for p in ours),
        "tensors": len(ours),
        "fasttrain_ms": ft * 1e3,
        "torch_ms": th * 1e3,
        "speedup": th / ft,
        "gbps": moved / ft / 1e9,
        "torch_gbps": 3 * nbytes / th / 1e9,
    }
