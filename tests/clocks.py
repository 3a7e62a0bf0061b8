"""Test doubles that take wall-clock time out of the outcome of a test.

``ManualClock`` is a ``service.batching.BatchClock`` whose time only moves when the test calls ``advance``: a batch
window measured on it closes exactly when the test says so, never because the machine was slow. It may be advanced
from another thread than the one running the batcher's event loop (the tests' in-process servers run uvicorn in a
thread).

``GatedRuntime`` wraps a model runtime (``service.model.Runtime``) so that every model call waits while its gate is
closed: while the test holds the gate, requests provably stay in flight (in the model call, or queued behind it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

#: Bounds a hang only: a gate nobody opens fails the model call after this long instead of blocking forever.
GATE_TIMEOUT_S = 120.0


class ManualClock:
    """A batch clock that stands still until ``advance``; waits on it end when their event is set or when
    ``advance`` moves the time past their deadline."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._timers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    @property
    def waiting(self) -> int:
        """How many waits are in progress (a batcher holding an open batch is one)."""
        with self._lock:
            return len(self._timers)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        timer: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if event.is_set():
                return True
            if timeout <= 0:
                return False
            entry = (self._now + timeout, loop, timer)
            self._timers.append(entry)
        waiter: asyncio.Future[Any] = loop.create_task(event.wait())
        try:
            await asyncio.wait([waiter, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with self._lock:
                self._timers.remove(entry)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``; waits whose deadline has come end (on their own event loops)."""
        with self._lock:
            self._now += seconds
            due = [(loop, timer) for deadline, loop, timer in self._timers if deadline <= self._now]
        for loop, timer in due:
            loop.call_soon_threadsafe(_fire, timer)


def _fire(timer: asyncio.Future[None]) -> None:
    if not timer.done():
        timer.set_result(None)


class GatedRuntime:
    """A model runtime whose calls wait while the gate is closed; records every call's size."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"gated {inner.name}"
        self.calls: list[int] = []  #: crops per model call, in call order (recorded when the call starts)
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        """Crops inside a model call that waits at the gate."""
        with self._lock:
            return self._held

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(len(batch))
            self._held += len(batch)
        try:
            if not self._open.wait(GATE_TIMEOUT_S):
                raise RuntimeError("the test never opened the model gate")
        finally:
            with self._lock:
                self._held -= len(batch)
        return np.asarray(self.inner.predict(batch))

    def __getattr__(self, name: str) -> Any:  # everything else (explain, shapes) is the real runtime's
        return getattr(self.inner, name)


@contextmanager
def gated_model(model: Any) -> Iterator[GatedRuntime]:
    """Put a closed gate in front of ``model``'s runtime (a ``service.model.LoadedModel``) for the ``with`` block;
    the gate opens and the real runtime is back when the block ends."""
    gate = GatedRuntime(model.runtime)
    model.runtime = gate
    try:
        yield gate
    finally:
        gate.open()
        model.runtime = gate.inner
