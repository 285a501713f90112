"""fasttrain.data.Loader / TokenLoader: coverage of every sample, rank shards, determinism across
thread counts, exact resume, fused transforms against the reference, sources, and bad input."""

import sys

import numpy as np
import pytest
import torch

import fasttrain.data as fd
from fasttrain.data import Loader, Normalize, RandomCrop, RandomHorizontalFlip, TokenLoader, Widen
from fasttrain.ops.reference import gather_normalize_reference

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def dataset(n, seed=0, hw=8):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8), "label": np.arange(n, dtype=np.int16)}


def labels(loader):
    return [b["label"].tolist() for b in loader]


def image_tf(**kw):
    return {"image": [RandomCrop(6, padding=2), RandomHorizontalFlip(), Normalize(MEAN, STD, **kw)], "label": Widen()}


@pytest.mark.parametrize("n,batch", [(1, 1), (7, 3), (1000, 64), (4099, 256)])
def test_each_sample_once_per_epoch(n, batch):
    loader = Loader(dataset(n), batch, seed=3)
    seen = [i for b in labels(loader) for i in b]
    assert len(loader) == -(-n // batch) and sorted(seen) == list(range(n))
    assert seen != list(range(n)) or n < 3  # shuffled


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_shards_are_disjoint_and_complete(world, drop_last):
    n = 1001
    shards = [[i for b in labels(Loader(dataset(n), 32, seed=1, rank=r, world_size=world, drop_last=drop_last)) for i in b] for r in range(world)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))
    if drop_last:  # equal shards of whole batches, so every rank runs the same number of steps
        assert len({len(s) for s in shards}) == 1 and all(len(s) % 32 == 0 for s in shards)
    else:
        assert sorted(flat) == list(range(n))


def test_rank_defaults_from_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    loader = Loader(dataset(10), 2)
    assert (loader.rank, loader.world_size) == (2, 3)


def test_same_seed_same_batches_for_any_thread_count():
    data = dataset(777, hw=16)
    runs = []
    for threads in (1, 2, 4):
        loader = Loader(data, 50, seed=9, transforms=image_tf(channels_first=True), num_threads=threads)
        runs.append([{k: v.clone() for k, v in b.items()} for b in loader])
    for other in runs[1:]:
        assert all(torch.equal(a[k], b[k]) for a, b in zip(runs[0], other) for k in a)


def test_new_epoch_new_order_and_set_epoch():
    loader = Loader(dataset(500), 50, seed=0)
    e0, e1 = labels(loader), labels(loader)  # epochs advance by themselves
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, []))
    loader.set_epoch(0)
    assert labels(loader) == e0
    assert labels(Loader(dataset(500), 50, seed=1)) != e0


def test_fused_transforms_equal_reference():
    data = dataset(300, hw=8)
    loader = Loader(data, 64, seed=4, transforms=image_tf(dtype=torch.bfloat16, channels_first=True))
    loader.set_epoch(2)
    for b, batch in enumerate(loader):
        idx = torch.from_numpy(loader.indices(2, b))
        ref = gather_normalize_reference(torch.from_numpy(data["image"]), idx, torch.tensor(MEAN), torch.tensor(STD),
                                         dtype=torch.bfloat16, crop=(6, 6), padding=2, flip=True, channels_first=True,
                                         seed=4, epoch=2, salt=0)
        assert torch.equal(batch["image"], ref)
        assert batch["label"].dtype == torch.int64 and torch.equal(batch["label"], idx)


@pytest.mark.parametrize("k", [0, 3, 16, 17], ids=["start", "mid-epoch", "epoch-boundary", "next-epoch"])
def test_resume_is_bit_identical(k):
    data = dataset(1000, hw=8)
    make = lambda: Loader(data, 64, seed=5, transforms=image_tf())  # noqa: E731
    ref = make()
    stream = [b for _ in range(3) for b in ref]  # 3 uninterrupted epochs of 16 batches
    first = make()
    it, got = iter(first), []
    for _ in range(k):
        try:
            got.append(next(it))
        except StopIteration:
            it = iter(first)
            got.append(next(it))
    state = first.state_dict()
    assert state["epoch"] == k // 16 and state["batch"] == k % 16
    resumed = make()
    resumed.load_state_dict(state)
    rest = []
    while len(rest) < 48 - k:
        rest.extend(b for b in resumed)
    for a, b in zip(stream[k:], rest):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_set_epoch_after_resume_keeps_position():
    loader = Loader(dataset(100), 10, seed=0)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    resumed = Loader(dataset(100), 10, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # what a training loop does at the top of each epoch
    assert len(list(resumed)) == 8


def test_record_file_tuple_and_dataset_sources(tmp_path):
    data = dataset(200)
    path = fd.write_records(tmp_path / "d.ftrec", data)
    from_dict = [b["image"] for b in Loader(data, 32, seed=2)]
    from_file = [b["image"] for b in Loader(path, 32, seed=2)]
    from_tuple = [b[0] for b in Loader((data["image"], data["label"]), 32, seed=2)]
    ds = torch.utils.data.TensorDataset(torch.from_numpy(data["image"]), torch.from_numpy(data["label"]))
    from_ds = [b[0] for b in Loader(ds, 32, seed=2)]
    for other in (from_file, from_tuple, from_ds):
        assert all(torch.equal(a, b) for a, b in zip(from_dict, other))
    # Fused transforms read the interleaved records of a file (row stride = record size) too.
    a = [b["image"] for b in Loader(data, 32, seed=2, transforms=image_tf())]
    b = [b["image"] for b in Loader(path, 32, seed=2, transforms=image_tf())]
    assert all(torch.equal(p, q) for p, q in zip(a, b))

    class Batched(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitems__(self, idx):
            return [torch.tensor(i) for i in idx]

    got = [b for b in Loader(Batched(), 4, shuffle=False, transforms=lambda b: b * 2)]
    assert torch.cat(got).tolist() == [2 * i for i in range(10)]


def test_held_batch_stays_valid():
    loader = Loader(dataset(400), 20, seed=0, prefetch=1, transforms=image_tf())
    it = iter(loader)
    held = next(it)
    copy = {k: v.clone() for k, v in held.items()}
    view = held["image"][1:3]
    vcopy = view.clone()
    for _ in it:
        pass
    assert all(torch.equal(held[k], copy[k]) for k in copy) and torch.equal(view, vcopy)


@pytest.mark.parametrize("prefetch,threads", [(1, 1), (3, 2)])
def test_workers_run_prefetch_plus_workers_batches_ahead(prefetch, threads):
    # A model step slower than loading finds `prefetch + num_threads` batches finished by the
    # workers (views already wrapped), so next() only hands one over; they equal a fresh run's.
    loader = Loader(dataset(400), 10, seed=3, num_threads=threads, prefetch=prefetch, transforms=image_tf())
    it = iter(loader)
    first = next(it)
    sh = it.sh
    with sh.cond:
        sh.consumer_waiting = True  # ask the workers to notify as they file batches
        assert sh.cond.wait_for(lambda: len(sh.ready) == prefetch + threads, timeout=60)  # a bound, not a timing
        sh.consumer_waiting = False
    assert sorted(sh.ready) == list(range(1, 1 + prefetch + threads))
    assert all(isinstance(item.value, dict) for item in sh.ready.values())
    got = [first] + [next(it) for _ in range(prefetch + threads + 2)]
    ref = Loader(dataset(400), 10, seed=3, num_threads=1, transforms=image_tf())
    for a, b in zip(got, ref):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert loader.state_dict()["batch"] == len(got)


def test_python_callable_and_batch_transform():
    pytest.importorskip("numba", reason="batch_transform needs numba (the 'numba' extra)")

    @fd.batch_transform
    def negate(x):
        for i in range(x.shape[0]):
            x[i] = -x[i]

    tf = {"image": [Normalize(MEAN, STD), negate, lambda t: t * 2], "label": [Widen(), lambda t: t + 1]}
    plain = Loader(dataset(50), 16, seed=1, transforms={"image": Normalize(MEAN, STD), "label": Widen()})
    fancy = Loader(dataset(50), 16, seed=1, transforms=tf)
    for a, b in zip(plain, fancy):
        assert torch.equal(b["image"], -2 * a["image"]) and torch.equal(b["label"], a["label"] + 1)


def test_batch_transform_without_numba_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.raises(ImportError, match=r"pip install 'fasttrain\[numba\]'"):
        fd.batch_transform(lambda x: None)


def test_bad_input_errors():
    data = dataset(10)
    for bs in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            Loader(data, bs)
    with pytest.raises(ValueError, match=r"transforms name fields \['img'\]"):
        Loader(data, 2, transforms={"img": Normalize(0, 1)})
    with pytest.raises(ValueError, match="field 'label' has 9 samples"):
        Loader({"image": data["image"], "label": data["label"][:9]}, 2)
    with pytest.raises(ValueError, match="need a Normalize"):
        Loader(data, 2, transforms={"image": RandomHorizontalFlip()})
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        Loader(data, 2, transforms={"image": Normalize([1, 2], [1, 1])})
    with pytest.raises(TypeError, match="uint8"):
        Loader(data, 2, transforms={"label": Normalize(0, 1)})
    with pytest.raises(ValueError, match="rank"):
        Loader(data, 2, rank=2, world_size=2)
    state = Loader(data, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="state has seed=1 but this loader has 0"):
        Loader(data, 2).load_state_dict(state)
    with pytest.raises(TypeError, match="source must be"):
        Loader(42, 2)


def tokens(n=10_000, seed=0):
    return np.random.default_rng(seed).integers(0, 50_000, n).astype(np.uint16)


def test_token_loader_windows(tmp_path):
    toks = tokens(4099)
    path = fd.write_tokens(tmp_path / "t.fttok", toks)
    loader = TokenLoader(path, block_size=64, batch_size=7, seed=3)
    assert loader.num_samples == 4098 // 64 and len(loader) == -(-64 // 7)
    starts = []
    for epoch in range(2):
        off = loader.phase(epoch)
        for x, y in loader:
            assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 64
            assert torch.equal(x[:, 1:], y[:, :-1])
            for row in x:
                s = row[0].item()
                cand = [i * 64 + off for i in range(loader.num_samples) if toks[i * 64 + off] == s]
                assert any(np.array_equal(toks[c : c + 64], row.numpy()) for c in cand)
                starts.append((epoch, next(c for c in cand if np.array_equal(toks[c : c + 64], row.numpy()))))
    per_epoch = [sorted(s for e, s in starts if e == ep) for ep in range(2)]
    assert all(len(p) == len(set(p)) == loader.num_samples for p in per_epoch)


def test_token_loader_resume_and_shards():
    toks = tokens()
    ref = TokenLoader(toks, 32, 8, seed=1)
    full = [tuple(t.clone() for t in b) for _ in range(2) for b in ref]  # two epochs
    a = TokenLoader(toks, 32, 8, seed=1)
    it = iter(a)
    for _ in range(5):
        next(it)
    b = TokenLoader(toks, 32, 8, seed=1)
    b.load_state_dict(a.state_dict())
    rest = [t for t in b] + [t for t in b]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[5:], rest))
    shards = [torch.cat([x[:, 0] for x, _ in TokenLoader(toks, 32, 8, seed=1, rank=r, world_size=3)]) for r in range(3)]
    allx = torch.cat([x[:, 0] for x, _ in TokenLoader(toks, 32, 8, seed=1)])
    assert sorted(torch.cat(shards).tolist()) == sorted(allx.tolist())
    for nthreads in (1, 4):
        again = [tuple(b) for b in TokenLoader(toks, 32, 8, seed=1, num_threads=nthreads)]
        assert all(torch.equal(p[0], q[0]) for p, q in zip(full, again))


def test_token_loader_errors():
    with pytest.raises(ValueError, match="block_size"):
        TokenLoader(tokens(), 0, 4)
    with pytest.raises(ValueError, match="cannot fill one window"):
        TokenLoader(tokens(10), 10, 4)
    with pytest.raises(ValueError, match="batch_size"):
        TokenLoader(tokens(), 8, 0)


def test_abandoned_iterator_stops_its_thread():
    import gc

    loader = Loader(dataset(1000), 10, seed=0, prefetch=1, num_threads=1)  # small batches default to inline
    it = iter(loader)
    next(it)
    threads = it.threads
    del it
    gc.collect()
    for t in threads:
        t.join(timeout=60)  # a bound, not a timing assertion: waiting workers poll their iterator every few ms
    assert not any(t.is_alive() for t in threads)
    assert loader.state_dict()["batch"] == 1 and len(list(loader)) == 99  # continues where it stopped


def test_worker_error_reaches_the_consumer():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            if i == 5:
                raise KeyError(f"sample {i} is missing")
            return torch.tensor(i)

    loader = Loader(Broken(), 4, shuffle=False)
    it = iter(loader)
    assert next(it).tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="sample 5 is missing"):
        next(it)


def test_without_storage_use_count_buffers_are_never_reused(monkeypatch):
    """Older CPU-only torch builds lack torch._C._storage_Use_Count: the loader must stay correct."""
    import fasttrain.data.loader as loader_mod
    from fasttrain.data import Loader

    monkeypatch.setattr(loader_mod, "_STORAGE_USE_COUNT", None)
    x = torch.arange(40, dtype=torch.float32).view(20, 2)
    held = list(Loader((x,), batch_size=4, shuffle=True, seed=3))
    again = list(Loader((x,), batch_size=4, shuffle=True, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(held, again))
    assert sorted(torch.cat([b[0] for b in held])[:, 0].tolist()) == x[:, 0].tolist()


def test_small_batches_fill_inline_with_the_same_batches():
    """Batches of at most 64 KiB are filled in next() by default (no thread to wake); num_threads=0
    forces it. Same batches as the threaded pipelines, and resume works the same."""
    from fasttrain.data.loader import _InlineIter

    data = dataset(300)
    tf = {"image": Normalize(MEAN, STD), "label": Widen()}
    default = Loader(data, 10, seed=4, transforms=tf)
    assert isinstance(iter(default), _InlineIter)
    threaded = Loader(data, 10, seed=4, transforms=tf, num_threads=2)
    assert not isinstance(iter(threaded), _InlineIter)
    big = Loader(dataset(300, hw=32), 64, seed=4)  # 64 x 3 KiB images: threads
    assert not isinstance(iter(big), _InlineIter)
    ref = [{k: v.clone() for k, v in b.items()} for b in Loader(data, 10, seed=4, transforms=tf, num_threads=2)]
    got = [{k: v.clone() for k, v in b.items()} for b in Loader(data, 10, seed=4, transforms=tf, num_threads=0)]
    assert len(got) == len(ref) == 30
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, ref) for k in a)
    # resume mid-epoch from an inline loader into a threaded one
    inline = Loader(data, 10, seed=4, transforms=tf, num_threads=0)
    it = iter(inline)
    for _ in range(7):
        next(it)
    resumed = Loader(data, 10, seed=4, transforms=tf, num_threads=2)
    resumed.load_state_dict(inline.state_dict())
    rest = [b["label"].clone() for b in resumed]
    assert all(torch.equal(a, b["label"]) for a, b in zip(rest, ref[7:])) and len(rest) == 23
    with pytest.raises(ValueError, match="integer >= 0"):
        Loader(data, 10, num_threads=-1)
