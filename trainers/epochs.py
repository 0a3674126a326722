"""One worker's pair shard, epoch after epoch, and the time the trainer waits for it.

Each ``DataIterator.iter_batches`` call starts a new epoch of Ray Data's streaming split, which
re-executes the read for every worker in lockstep: seconds per epoch boundary, paid at every
optimizer step when a round has few pairs. So when a worker's shard fits ``cache_mb``, epoch 0
streams (and keeps the rows) and later epochs come from memory in a seeded order. Every worker
takes the same decision (``all_agree``), since one worker leaving the streaming split while
another starts an epoch would block that one forever.

A fresh run's first epoch can be started early (``prefetch_first_epoch``): Ray Data's execution and the first reads then
run while the worker builds its model, instead of after it.

Order contract (what makes resume exact): epoch 0 and streamed epochs are Ray's seeded local
shuffle of a ``preserve_order`` split; cached epochs are a permutation, seeded by (seed, epoch),
of the rows sorted by ``pair_id``, which does not depend on the order they arrived in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


def _row_bytes(batch: Batch, i: int) -> int:
    return sum(len(v[i]) for v in batch.values() if len(v) > i and isinstance(v[i], bytes | bytearray))


class EpochFeed:
    def __init__(
        self,
        shard: Any,  # ray.data.DataIterator
        micro_batch_size: int,
        shuffle: bool,
        shuffle_buffer_size: int,
        seed: int,
        cache_mb: float,
        all_agree: Callable[[bool], bool] = lambda ok: ok,
    ) -> None:
        self._shard = shard
        self._micro = micro_batch_size
        self._shuffle = shuffle
        self._buffer = shuffle_buffer_size
        self._seed = seed
        self._budget = cache_mb * 2**20
        self._agree = all_agree
        self._rows: list[dict[str, Any]] | None = [] if cache_mb > 0 else None
        self._cached_bytes = 0
        self._cache_complete = False
        self.wait_s = 0.0  # time blocked waiting for a micro-batch, all epochs
        self.first_wait_s: float | None = None  # the first micro-batch's wait (pipeline start-up)
        self._first_at: float | None = None
        self._prefetch: _Prefetch | None = None

    def prefetch_first_epoch(self) -> None:
        """Start epoch 0's stream now, in a background thread, up to its first micro-batch;
        ``batches(0)`` goes on from there. The pipeline's start-up (Ray Data's execution, the first
        reads) then overlaps whatever the caller does meanwhile (building the model). Not for a
        resumed run: it may start at a later epoch, and a split has one stream at a time."""
        self._prefetch = _Prefetch(self._stream(0))

    @property
    def cached(self) -> bool:
        """Whether epochs now come from memory."""
        return self._cache_complete

    def batches(self, epoch: int) -> Iterator[Batch]:
        """The micro-batches of ``epoch`` (incomplete last micro-batch dropped), timed."""
        if self._prefetch is not None and epoch != 0:
            raise RuntimeError(f"epoch 0 was prefetched but epoch {epoch} was asked for first")
        if epoch > 0 and not self._cache_complete and self._rows is not None:
            # resumed past epoch 0: one pass fills the cache (or finds the shard too big for it)
            t0 = time.perf_counter()
            for _ in self._stream(epoch):
                pass
            self._settle_cache()
            self.wait_s += time.perf_counter() - t0
        if self._prefetch is not None:
            source, self._prefetch = self._prefetch.rest(), None  # waits only what the overlap did not hide
        else:
            source = self._from_cache(epoch) if self._cache_complete else self._stream(epoch)
        yield from self._timed(source)
        if not self._cache_complete:
            self._settle_cache()

    def _stream(self, epoch: int) -> Iterator[Batch]:
        it = self._shard.iter_batches(
            batch_size=self._micro,
            batch_format="numpy",
            drop_last=False,  # the short last batch's rows still belong in the cache
            local_shuffle_buffer_size=self._buffer if self._shuffle else None,
            local_shuffle_seed=(self._seed * 100_003 + epoch) if self._shuffle else None,
        )
        for batch in it:
            if self._rows is not None:  # still caching (else over budget, or cache off)
                self._keep(batch)
            if len(batch["pair_id"]) == self._micro:
                yield batch

    def _keep(self, batch: Batch) -> None:
        n = len(next(iter(batch.values())))
        for i in range(n):
            self._cached_bytes += _row_bytes(batch, i)
            if self._cached_bytes > self._budget:
                self._rows = None  # too big: stream every epoch
                return
            self._rows.append({k: v[i] for k, v in batch.items()})

    def _settle_cache(self) -> None:
        ok = self._agree(self._rows is not None and len(self._rows) > 0)
        if ok:
            self._rows.sort(key=lambda r: str(r["pair_id"]))
            self._cache_complete = True
        else:
            self._rows = None

    def _from_cache(self, epoch: int) -> Iterator[Batch]:
        rows = self._rows
        order = (np.random.default_rng(self._seed * 100_003 + epoch).permutation(len(rows)) if self._shuffle
                 else np.arange(len(rows)))
        for start in range(0, len(order) - self._micro + 1, self._micro):
            chunk = [rows[j] for j in order[start:start + self._micro]]
            batch = {}
            for k in chunk[0]:
                column = np.empty(len(chunk), dtype=object)  # as Ray hands binary / list columns
                for i, r in enumerate(chunk):
                    column[i] = r[k]
                batch[k] = column
            yield batch

    def _timed(self, source: Iterator[Batch]) -> Iterator[Batch]:
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(source)
            except StopIteration:
                self.wait_s += time.perf_counter() - t0  # an epoch's end is waited for too
                return
            waited = time.perf_counter() - t0
            self.wait_s += waited
            if self.first_wait_s is None:
                self.first_wait_s, self._first_at = waited, time.perf_counter()
            yield batch

    def wait_figures(self) -> dict[str, float]:
        """Data wait since the first micro-batch arrived (start-up excluded: it is model-independent
        pipeline warm-up), as seconds and as a fraction of the time since then."""
        if self._first_at is None:
            return {"data_wait_s": 0.0, "data_wait_fraction": 0.0, "first_batch_wait_s": 0.0}
        waited = self.wait_s - self.first_wait_s
        span = max(time.perf_counter() - self._first_at, 1e-9)
        return {"data_wait_s": waited, "data_wait_fraction": waited / span, "first_batch_wait_s": self.first_wait_s}


class _Prefetch:
    """A stream advanced to its first item by a daemon thread; ``rest()`` waits for it, then goes on."""

    def __init__(self, stream: Iterator[Batch]) -> None:
        self._stream = stream
        self._first: Batch | None = None  # None: the stream ended before one micro-batch
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._advance, name="prefetch-epoch-0", daemon=True)
        self._thread.start()

    def _advance(self) -> None:
        try:
            self._first = next(self._stream)
        except StopIteration:
            pass
        except BaseException as e:  # re-raised in the consumer's thread
            self._error = e

    def rest(self) -> Iterator[Batch]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            yield self._first
            yield from self._stream
