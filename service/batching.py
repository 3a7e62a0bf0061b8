"""An asyncio micro-batcher: face crops from all requests in flight share model calls.

``submit(crops)`` enqueues one request's crops and awaits its rows of the result. One worker task collects a batch:
it waits for the first pending request, then keeps collecting (strictly FIFO) until the batch holds
``max_batch_size`` crops or ``max_wait_s`` has passed since that first request arrived, and runs the model in a
dedicated thread so the event loop keeps accepting and decoding meanwhile. The queue is bounded in crops: a submit
that would overflow it fails at once with ``OverloadedError`` instead of letting latency grow. A cancelled submit
(its request timed out or its client went away) takes its crops out of the queue and the bound at once.

No FastAPI here: the batcher knows numpy arrays, futures and a ``BatchObserver`` for metrics.

The batch window is measured on a ``BatchClock`` (``MonotonicClock``: ``time.monotonic`` and real waiting). It is
the one seam for tests: a test passes a clock that only moves when it says so (tests/clocks.py), so whether a batch
closed by size or by its window never depends on how fast the machine runs the test.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import InferenceError, OverloadedError, ShuttingDownError

log = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]


class BatchObserver(Protocol):
    """Receives the batcher's measurements (``service.metrics.Metrics`` implements it)."""

    def queue_depth(self, crops: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch_done(self, crops: int, seconds: float) -> None: ...


class BatchClock(Protocol):
    """Where the batch window's time comes from."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` seconds of this clock have passed (False)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.wait_for``."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class _NullObserver:
    def queue_depth(self, crops: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch_done(self, crops: int, seconds: float) -> None:
        pass


@dataclass(eq=False)  # compared by identity (the queue removes a withdrawn one)
class _Pending:
    """One submit's crops waiting for the model."""

    crops: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float  #: on the batcher's clock

    @property
    def size(self) -> int:
        return int(self.crops.shape[0])


def _resolve(future: asyncio.Future[np.ndarray], result: np.ndarray) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class MicroBatcher:
    """Gathers crops from concurrent ``submit`` calls into calls of ``fn`` (see the module docstring).

    ``fn`` takes ``(N, ...)`` crops and returns ``(N, ...)`` rows; it runs in a single dedicated thread, so calls
    never overlap. A submit larger than ``max_batch_size`` is split into several consecutive batches. ``clock``
    measures the batch window (default: ``MonotonicClock``; tests pass one they control).
    """

    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        clock: BatchClock | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size or max_wait_s < 0:
            raise ValueError("need max_batch_size >= 1, max_queue >= max_batch_size and max_wait_s >= 0")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._observer = observer or _NullObserver()
        self._clock: BatchClock = clock or MonotonicClock()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_crops = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._running: list[_Pending] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def pending_crops(self) -> int:
        """Crops waiting for a model call (not counting the batch running now)."""
        return self._pending_crops

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def submit(self, crops: np.ndarray) -> np.ndarray:
        """The model's rows for ``crops`` (in order). Raises ``OverloadedError`` at once when the queue is full,
        ``ShuttingDownError`` after ``stop``, ``InferenceError`` when the model call failed."""
        count = int(crops.shape[0])
        if count == 0:
            return np.empty((0,), dtype=np.float32)
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        if self._pending_crops + count > self.max_queue:
            raise OverloadedError(
                f"the inference queue is full ({self._pending_crops} of {self.max_queue} face "
                "crops waiting); retry shortly"
            )
        loop = asyncio.get_running_loop()
        parts = []
        for start in range(0, count, self.max_batch_size):
            item = _Pending(crops[start : start + self.max_batch_size], loop.create_future(), self._clock.now())
            self._pending.append(item)
            parts.append(item)
        self._pending_crops += count
        self._observer.queue_depth(self._pending_crops)
        self._wakeup.set()
        try:
            results = [await item.future for item in parts]
        except asyncio.CancelledError:
            # The caller went away (cancelled, timed out, client gone): what has not run yet leaves the queue and its
            # accounting now, not when the worker next looks at it (it may be blocked in a long model call).
            self._withdraw(parts)
            raise
        return results[0] if len(results) == 1 else np.concatenate(results)

    def _withdraw(self, parts: list[_Pending]) -> None:
        withdrawn = 0
        for item in parts:
            item.future.cancel()
            try:
                self._pending.remove(item)  # (at most max_queue items: cheap, and only on cancellation)
            except ValueError:  # already taken into a batch (or failed by stop): no longer counted
                continue
            withdrawn += item.size
        if withdrawn:
            self._pending_crops -= withdrawn
            self._observer.queue_depth(self._pending_crops)
            self._wakeup.set()  # the worker may be waiting for the head of the queue that just left

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, let the worker finish what is queued (up to ``timeout_s``), then fail the rest."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                self._worker.cancel()
                try:
                    await self._worker
                except asyncio.CancelledError:
                    pass
        error = ShuttingDownError("the service is shutting down")
        for item in self._running:  # a batch abandoned by the timeout
            _fail(item.future, error)
        while self._pending:
            _fail(self._pending.popleft().future, error)
        self._pending_crops = 0
        self._executor.shutdown(wait=False)  # never block the event loop on a stuck model call

    # --- worker -------------------------------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending_crops -= self._pending.popleft().size

    async def _wait_for_batch(self) -> None:
        """Return when the head request's wait is over or a full batch is queued (or on shutdown)."""
        deadline = self._pending[0].enqueued + self.max_wait_s
        while not self._closing:
            if self._pending_crops >= self.max_batch_size:
                return
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return
            self._wakeup.clear()
            if not await self._clock.wait(self._wakeup, remaining):
                return
            self._drop_cancelled()
            if not self._pending:
                return

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        crops = 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # cancelled by its caller
                self._pending.popleft()
                self._pending_crops -= head.size
                continue
            if crops + head.size > self.max_batch_size:
                break
            self._pending.popleft()
            self._pending_crops -= head.size
            batch.append(head)
            crops += head.size
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_batch()
            batch = self._take_batch()
            self._observer.queue_depth(self._pending_crops)
            if not batch:
                continue
            now = self._clock.now()
            for item in batch:
                self._observer.queue_wait(now - item.enqueued)
            crops = batch[0].crops if len(batch) == 1 else np.concatenate([item.crops for item in batch])
            started = time.perf_counter()
            self._running = batch
            try:
                rows = await loop.run_in_executor(self._executor, self._fn, crops)
                if len(rows) != len(crops):
                    raise ValueError(f"the model returned {len(rows)} rows for {len(crops)} crops")
            except Exception as exc:  # every caller of the batch gets the failure; the next batch is unaffected
                log.exception("inference failed on a batch of %d crops", len(crops))
                error = InferenceError(f"inference failed: {type(exc).__name__}")
                for item in batch:
                    _fail(item.future, error)
                self._running = []
                continue
            self._running = []  # (left set when cancelled, so that stop() can fail that batch)
            self._observer.batch_done(len(crops), time.perf_counter() - started)
            offset = 0
            for item in batch:
                _resolve(item.future, rows[offset : offset + item.size])
                offset += item.size
