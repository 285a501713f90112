"""Loader and TokenLoader: batches gathered and decoded by native threads, in an order that is a pure
function of (seed, epoch, rank, world_size).

Order. Epoch e is a keyed bijection of [0, N) (a Feistel network with cycle walking, see
fasttrain.ops.reference.sample_indices_reference), so the sample at any position is computed in O(1).
Rank r of W takes global positions r, r + W, r + 2W, ...: shards are disjoint and their union is the
epoch. Resuming is therefore O(1): `state_dict()` is (epoch, next batch) plus the settings it must
match, and the next batch is computed directly, no fast-forwarding.

Pipeline. Two implementations, same batches bit for bit:
- native (fasttrain/data/_native.py): record files, dicts/tuples of arrays and TokenLoader, when no
  field has a numba `batch_transform`. `num_threads` C++ std::threads (never holding the GIL) each
  claim the next batch number, compute its indices and run the fused gather + transform pass into a
  ring of prefetch + num_threads + 1 preallocated slots; `next()` only gives the previous slot back,
  waits for the next one with the GIL released and returns aliases of its tensors.
- Python worker threads (below): torch Dataset sources and fields with numba `batch_transform`s.
  `num_threads` worker threads each take the next batch number, compute its indices and run the
  fused C++ pass on it (GIL released), then any numba `batch_transform`s, and wrap the result as
  the batch the user gets; batches are yielded in order.
- inline (num_threads=0, and by default for batches of at most 64 KiB): next() fills the batch itself
  on the calling thread, with the same fused pass; waking a thread costs more than such a batch.
With threads, `prefetch` + num_threads batches wait ready ahead, so a model step slower than loading
never waits: `next()` only hands over a finished batch. Plain Python callables (and the copy to a
device) run on the consumer thread.

Buffer contract. Batches are views of a small pool of preallocated buffers, and a buffer is refilled
only when nothing outside the loader references its memory any more (checked through the storage's
use count: the yielded tensor, any view of it, or autograd's saved copy keeps it alive; the native
ring also checks the Python and TensorImpl references of the tensors it hands out, which it makes
once per slot). So a batch stays valid as long as you hold it; holding many batches just makes the
loader allocate new buffers.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fasttrain._ext import _C
from fasttrain._ext import num_threads as _default_threads
from fasttrain.data._native import NativeIter, _Run
from fasttrain.data.formats import RecordFile, read_tokens
from fasttrain.data.transforms import BatchTransform, Normalize, RandomCrop, RandomHorizontalFlip, Widen
from fasttrain.ops import data as _ops
from fasttrain.ops.reference import _hash3

__all__ = ["Loader", "TokenLoader"]

# Prefetch threads still running, so interpreter exit can stop them between batches: a daemon thread
# killed inside the C++ pass (OpenMP region, GIL released) would abort the process.
_RUNNING: "weakref.WeakKeyDictionary[threading.Thread, threading.Event]" = weakref.WeakKeyDictionary()


@atexit.register
def _stop_all() -> None:
    running = list(_RUNNING.items())
    for _, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join()
    _C.data.stop_all_producers()  # native producers: their threads write into buffers freed at exit


# A worker waiting for the consumer to catch up re-checks after 0.5 ms, doubling up to 4 ms: fast
# enough that the `prefetch` ready batches never run out behind a model step, rare enough to cost
# well under 1% of a core. A consumer that finds no ready batch wakes the workers at once.
_POLL_S = (0.0005, 0.004)

_STATE_KEYS = ("num_samples", "seed", "shuffle", "drop_last", "batch_size", "rank", "world_size")


# Private torch API (used by torch's own cudagraph trees). Older torch builds registered it only with
# CUDA; without it buffers are never reused (always correct, only slower: a fresh allocation per batch).
_STORAGE_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(t: torch.Tensor) -> int:
    return _STORAGE_USE_COUNT(t.untyped_storage()._cdata) if _STORAGE_USE_COUNT is not None else -1


class _Buffers:
    """One set of output buffers (one tensor per field) and the storage use count when unreferenced."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors
        self.ptrs = [t.data_ptr() for t in tensors]
        self.idle = [_use_count(t) for t in tensors]
        self.event = None  # CUDA event of the last host-to-device copy out of these (pinned) buffers
        self.busy = False  # taken by a worker that has not yet made its views

    def free(self) -> bool:
        if _STORAGE_USE_COUNT is None:
            return False
        return all(_use_count(t) == c for t, c in zip(self.tensors, self.idle))


class _Done:
    """A batch finished by a worker (views already wrapped): the consumer returns it as is."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Error:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Shared:
    """State the worker threads share with one iteration (never a strong reference to the iterator)."""

    def __init__(self, epoch: int, start: int, end: int, ahead: int):
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.ready: dict[int, object] = {}
        self.epoch, self.claim, self.consumed, self.end, self.ahead = epoch, start, start, end, ahead
        # A consumer that finds its batch ready never wakes a worker: on a busy 2-core box the woken
        # worker preempted the consumer inside next() (hundreds of us, measured). Workers that are
        # far enough ahead poll instead, with a backoff (_POLL_S), while `prefetch` ready batches
        # cover the delay; a consumer that has to wait anyway wakes them.
        self.consumer_waiting = False


def _worker(ref: weakref.ref, sh: _Shared) -> None:
    """One prefetch worker: claims the next batch number, fills it (C++, GIL released), files it.

    Workers fill whole batches in parallel, one native thread each, instead of splitting one batch
    over an OpenMP team: on a shared, oversubscribed box a team's barrier waits for its slowest,
    descheduled thread, while independent workers just finish later. The iterator is held weakly,
    so abandoning it mid-epoch ends the workers instead of leaving them waiting forever."""
    while True:
        with sh.cond:
            poll = _POLL_S[0]
            while not sh.stop.is_set() and sh.claim < sh.end and sh.claim >= sh.consumed + sh.ahead:
                sh.cond.wait(poll)
                poll = min(2 * poll, _POLL_S[1])
                if ref() is None:
                    return
            if sh.stop.is_set() or sh.claim >= sh.end:
                return
            b = sh.claim
            sh.claim += 1
        it = ref()
        if it is None:
            return
        try:
            item = it.loader._produce(sh.epoch, b)
        except BaseException as e:  # re-raised on the consumer thread
            item = _Error(e)
        del it
        with sh.cond:
            sh.ready[b] = item
            if sh.consumer_waiting:
                sh.cond.notify_all()


class _Iter:
    """One pass over the rest of an epoch. Workers stay at most prefetch + workers batches ahead: with
    only `prefetch` in flight, a worker that finished early idled until the consumer caught up with
    its slower partner, which cost the 2-core box a third of its throughput."""

    def __init__(self, loader: _BaseLoader, epoch: int, start: int):
        self.loader, self.epoch, self.next_b, self.end = loader, epoch, start, len(loader)
        workers = loader._workers()
        self.sh = _Shared(epoch, start, self.end, loader.prefetch + workers)
        self.stop = self.sh.stop
        self.threads = [
            threading.Thread(target=_worker, args=(weakref.ref(self), self.sh), name=f"fasttrain-loader-{i}", daemon=True)
            for i in range(min(workers, max(self.end - start, 0)))
        ]
        for t in self.threads:
            _RUNNING[t] = self.stop
            t.start()

    def __iter__(self):
        return self

    def __next__(self):
        b = self.next_b
        if b >= self.end or self.stop.is_set():
            raise StopIteration
        sh = self.sh
        # Fast path without the lock: workers only add to `ready` and only this thread pops, and a
        # dict operation is atomic under the GIL. This is all a model step slower than loading pays.
        item = sh.ready.pop(b, None)
        if item is None:
            with sh.cond:
                sh.cond.notify_all()  # wake polling workers: this thread waits anyway, so no harm
                while b not in sh.ready:
                    sh.consumer_waiting = True
                    sh.cond.wait()
                    sh.consumer_waiting = False
                item = sh.ready.pop(b)
        sh.consumed = b + 1  # seen by the workers' next poll
        if type(item) is _Error:
            self.close()
            raise item.exc
        self.next_b = b = b + 1
        loader = self.loader
        # Epochs advance by themselves, as the next iter() expects (self.end is len(loader)).
        loader._epoch, loader._batch = (self.epoch + 1, 0) if b >= self.end else (self.epoch, b)
        if type(item) is _Done:  # the common case: nothing left to do on this thread
            return item.value
        return loader._finish(item)

    def close(self) -> None:
        self.stop.set()
        with self.sh.cond:
            self.sh.cond.notify_all()

    def __del__(self):
        self.stop.set()


class _InlineIter:
    """num_threads=0 (and the default for small batches, see _BaseLoader._inline): each batch is filled
    in next() on the calling thread by the same fused pass, so no thread is ever woken. For a batch of a
    few KB the fill takes microseconds, less than one thread hand-off, and on a box whose cores torch's
    OpenMP workers keep busy a woken producer preempts one of them (measured on the digits Trainer: the
    threaded loader made the step up to 15% slower than a DataLoader when the box was loaded)."""

    def __init__(self, loader: _BaseLoader, epoch: int, start: int):
        self.loader, self.epoch, self.next_b, self.end = loader, epoch, start, len(loader)

    def __iter__(self):
        return self

    def __next__(self):
        b = self.next_b
        if b >= self.end:
            raise StopIteration
        loader = self.loader
        item = loader._produce(self.epoch, b)
        self.next_b = b + 1
        loader._epoch, loader._batch = (self.epoch + 1, 0) if b + 1 >= self.end else (self.epoch, b + 1)
        if type(item) is _Done:
            return item.value
        return loader._finish(item)

    def close(self) -> None:
        self.next_b = self.end


# Batches whose output is at most this many bytes are filled inline when num_threads is None.
_INLINE_MAX_BYTES = 64 << 10


class _BaseLoader:
    # False forces the Python worker-thread pipeline (benchmarks and tests compare the two).
    _native = True

    def __init__(self, batch_size, shuffle, seed, drop_last, num_threads, prefetch, pin_memory, device, rank, world_size):
        name = type(self).__name__
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"{name}: batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"{name}: prefetch must be an integer >= 1, got {prefetch!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 0):
            raise ValueError(f"{name}: num_threads must be None or an integer >= 0 (0: fill batches in next() on "
                             f"the calling thread), got {num_threads!r}")
        self.seed = _ops.check_seed(name, "seed", seed)
        if rank is None or world_size is None:
            dist = torch.distributed
            ok = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if ok else 0) if rank is None else rank
            world_size = (dist.get_world_size() if ok else 1) if world_size is None else world_size
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"{name}: need integers 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.batch_size, self.shuffle, self.drop_last = batch_size, bool(shuffle), bool(drop_last)
        self.num_threads, self.prefetch, self.rank, self.world_size = num_threads, prefetch, rank, world_size
        self.device = torch.device(device) if device is not None else None
        cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = cuda if pin_memory is None else bool(pin_memory)
        self._epoch, self._batch = 0, 0
        self._pool: list[_Buffers] = []
        self._running: tuple[_Shared, list[threading.Thread]] | None = None  # the current iteration's workers
        self._pool_lock = threading.Lock()

    # -- order ------------------------------------------------------------------------------
    def _rank_samples(self) -> int:
        n, w, r = self.num_samples, self.world_size, self.rank
        if self.drop_last:  # equal shards, so every rank runs the same number of steps
            return n // w
        return max(0, (n - r + w - 1) // w)

    def __len__(self) -> int:
        c = self._rank_samples()
        return c // self.batch_size if self.drop_last else -(-c // self.batch_size)

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """Sample indices (int64) of batch `batch` of `epoch` on this rank: O(1) per sample."""
        start = batch * self.batch_size
        count = min(self.batch_size, self._rank_samples() - start)
        return _ops.sample_indices(self.num_samples, self.seed, epoch, self.shuffle, self.rank, self.world_size, start, count)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch to iterate (as DistributedSampler.set_epoch). Setting the epoch the
        loader is already in keeps its position, so a resumed loader is not rewound by a training
        loop that calls set_epoch at the top of every epoch."""
        epoch = _ops.check_seed(type(self).__name__, "epoch", epoch)
        if epoch != self._epoch:
            self._epoch, self._batch = epoch, 0

    def state_dict(self) -> dict:
        """Position after the batches yielded so far: {"epoch", "batch"} plus the settings it is valid for."""
        return {"epoch": self._epoch, "batch": self._batch, **{k: getattr(self, k) for k in _STATE_KEYS}}

    def load_state_dict(self, state: Mapping) -> None:
        """Continues exactly where `state` was taken: the next batch is the one an uninterrupted run yields next."""
        name = type(self).__name__
        missing = [k for k in ("epoch", "batch", *_STATE_KEYS) if k not in state]
        if missing:
            raise ValueError(f"{name}.load_state_dict: state is missing {missing}; pass a dict from state_dict()")
        for k in _STATE_KEYS:
            if state[k] != getattr(self, k):
                raise ValueError(f"{name}.load_state_dict: state has {k}={state[k]!r} but this loader has {getattr(self, k)!r}; "
                                 "build the loader with the same data and settings")
        if not 0 <= int(state["batch"]) <= len(self):
            raise ValueError(f"{name}.load_state_dict: batch {state['batch']} is outside [0, {len(self)}]")
        self.close()
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> _Iter | NativeIter | _InlineIter:
        self.close()
        if self._batch >= len(self) > 0:
            self._epoch, self._batch = self._epoch + 1, 0
        if self._inline():
            self._running = None
            return _InlineIter(self, self._epoch, self._batch)
        spec = self._native_spec(self._epoch) if self._native else None
        if spec is not None:
            it = NativeIter(self, self._epoch, self._batch, spec, self._make_buffers, self._finish_native, self._native_wrap())
            self._running = it.run  # not the iterator itself: dropping it stops the producer
            return it
        it = _Iter(self, self._epoch, self._batch)
        self._running = (it.sh, it.threads)  # not the iterator itself: dropping it stops the workers
        return it

    def _native_wrap(self):
        """aliases -> the batch container (dict, or list for a tuple) when no Python work follows, else None."""
        return None

    def _native_spec(self, epoch: int):
        """A ProducerSpec with the order filled in, or None where this loader needs Python worker threads."""
        spec = _C.data.ProducerSpec()
        spec.n, spec.seed, spec.epoch, spec.shuffle = self.num_samples, self.seed, epoch, self.shuffle
        spec.rank, spec.world, spec.batch_size = self.rank, self.world_size, self.batch_size
        spec.rank_samples = self._rank_samples()
        return spec

    def close(self) -> None:
        """Stops the prefetch threads of the current iteration (iter() does this too)."""
        running, self._running = self._running, None
        if isinstance(running, _Run):
            running.close()
        elif running is not None:
            sh, threads = running
            sh.stop.set()
            with sh.cond:
                sh.cond.notify_all()
            for t in threads:
                t.join()

    def _inline(self) -> bool:
        if self.num_threads == 0:
            return True
        nbytes = self._batch_nbytes()
        return self.num_threads is None and nbytes is not None and nbytes <= _INLINE_MAX_BYTES

    def _batch_nbytes(self) -> int | None:
        """Bytes of one batch's output, or None when unknown (a torch Dataset)."""
        return None

    def _threads(self) -> int:
        return self.num_threads or _default_threads()

    def _workers(self) -> int:
        return self._threads()

    def _acquire(self, make: Callable[[], list[torch.Tensor]]) -> _Buffers:
        """A free buffer set, marked busy until _release (after the batch views exist)."""
        with self._pool_lock:
            for b in self._pool:
                # A pinned buffer whose last async copy to the GPU is still running is skipped, not
                # waited for: the native ring calls this on the consumer thread. A fresh pinned
                # allocation instead comes from torch's caching host allocator.
                if not b.busy and b.free() and (b.event is None or b.event.query()):
                    b.busy = True
                    b.event = None
                    break
            else:
                b = None
        if b is not None:
            return b
        b = _Buffers(make())
        b.busy = True
        with self._pool_lock:
            # in flight (prefetch + workers) + held by the consumer: a pool that small would have to
            # allocate (and page-fault) fresh buffers in steady state.
            if len(self._pool) < self.prefetch + self._threads() + 3:
                self._pool.append(b)
        return b

    def _release(self, b: _Buffers) -> None:
        b.busy = False  # the views handed out now hold the storages: free() stays False while they live

    def _empty(self, shape, dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory)

    def _to_device(self, bufs: _Buffers | None, views: list):
        if self.device is None or self.device.type == "cpu":
            return views
        out = [v.to(self.device, non_blocking=self.pin_memory) for v in views]
        if bufs is not None and self.device.type == "cuda":
            bufs.event = torch.cuda.Event()
            bufs.event.record()
        return out


class Loader(_BaseLoader):
    """Batches of a record file, dict/tuple of arrays or torch Dataset, decoded by native threads.

    source: a record file path (fasttrain.data.write_records), a dict {name: (N, ...) array/tensor}
        (yields dicts), a tuple/list of arrays (yields tuples), or a torch Dataset (fallback: its
        batched __getitems__, else per-item indexing, then default_collate, on one loader thread).
    transforms: {field name or tuple position: op or list of ops}: fused ops first (Normalize,
        RandomCrop, RandomHorizontalFlip, Widen), then @batch_transform functions, then Python
        callables. For a Dataset: one callable on each collated batch (consumer thread).
    num_threads: threads each filling whole batches (default: fasttrain._ext.num_threads(), except that
        batches of at most 64 KiB are filled in next() itself): C++ threads that never take the GIL for
        arrays and record files; Python threads (the fused pass still native, GIL released) for a torch
        Dataset or fields with a numba batch_transform. 0: no threads, every batch is filled in next()
        on the calling thread (same batches; nothing is prefetched).
    prefetch: finished batches kept ready ahead of the consumer (each worker also fills one more).
    pin_memory: default True when device is CUDA. device: where batches go.
    rank, world_size: default from torch.distributed when initialised, else 0 and 1.
    Same seed -> the same batches for any num_threads; each epoch has a new order.
    """

    def __init__(self, source, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 transforms=None, num_threads: int | None = None, prefetch: int = 2, pin_memory: bool | None = None,
                 device=None, rank: int | None = None, world_size: int | None = None):
        super().__init__(batch_size, shuffle, seed, drop_last, num_threads, prefetch, pin_memory, device, rank, world_size)
        self._dataset = None
        if isinstance(source, (str, os.PathLike)):
            self._record_file = RecordFile(source)
            arrays, self._as_tuple = dict(self._record_file.fields), False
        elif isinstance(source, Mapping):
            arrays, self._as_tuple = {k: self._array(k, v) for k, v in source.items()}, False
        elif isinstance(source, (tuple, list)):
            arrays, self._as_tuple = {i: self._array(i, v) for i, v in enumerate(source)}, True
        elif isinstance(source, torch.utils.data.Dataset):
            self._dataset, self.num_samples = source, len(source)
            if transforms is not None and not callable(transforms):
                raise TypeError("Loader: for a torch Dataset, transforms must be one callable on each collated batch")
            self._dataset_transform = transforms
            return
        else:
            raise TypeError(f"Loader: source must be a record file path, a dict or tuple of arrays, or a torch Dataset; got {type(source).__name__}")
        if not arrays:
            raise ValueError("Loader: source has no fields")
        lengths = {k: len(a) for k, a in arrays.items()}
        first = next(iter(lengths))
        for k, n in lengths.items():
            if n != lengths[first]:
                raise ValueError(f"Loader: field {k!r} has {n} samples but field {first!r} has {lengths[first]}; all fields need the same length")
        self.num_samples, self._arrays = lengths[first], arrays
        transforms = dict(transforms or {})
        unknown = [k for k in transforms if k not in arrays]
        if unknown:
            raise ValueError(f"Loader: transforms name fields {unknown} that the source lacks; its fields are {list(arrays)}")
        self._plans, self._shapes, self._post, self._python = [], [], [], []
        for salt, (k, a) in enumerate(arrays.items()):
            plan, shape, dtype, post, py = self._compile(k, a, transforms.get(k, []), salt)
            self._plans.append(plan)
            self._shapes.append((shape, dtype))
            self._post.append(post)
            self._python.append(py)
        # Without Python callables or a device copy, the worker hands over the finished batch.
        self._worker_finishes = not any(self._python) and (self.device is None or self.device.type == "cpu")

    @staticmethod
    def _array(name, v) -> np.ndarray:
        if isinstance(v, torch.Tensor):
            if v.device.type != "cpu" or not v.is_contiguous():
                raise ValueError(f"Loader: field {name!r} must be a contiguous CPU tensor; pass x.cpu().contiguous()")
            if v.dtype == torch.bfloat16:
                raise TypeError(f"Loader: field {name!r} is bf16; store it as fp32 or as raw uint16")
            return v.numpy()
        a = np.asarray(v)
        if a.ndim < 1:
            raise ValueError(f"Loader: field {name!r} must have a leading sample dimension")
        return a

    def _compile(self, name, a: np.ndarray, ops, salt: int):
        ops = list(ops) if isinstance(ops, (list, tuple)) else [ops]
        fused = [o for o in ops if isinstance(o, (Normalize, RandomCrop, RandomHorizontalFlip, Widen))]
        post = [o for o in ops if isinstance(o, BatchTransform)]
        py = [o for o in ops if o not in fused and o not in post]
        for o in py:
            if not callable(o):
                raise TypeError(f"Loader: transform {o!r} of field {name!r} is neither a fasttrain transform nor callable")
        if ops != fused + post + py:
            raise ValueError(f"Loader: field {name!r}: list fused transforms first, then batch_transforms, then Python callables")
        kinds = [type(o) for o in fused]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"Loader: field {name!r} has a fused transform twice")
        norm = next((o for o in fused if isinstance(o, Normalize)), None)
        crop = next((o for o in fused if isinstance(o, RandomCrop)), None)
        flip = any(isinstance(o, RandomHorizontalFlip) for o in fused)
        widen = next((o for o in fused if isinstance(o, Widen)), None)
        op = "fasttrain.data.Loader"
        if widen is not None and len(fused) > 1:
            raise ValueError(f"Loader: field {name!r}: Widen cannot be combined with image transforms")
        if (crop is not None or flip) and norm is None:
            raise ValueError(f"Loader: field {name!r}: RandomCrop/RandomHorizontalFlip need a Normalize (the fused kernel crops while converting to float)")
        if norm is not None:
            plan, shape, dtype = _ops.make_plan(op, str(name), a, kind="image", out_dtype=norm.dtype, mean=norm.mean, std=norm.std,
                                                crop=crop.size if crop else None, padding=crop.padding if crop else 0, flip=flip,
                                                channels_first=norm.channels_first, salt=salt)
        elif widen is not None:
            plan, shape, dtype = _ops.make_plan(op, str(name), a, kind="widen", out_dtype=widen.dtype, salt=salt)
        else:
            plan, shape, dtype = _ops.make_plan(op, str(name), a, kind="copy", salt=salt)
        if post and dtype == torch.bfloat16:
            raise TypeError(f"Loader: field {name!r} is bf16, which numba batch_transforms cannot take; use float32 output")
        return plan, shape, dtype, post, py

    def _produce(self, epoch: int, b: int):
        idx = self.indices(epoch, b)
        if self._dataset is not None:
            items = idx.tolist()
            ds = self._dataset
            samples = ds.__getitems__(items) if hasattr(ds, "__getitems__") else [ds[i] for i in items]
            return None, torch.utils.data.default_collate(samples)
        B = self.batch_size
        bufs = self._acquire(lambda: [self._empty((B, *shape), dtype) for shape, dtype in self._shapes])
        try:
            # Our buffers (shapes from the plans) and our sampler's indices: nothing to check per batch.
            _ops.fill_batch_trusted(self._plans, bufs.ptrs, idx, self.seed, epoch, 1)
            views = [t[: len(idx)] for t in bufs.tensors]
        finally:
            self._release(bufs)
        for v, post in zip(views, self._post):
            for fn in post:
                fn(v.numpy())  # nogil numba: runs here, in the loader thread
        if self._worker_finishes:
            return _Done(tuple(views) if self._as_tuple else dict(zip(self._arrays, views)))
        return bufs, views

    def _native_spec(self, epoch: int):
        if self._dataset is not None or any(self._post):
            return None  # torch Datasets and numba batch_transforms run in Python worker threads
        spec = super()._native_spec(epoch)
        spec.plans = self._plans
        return spec

    def _make_buffers(self) -> list[torch.Tensor]:
        return [self._empty((self.batch_size, *shape), dtype) for shape, dtype in self._shapes]

    def _batch_nbytes(self) -> int | None:
        if self._dataset is not None:
            return None
        return sum(self.batch_size * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in self._shapes)

    def _native_wrap(self):
        if not self._worker_finishes:
            return None
        return list if self._as_tuple else (lambda views: dict(zip(self._arrays, views)))

    def _finish_native(self, bufs: _Buffers, views: list):
        if self._worker_finishes:
            return tuple(views) if self._as_tuple else dict(zip(self._arrays, views))
        return self._finish((bufs, views))

    def _workers(self) -> int:
        # A torch Dataset is not necessarily thread-safe: one worker reads it, in order.
        return 1 if self._dataset is not None else self._threads()

    def _finish(self, item):
        bufs, views = item
        if self._dataset is not None:
            return self._dataset_transform(views) if self._dataset_transform else views
        for i, py in enumerate(self._python):
            for fn in py:
                views[i] = fn(views[i])
        views = self._to_device(bufs, views)
        return tuple(views) if self._as_tuple else dict(zip(self._arrays, views))


class TokenLoader(_BaseLoader):
    """Random (x, y) windows of a token file for language-model training: x, y (B, block_size) int64,
    y = x shifted by one token.

    source: a token file (fasttrain.data.write_tokens) or a 1-D integer array/tensor of T tokens.
    Epoch e cuts the tokens into (T - 1) // block_size non-overlapping windows at a per-epoch random
    phase, and visits them in the same keyed order as Loader (same determinism, O(1) resume, rank
    sharding).
    """

    def __init__(self, source, block_size: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 num_threads: int | None = None, prefetch: int = 2, pin_memory: bool | None = None, device=None,
                 rank: int | None = None, world_size: int | None = None):
        super().__init__(batch_size, shuffle, seed, drop_last, num_threads, prefetch, pin_memory, device, rank, world_size)
        if isinstance(source, (str, os.PathLike)):
            tokens = read_tokens(source)
        elif isinstance(source, torch.Tensor):
            tokens = source.contiguous().numpy()
        else:
            tokens = np.ascontiguousarray(source)
        if tokens.ndim != 1 or tokens.dtype not in _ops.INT_CODES:
            raise TypeError(f"TokenLoader: tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"TokenLoader: block_size must be a positive integer, got {block_size!r}")
        if len(tokens) < block_size + 1:
            raise ValueError(f"TokenLoader: {len(tokens)} tokens cannot fill one window of block_size + 1 = {block_size + 1}")
        self.tokens, self.block_size = tokens, block_size
        self.num_samples = (len(tokens) - 1) // block_size
        self._slack = len(tokens) - 1 - self.num_samples * block_size

    def phase(self, epoch: int) -> int:
        """Token offset of window 0 in `epoch`, in [0, (T - 1) % block_size]."""
        return _hash3(self.seed, epoch, 0x70C) % (self._slack + 1)

    def _native_spec(self, epoch: int):
        spec = super()._native_spec(epoch)
        spec.windows, spec.tokens, spec.token_code = True, self.tokens.ctypes.data, _ops.INT_CODES[self.tokens.dtype]
        spec.block, spec.phase = self.block_size, self.phase(epoch)
        return spec

    def _make_buffers(self) -> list[torch.Tensor]:
        return [self._empty((self.batch_size, self.block_size), torch.int64) for _ in range(2)]

    def _batch_nbytes(self) -> int | None:
        return 16 * self.batch_size * self.block_size  # x and y, int64

    def _native_wrap(self):
        return list if self.device is None or self.device.type == "cpu" else None

    def _finish_native(self, bufs: _Buffers, views: list):
        return tuple(self._to_device(bufs, views))

    def _produce(self, epoch: int, b: int):
        starts = self.indices(epoch, b) * self.block_size + self.phase(epoch)
        B, T = self.batch_size, self.block_size
        bufs = self._acquire(lambda: [self._empty((B, T), torch.int64), self._empty((B, T), torch.int64)])
        try:
            _ops.gather_windows(self.tokens, starts, T, bufs.tensors[0], bufs.tensors[1], 1)
            views = [t[: len(starts)] for t in bufs.tensors]
        finally:
            self._release(bufs)
        return bufs, views

    def _finish(self, item):
        bufs, views = item
        return tuple(self._to_device(bufs, views))
