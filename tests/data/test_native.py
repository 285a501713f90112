"""The native pipeline of Loader/TokenLoader (C++ producer threads filling a ring of batch slots):
same batches as the Python worker-thread pipeline, held batches never overwritten (also when only
autograd holds them), producer errors raised on the consumer, and shutdown without hangs.

Nothing here sleeps: a test that needs the consumer blocked waits on the producer's own condition
(`wait_consumer`), and every wait has a generous bound that only a hang would reach."""

import _thread
import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import fasttrain.data._native as native
from fasttrain.data import Loader, Normalize, RandomCrop, RandomHorizontalFlip, TokenLoader, Widen
from fasttrain.data._native import NativeIter

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]
BOUND_MS = 60_000  # a bound for hangs, not a timing


def dataset(n, hw=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8), "label": np.arange(n, dtype=np.int16)}


def image_tf():
    return {"image": [RandomCrop(6, padding=2), RandomHorizontalFlip(), Normalize(MEAN, STD, channels_first=True)], "label": Widen()}


def batches(loader, epochs=1):
    return [{k: v.clone() for k, v in b.items()} if isinstance(b, dict) else tuple(t.clone() for t in b)
            for _ in range(epochs) for b in loader]


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("prefetch", [1, 3])
def test_native_equals_python_pipeline(threads, prefetch):
    data = dataset(333)
    nat = Loader(data, 32, seed=7, transforms=image_tf(), num_threads=threads, prefetch=prefetch)
    py = Loader(data, 32, seed=7, transforms=image_tf(), num_threads=threads, prefetch=prefetch)
    py._native = False
    assert isinstance(iter(nat), NativeIter) and not isinstance(iter(py), NativeIter)
    a, b = batches(nat, 2), batches(py, 2)  # two epochs, last batch partial
    assert len(a) == len(b) == 22 and all(same(x, y) for x, y in zip(a, b))


def test_token_loader_native_equals_python_pipeline():
    toks = np.random.default_rng(0).integers(0, 50_000, 5_000).astype(np.uint16)
    nat, py = TokenLoader(toks, 16, 7, seed=2, num_threads=2), TokenLoader(toks, 16, 7, seed=2, num_threads=2)
    py._native = False
    a, b = batches(nat, 2), batches(py, 2)
    assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def test_which_sources_are_native(tmp_path):
    pytest.importorskip("numba", reason="batch_transform needs numba (the 'numba' extra)")
    import fasttrain.data as fd

    @fd.batch_transform
    def negate(x):
        for i in range(x.shape[0]):
            x[i] = -x[i]

    data = dataset(20)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(data["image"]))
    assert isinstance(iter(Loader(data, 4, num_threads=1)), NativeIter)
    assert isinstance(iter(Loader(fd.write_records(tmp_path / "d.ftrec", data), 4, num_threads=1)), NativeIter)
    assert isinstance(iter(Loader(data, 4, num_threads=1, transforms={"label": [Widen(), lambda t: t + 1]})), NativeIter)
    assert not isinstance(iter(Loader(ds, 4, num_threads=1)), NativeIter)
    assert not isinstance(iter(Loader(data, 4, num_threads=1, transforms={"image": [Normalize(MEAN, STD), negate]})), NativeIter)


def test_batch_held_only_by_autograd_is_not_overwritten():
    # Gradient accumulation without keeping the batches: autograd's saved inputs are their only
    # holders. Were the slots refilled, w.grad would be computed from later batches' pixels.
    data = dataset(64)
    tf = {"image": Normalize(MEAN, STD), "label": Widen()}
    w = torch.zeros(8, 8, 3, requires_grad=True)
    it = iter(Loader(data, 4, seed=1, transforms=tf, num_threads=1, prefetch=1))  # 3 slots
    # mul saves the batch tensor itself (not a view of it): only its TensorImpl count shows it
    loss = sum((next(it)["image"] * w).sum() for _ in range(10))
    for _ in range(5):  # let the producer run through the ring several times
        next(it)
    loss.backward()
    ref = batches(Loader(data, 4, seed=1, transforms=tf))[:10]
    # Summation order differs from the reference's (fp32 rounding); overwritten pixels would not be close.
    torch.testing.assert_close(w.grad, sum(b["image"].sum(0) for b in ref), rtol=1e-5, atol=1e-4)


def test_detached_and_viewed_batches_are_not_overwritten():
    data = dataset(100)
    it = iter(Loader(data, 5, seed=2, transforms={"image": Normalize(MEAN, STD), "label": Widen()}, num_threads=1, prefetch=1))
    first = next(it)
    det, view, lab = first["image"].detach(), first["image"][2:4], first["label"]
    want = det.clone(), view.clone(), lab.clone()
    del first
    for _ in it:
        pass
    assert torch.equal(det, want[0]) and torch.equal(view, want[1]) and torch.equal(lab, want[2])


def test_without_tensor_use_count_slots_are_never_reused(monkeypatch):
    monkeypatch.setattr(native, "_TENSOR_USE_COUNT", None)
    data = dataset(50)
    held = list(Loader(data, 4, seed=3, num_threads=2))
    assert all(same(a, b) for a, b in zip(held, batches(Loader(data, 4, seed=3))))


def test_steady_state_reuses_the_ring():
    loader = Loader(dataset(400), 10, seed=0, num_threads=1, prefetch=1)
    it = iter(loader)
    ptrs = {t.data_ptr() for t in next(it).values()}
    for b in it:
        ptrs |= {t.data_ptr() for t in b.values()}
        del b
    assert len(ptrs) <= 2 * (1 + 1 + 1 + 1)  # 3 slots (+1 for the batch held by the loop variable) x 2 fields


def test_idiomatic_loop_reuses_the_ring():
    """`for b in loader:` keeps the previous batch alive while next() runs: its slot must be given back
    on the following call, not replaced by fresh buffers every batch."""
    loader = Loader(dataset(400), 10, seed=0, num_threads=1, prefetch=1)
    ptrs, seen = set(), []
    for b in loader:
        ptrs |= {t.data_ptr() for t in b.values()}
        seen.append(b["label"].clone())
    assert len(ptrs) <= 2 * 3  # 3 slots x 2 fields
    assert all(torch.equal(a, w["label"]) for a, w in zip(seen, batches(Loader(dataset(400), 10, seed=0))))


def test_producer_error_reaches_the_consumer_in_order():
    loader = Loader(dataset(100), 10, seed=0, num_threads=2)
    loader._fault = (3, 1)  # filling batch 3 throws std::runtime_error
    it = iter(loader)
    got = [next(it) for _ in range(3)]
    assert len(got) == 3
    with pytest.raises(RuntimeError, match="injected producer fault at batch 3"):
        next(it)
    with pytest.raises(StopIteration):  # the failed pass is over
        next(it)
    assert not any(t.is_alive() for t in it.threads)
    loader._fault = None
    assert loader.state_dict()["batch"] == 3 and len(list(loader)) == 7  # a new pass retries batch 3


def blocked(loader, at=2):
    """An iterator whose producer blocks on batch `at` until stopped, after its first `at` batches."""
    loader._fault = (at, 2)
    it = iter(loader)
    for _ in range(at):
        next(it)
    return it


def test_close_from_another_thread_wakes_a_blocked_consumer():
    loader = Loader(dataset(100), 10, seed=0, num_threads=2)  # threads: small batches default to inline
    it = blocked(loader)

    def closer():
        assert it.run.producer.wait_consumer(BOUND_MS)
        loader.close()

    t = threading.Thread(target=closer)
    t.start()
    with pytest.raises(StopIteration):
        next(it)
    t.join()
    assert not any(th.is_alive() for th in it.threads)


def test_keyboard_interrupt_while_waiting_then_clean_shutdown():
    loader = Loader(dataset(100), 10, seed=0, num_threads=2)  # threads: small batches default to inline
    it = blocked(loader)
    t = threading.Thread(target=lambda: it.run.producer.wait_consumer(BOUND_MS) and _thread.interrupt_main())
    t.start()
    with pytest.raises(KeyboardInterrupt):
        next(it)
    t.join()
    threads = it.threads
    loader.close()  # must not hang on the thread blocked in batch 2
    assert not any(th.is_alive() for th in threads)


def test_deleting_an_iterator_with_a_blocked_producer():
    loader = Loader(dataset(100), 10, seed=0, num_threads=2)  # threads: small batches default to inline
    it = blocked(loader)
    threads = it.threads
    del it
    gc.collect()
    for th in threads:
        th.join(timeout=BOUND_MS / 1000)
    assert not any(th.is_alive() for th in threads)
    loader._fault = None
    assert len(list(loader)) == 8


def test_new_iter_stops_the_previous_pass():
    loader = Loader(dataset(100), 10, seed=0, num_threads=2)  # threads: small batches default to inline
    old = blocked(loader)
    loader._fault = None
    first = next(iter(loader))  # iter() closes the blocked pass first
    assert first["label"].shape == (10,)
    with pytest.raises(StopIteration):
        next(old)


@pytest.mark.parametrize("case", ["mid-epoch", "blocked-producer", "token-loader"])
def test_interpreter_exit_with_live_producer(case, tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from fasttrain.data import Loader, TokenLoader
        data = {{"image": np.zeros((1000, 8, 8, 3), np.uint8), "label": np.arange(1000)}}
        case = {case!r}
        if case == "token-loader":
            loader = TokenLoader(np.arange(100_000, dtype=np.uint16) % 500, 64, 8)
        else:
            loader = Loader(data, 10)
            if case == "blocked-producer":
                loader._fault = (3, 2)
        it = iter(loader)
        for _ in range(3):
            batch = next(it)
        print("ok", flush=True)
        # exit with the iterator, its producer threads and a held batch alive
    """)
    # cwd outside the checkout: the child must import the installed package, not the source folder
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND_MS / 1000,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
