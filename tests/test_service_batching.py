"""The micro-batcher on its own, deterministically: a batch function gated by an event records every call, and
the batch window runs on a ``ManualClock`` that only moves when the test advances it — no outcome here depends on
how fast the machine is (timeouts only bound a hang).

The batch function here is a stand-in for the model (the batcher is the thing under test); end-to-end batching
with the real model is proven in test_service_api.py through the fer_batch_size metric.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import InferenceError, OverloadedError, ShuttingDownError
from tests.clocks import GATE_TIMEOUT_S, ManualClock

#: Bounds a hang only (a condition that never comes true fails the test after this long).
HANG_S = 30.0


class Recorder:
    """Doubles its input; records each call's size; blocks while ``gate`` is clear (a slow model)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        self.calls.append(len(batch))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("model exploded")
        return batch * 2


def crops(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def run(coro):
    return asyncio.run(coro)


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop (and the batcher's model thread) run until ``condition`` holds."""
    deadline = time.monotonic() + HANG_S
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.001)


def holding_open_batch(batcher: MicroBatcher, clock: ManualClock, crops: int) -> Callable[[], bool]:
    """True once ``crops`` crops are queued and the worker waits on the clock for the batch window to end."""
    return lambda: batcher.pending_crops == crops and clock.waiting == 1


def test_concurrent_submits_share_one_call_and_get_their_own_rows_in_order() -> None:
    async def main() -> None:
        fn, clock = Recorder(), ManualClock()
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.2, max_queue=64, clock=clock)
        batcher.start()
        gathered = asyncio.gather(batcher.submit(crops(1, 2)), batcher.submit(crops(3)), batcher.submit(crops(4, 5, 6)))
        await until(holding_open_batch(batcher, clock, 6))
        assert fn.calls == []
        clock.advance(0.2)  # the window ends
        results = await asyncio.wait_for(gathered, HANG_S)
        await batcher.stop()
        assert fn.calls == [6]
        assert [r.ravel().tolist() for r in results] == [[2, 4], [6], [8, 10, 12]]

    run(main())


def test_batch_closes_when_full_without_waiting_for_the_timeout() -> None:
    async def main() -> None:
        fn = Recorder()
        batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=60.0, max_queue=64, clock=ManualClock())
        batcher.start()
        # the clock never moves: only the size rule can close these batches
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(crops(i)) for i in range(8))), HANG_S)
        await batcher.stop()
        assert fn.calls == [4, 4]
        assert [r.item() for r in results] == [2 * i for i in range(8)]

    run(main())


def test_no_flush_before_the_wait_is_over_then_flush_on_timeout() -> None:
    async def main() -> None:
        fn, clock = Recorder(), ManualClock()
        batcher = MicroBatcher(fn, max_batch_size=32, max_wait_s=0.3, max_queue=64, clock=clock)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(crops(1)))
        await until(holding_open_batch(batcher, clock, 1))
        clock.advance(0.05)
        await until(holding_open_batch(batcher, clock, 1))
        assert fn.calls == [] and not first.done()  # 50 ms into the 300 ms window: nothing ran yet
        second = asyncio.ensure_future(batcher.submit(crops(2)))
        await until(holding_open_batch(batcher, clock, 2))  # joins the open batch; its window is still the first's
        clock.advance(0.249)
        await until(holding_open_batch(batcher, clock, 2))
        assert fn.calls == [] and not first.done() and not second.done()  # 1 ms before the window ends
        clock.advance(0.001)
        await asyncio.wait_for(asyncio.gather(first, second), HANG_S)
        await batcher.stop()
        assert fn.calls == [2]

    run(main())


def test_a_submit_larger_than_the_batch_size_is_split_in_order() -> None:
    async def main() -> None:
        fn = Recorder()
        batcher = MicroBatcher(fn, max_batch_size=3, max_wait_s=0.0, max_queue=64)
        batcher.start()
        result = await batcher.submit(crops(*range(7)))
        await batcher.stop()
        assert fn.calls == [3, 3, 1]
        assert result.ravel().tolist() == [2 * i for i in range(7)]

    run(main())


def test_full_queue_is_refused_at_once_and_counted_in_crops() -> None:
    async def main() -> None:
        fn = Recorder()
        fn.gate.clear()  # the model is stuck on the first batch
        batcher = MicroBatcher(fn, max_batch_size=2, max_wait_s=0.0, max_queue=4)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(crops(1, 2)))
        await until(fn.entered.is_set)
        queued = asyncio.ensure_future(batcher.submit(crops(3, 4, 5)))
        await asyncio.sleep(0)
        assert batcher.pending_crops == 3
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(crops(6, 7))  # 3 + 2 > 4
        assert info.value.headers == {"Retry-After": "1"}
        assert (await batcher.submit(crops())).size == 0  # nothing to do is never refused
        fn.gate.set()
        assert (await running).ravel().tolist() == [2, 4]
        assert (await queued).ravel().tolist() == [6, 8, 10]
        await batcher.stop()

    run(main())


def test_model_error_reaches_every_caller_of_that_batch_and_the_next_batch_works() -> None:
    async def main() -> None:
        fn, clock = Recorder(fail_on=1), ManualClock()
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.05, max_queue=64, clock=clock)
        batcher.start()
        gathered = asyncio.gather(batcher.submit(crops(1)), batcher.submit(crops(2)), return_exceptions=True)
        await until(holding_open_batch(batcher, clock, 2))
        clock.advance(0.05)
        outcomes = await asyncio.wait_for(gathered, HANG_S)
        assert fn.calls == [2]  # both callers were in the failing batch
        assert all(isinstance(o, InferenceError) for o in outcomes)
        assert outcomes[0].code == "inference_failed" and "model exploded" not in outcomes[0].message
        after = asyncio.ensure_future(batcher.submit(crops(3)))
        await until(holding_open_batch(batcher, clock, 1))
        clock.advance(0.05)
        assert (await asyncio.wait_for(after, HANG_S)).item() == 6
        await batcher.stop()

    run(main())


def test_cancelled_submit_is_skipped() -> None:
    async def main() -> None:
        fn = Recorder()
        fn.gate.clear()
        batcher = MicroBatcher(fn, max_batch_size=2, max_wait_s=0.0, max_queue=64)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(crops(1, 2)))
        await until(fn.entered.is_set)
        abandoned = asyncio.ensure_future(batcher.submit(crops(100)))
        kept = asyncio.ensure_future(batcher.submit(crops(3)))
        await asyncio.sleep(0)
        abandoned.cancel()  # the client went away while its crop was queued
        fn.gate.set()
        await running
        assert (await kept).item() == 6
        await batcher.stop()
        assert fn.calls == [2, 1]  # the cancelled crop never reached the model
        assert batcher.pending_crops == 0

    run(main())


def test_stop_finishes_queued_work_then_refuses_new_work() -> None:
    async def main() -> None:
        fn, clock = Recorder(), ManualClock()
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=5.0, max_queue=64, clock=clock)
        batcher.start()
        queued = asyncio.ensure_future(batcher.submit(crops(1, 2)))
        await until(holding_open_batch(batcher, clock, 2))
        await asyncio.wait_for(batcher.stop(), HANG_S)  # the clock never moves: shutdown itself flushes
        assert (await queued).ravel().tolist() == [2, 4]
        with pytest.raises(ShuttingDownError):
            await batcher.submit(crops(3))

    run(main())


def test_stop_fails_what_cannot_finish_in_time() -> None:
    async def main() -> None:
        fn = Recorder()
        fn.gate.clear()
        batcher = MicroBatcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=64)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(crops(1)))
        await until(fn.entered.is_set)
        second = asyncio.ensure_future(batcher.submit(crops(2)))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop(timeout_s=0.2))
        # the model stays stuck until stop has given up on it (its 0.2 s are over and the callers are failed)
        await asyncio.wait_for(asyncio.wait({first, second}), HANG_S)
        fn.gate.set()  # release the stuck model so its thread can end
        await asyncio.wait_for(stopping, HANG_S)
        for abandoned in (first, second):
            with pytest.raises(ShuttingDownError):
                await abandoned

    run(main())
