"""The native pipeline of Loader and TokenLoader: C++ threads fill a ring of batch slots, Python only hands them out.

Producer. `fasttrain._C.data.Producer` starts `num_threads` std::threads that never take the GIL:
each claims the next batch number, computes its indices (the same Feistel order as
`Loader.indices`) and runs the fused gather/crop/flip/normalize pass (or the token-window gather)
into slot `b % slots` of a ring of preallocated buffers. With slots = prefetch + num_threads + 1,
`prefetch + num_threads` batches wait ready while the user holds the last one handed out.

Consumer. `next()` (1) gives earlier batches' slots back to the producer (the one handed out last
only once the caller has dropped it, typically by the following call): as it is if nothing
outside the loader references its memory (storage use count back to its idle value, and for a
pinned slot its copy to the GPU finished), else with fresh buffers swapped in, so a held batch is
never overwritten; (2) waits for the batch's slot with the GIL released; (3) returns aliases of the
slot's tensors. The aliases are made per batch (`detach()`, ~0.4 us a field) on purpose: a fresh
TensorImpl is what makes a batch that only autograd still holds visible in the storage use count,
where a view created once per slot would stay alive in the ring anyway and hide it.

Errors raised while filling batch b (a C++ exception) are raised by the `next()` that reaches b,
translated by pybind11 (std::runtime_error -> RuntimeError, std::bad_alloc -> MemoryError, ...).
Shutdown: the iterator's __del__, `loader.close()`, a new `iter()` and interpreter exit (atexit,
`stop_all_producers`) stop the threads after the batch they are filling; a consumer blocked in
`next()` wakes every 50 ms to take Ctrl-C as KeyboardInterrupt.
"""

from __future__ import annotations

import time
import weakref
from sys import getrefcount

import torch

from fasttrain._ext import _C


_TENSOR_USE_COUNT = getattr(torch.Tensor, "_use_count", None)  # private torch API: TensorImpl references


class _Slot:
    """One ring slot: pool buffers plus the batch handed out for every full batch in it.

    The aliases of the buffers, and the batch holding them (`batch`: a dict, or a list handed out
    as a tuple), are made once; next() hands out a shallow copy of `batch`. A batch is still held
    when an alias has more Python references than the ring's own (the user's variables, a dict or
    list), more TensorImpl references (autograd saved it for backward), or its storage more users
    (a view, slice or detach of the batch). Without torch's use-count APIs a fresh alias is made
    per batch and slots are never reused (always safe)."""

    __slots__ = ("bufs", "checks", "storages", "batch")

    def __init__(self, bufs, storage_use_count, wrap):
        self.bufs, self.checks, self.storages, self.batch = bufs, None, None, None
        if _TENSOR_USE_COUNT is None or storage_use_count is None:
            return
        aliases = [t.detach() for t in bufs.tensors]
        self.storages = [t.untyped_storage() for t in bufs.tensors]  # keeps each _cdata address valid
        if wrap is not None:
            self.batch = wrap(aliases)
        self.checks = [(a, st._cdata, storage_use_count, 0, 0, 0) for a, st in zip(aliases, self.storages)]
        del aliases
        self.checks = self._idle()

    def _idle(self) -> list:
        # Counted as free() counts them (no extra reference on the value stack while getrefcount
        # runs, as a tuple display `(a, ..., getrefcount(a))` would hold), so the baselines compare equal.
        out = []
        for a, cd, suc, _, _, _ in self.checks:
            rc, uc, sc = getrefcount(a), a._use_count(), suc(cd)
            out.append((a, cd, suc, rc, uc, sc))
        return out

    def aliases(self) -> list:
        if self.checks is None:
            return [t.detach() for t in self.bufs.tensors]
        return [c[0] for c in self.checks]

    def free(self) -> bool:
        checks = self.checks
        if checks is None:
            return False
        for a, cd, suc, rc, uc, sc in checks:
            if getrefcount(a) != rc or a._use_count() != uc or suc(cd) != sc:
                return False
        ev = self.bufs.event
        if ev is not None:  # pinned slot: its last copy to the GPU must be done
            if not ev.query():
                return False
            self.bufs.event = None
        return True

    def leave(self) -> None:
        """Back to the loader's pool; the pool reuses the buffers once nothing references them."""
        self.checks = self.storages = self.batch = None
        self.bufs.busy = False


class _Run:
    """One pass's producer and slots, shared by the iterator and the loader (which may close it)."""

    def __init__(self, producer, slots):
        self.producer, self.slots, self.closed = producer, slots, False
        self.shared = producer.shared().cast("B").cast("q")  # see csrc/data/producer.h

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.producer.stop()
        self.producer.join()  # GIL released; threads finish their current batch (< 1 ms) and exit
        for s in self.slots:
            s.leave()


class NativeIter:
    """One pass over the rest of an epoch, filled by a native Producer."""

    def __init__(self, loader, epoch: int, start: int, spec, make, finish, wrap=None):
        from fasttrain.data import loader as loader_mod  # its _STORAGE_USE_COUNT may be patched (tests)

        self.loader, self.epoch, self.next_b, self.end = loader, epoch, start, len(loader)
        self._released = start  # the oldest batch whose slot the producer does not have back yet
        # wrap(aliases) -> the batch as handed out (dict, or list made a tuple) when the user gets
        # the slot's tensors themselves (no Python callables, no device copy); else finish().
        self._make, self._finish, self._wrap = make, finish, wrap
        self._suc = loader_mod._STORAGE_USE_COUNT
        self._workers = workers = loader._threads()
        self._n_slots = S = loader.prefetch + workers + 1
        slots = [self._new_slot() for _ in range(S)]
        spec.first, spec.end, spec.slots, spec.threads = start, self.end, S, workers
        fault = getattr(loader, "_fault", None)
        if fault is not None:
            spec.fault_batch, spec.fault_kind = fault
        self._B, self._rank_samples = loader.batch_size, loader._rank_samples()
        self._full_end = self._rank_samples // self._B  # batches below it are full
        producer = _C.data.Producer(spec, [[t.data_ptr() for t in s.bufs.tensors] for s in slots])
        self.run = _Run(producer, slots)
        self.threads = [_ThreadHandle(producer) for _ in range(min(workers, max(self.end - start, 0)))]

    def _new_slot(self) -> _Slot:
        bufs = self.loader._acquire(self._make)  # marked busy: owned by this ring until it leaves
        return _Slot(bufs, self._suc, self._wrap)

    def __iter__(self):
        return self

    def _views(self, b: int) -> tuple:
        slot = self.run.slots[b % self._n_slots]
        n = min(self._B, self._rank_samples - b * self._B)
        if n == self._B:
            return slot.bufs, slot.aliases()
        return slot.bufs, [t[:n] for t in slot.bufs.tensors]

    def __next__(self):
        b = self.next_b
        run = self.run
        if b >= self.end or run.closed:
            raise StopIteration
        S, words = self._n_slots, run.shared
        # Give earlier batches' slots back, in order. The batch handed out last is usually still
        # referenced while this runs (`for x, y in loader:` keeps x, y alive until next() returns), so
        # its slot is only checked again on the following call instead of being swapped for fresh
        # buffers now (an allocation and page faults per batch); production of batch b never needs
        # that slot. A batch held longer than that gets fresh buffers, so it is never overwritten.
        while self._released < b:
            k = self._released
            slot = run.slots[k % S]
            if slot.free():
                words[S] = k + 1  # published: the polling threads may refill it
            elif k == b - 1:
                break
            else:  # the user still holds that batch: the slot gets fresh buffers
                slot.leave()
                run.slots[k % S] = new = self._new_slot()
                run.producer.release(k, [t.data_ptr() for t in new.bufs.tensors])
            self._released = k + 1  # after the release: a KeyboardInterrupt before it only repeats the check
        if words[b % S] != b:  # not ready: wait natively (GIL released), or get its error
            try:
                ready = run.producer.wait(b)
            except KeyboardInterrupt:
                raise  # the pass goes on: next() may be called again
            except BaseException:
                run.close()
                raise
            if not ready:  # stopped by loader.close() (or a new iter()) meanwhile
                raise StopIteration
        elif words[S + 2] and words[S + 1] - b <= self._workers:
            run.producer.kick()  # running low while threads poll for a slot: wake them now
        self.next_b = b + 1
        loader = self.loader
        # Epochs advance by themselves, as the next iter() expects (self.end is len(loader)).
        loader._epoch, loader._batch = (self.epoch + 1, 0) if b + 1 >= self.end else (self.epoch, b + 1)
        batch = run.slots[b % S].batch
        if batch is not None and b < self._full_end:
            return batch.copy() if type(batch) is dict else tuple(batch)
        return self._finish(*self._views(b))

    def close(self) -> None:
        self.run.close()

    def __del__(self):
        run = getattr(self, "run", None)
        if run is not None:
            run.close()

    @property
    def sh(self) -> "_RingView":
        """The ring seen as the Python worker pool's shared state (ready batches by number): introspection for tests."""
        return _RingView(self)


class _ThreadHandle:
    """threading.Thread-like view of the producer's threads (all of them), for introspection and tests."""

    def __init__(self, producer):
        self._producer = producer

    def is_alive(self) -> bool:
        return self._producer.running() > 0

    def join(self, timeout: float | None = None) -> None:
        if timeout is None:
            while not self._producer.wait_exit(1000):
                pass
        else:
            self._producer.wait_exit(int(timeout * 1000))


class _Ready:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _RingCond:
    """Condition-like: wait_for(pred) re-checks pred whenever the producer threads go idle."""

    def __init__(self, producer):
        self._producer = producer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_for(self, predicate, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not predicate():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return False
            if self._producer.wait_idle(int(left * 1000) + 1) and not predicate():
                return False  # every thread waits for a slot: nothing changes until the consumer moves
        return True


class _RingView:
    def __init__(self, it: NativeIter):
        self._it = weakref.ref(it)
        self.cond = _RingCond(it.run.producer)
        self.consumer_waiting = False  # the native producer always notifies a waiting consumer

    @property
    def ready(self) -> dict:
        it = self._it()
        if it is None:
            return {}
        return {b: _Ready(it._finish(*it._views(b))) for b in it.run.producer.ready() if b >= it.next_b}
