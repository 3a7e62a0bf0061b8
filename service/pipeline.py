"""The prediction pipeline: encoded image -> decoded pixels -> face boxes -> crops -> shared model calls -> result.

Decoding, detection and cropping run in worker processes (`service.prepare`), classification goes through the
micro-batcher so crops of all requests in flight share model calls. No FastAPI here: routes call
``Predictor.predict`` / ``predict_many`` and map the dataclasses below to response models.

Explanations (``Options.explain``): the first ``explain_max_faces`` faces of a call go to a second micro-batcher,
the *explain queue*, whose model calls run the export's ``explain`` signature (probabilities and a Grad-CAM map per
crop); the call's other faces go to the ordinary queue. So explained crops of all requests in flight share model
calls with each other, never with plain ones (the two signatures are different graphs). The explain queue's items
are numpy structured arrays (`explain_input_dtype`: crop + class index per row; `explain_output_dtype`:
probabilities + class + map per row), so the batcher is the same class, unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import cv2
import numpy as np

from service import faces as face_ops
from service.batching import BatchFn, BatchObserver, MicroBatcher
from service.errors import (
    BatchImageError,
    ExplanationsUnavailableError,
    ImageTooLargeError,
    InvalidParameterError,
    OverloadedError,
    ServiceError,
)
from service.images import decoded_bytes
from service.metrics import Metrics
from service.model import EXPLANATIONS_UNAVAILABLE, LoadedModel
from service.prepare import Prepared, PreparePool

T = TypeVar("T")


def rounded_ms(seconds: float) -> float:
    """``seconds`` as milliseconds rounded to microseconds (the unit of the results' ``timings_ms``)."""
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class Options:
    """Per-request choices: detect faces or treat the whole image as one, the most faces to return, and whether
    to explain them (``explain_class``: the label every map explains; None = each face's top class)."""

    detect: bool = True
    max_faces: int = 10
    explain: bool = False
    explain_class: str | None = None


@dataclass(frozen=True)
class Explanation:
    """A face's Grad-CAM map: ``png`` is an 8-bit grayscale PNG of ``width`` x ``height`` (0..255 for 0..1) laid
    over ``window``, the square crop the model saw (the face box plus the margin, in image pixels)."""

    label: str
    window: face_ops.Box
    width: int
    height: int
    png: bytes


@dataclass(frozen=True)
class ExplainSummary:
    """How many of an image's faces were explained, and how many were not because the call's limit was reached."""

    explained: int
    skipped: int
    limit: int


@dataclass
class FaceResult:
    box: face_ops.Box
    score: float
    emotion: str
    confidence: float
    probabilities: dict[str, float]
    explanation: Explanation | None = None


@dataclass
class ImageResult:
    width: int
    height: int
    faces: list[FaceResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    explain: ExplainSummary | None = None


class QueueObserver:
    """The batchers' measurements for the metrics: ``watch(name)`` is one queue's observer; the model-call and
    wait histograms take every queue's, the ``fer_queue_depth`` gauge is the sum of the queues' depths."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._depths: dict[str, int] = {}

    def watch(self, name: str, version: str = "") -> BatchObserver:
        """The observer of queue ``name`` of model version ``version`` (the model-call histograms' label)."""
        return _WatchedQueue(self, name, version)

    def forget(self, name: str, version: str = "") -> None:
        """A stopped queue (an unloaded version's) no longer counts towards ``fer_queue_depth``."""
        self._depth(f"{name}@{version}", 0)
        del self._depths[f"{name}@{version}"]

    def _depth(self, name: str, crops: int) -> None:
        self._depths[name] = crops
        self.metrics.queue_depth(sum(self._depths.values()))


class _WatchedQueue:
    def __init__(self, parent: QueueObserver, name: str, version: str) -> None:
        self._parent, self._name, self._version = parent, f"{name}@{version}", version

    def queue_depth(self, crops: int) -> None:
        self._parent._depth(self._name, crops)

    def queue_wait(self, seconds: float) -> None:
        self._parent.metrics.queue_wait(seconds)

    def batch_done(self, crops: int, seconds: float) -> None:
        self._parent.metrics.batch_done(crops, seconds, self._version)


def explain_input_dtype(model: LoadedModel) -> np.dtype:
    """One row of the explain queue's input: the crop and the class index to explain (-1 = top class)."""
    meta = model.metadata.input
    return np.dtype([("crop", np.uint8, (meta.height, meta.width, meta.channels)), ("class_index", np.int32)])


def explain_output_dtype(model: LoadedModel) -> np.dtype:
    """One row of the explain queue's output: probabilities, the class explained and its map."""
    meta = model.metadata.input
    return np.dtype(
        [
            ("probabilities", np.float32, (len(model.labels),)),
            ("class_index", np.int32),
            ("heatmap", np.float32, (meta.height, meta.width)),
        ]
    )


def explain_rows(model: LoadedModel) -> BatchFn:
    """The explain queue's batch function: structured rows in (`explain_input_dtype`), rows out
    (`explain_output_dtype`), through ``model.explain``."""
    out_dtype = explain_output_dtype(model)

    def run(rows: np.ndarray) -> np.ndarray:
        explained = model.explain(np.ascontiguousarray(rows["crop"]), np.asarray(rows["class_index"]))
        out = np.empty(len(rows), out_dtype)
        out["probabilities"] = explained.probabilities
        out["class_index"] = explained.classes
        out["heatmap"] = explained.heatmaps
        return out

    return run


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """A 0..1 map as an 8-bit grayscale PNG (0..255)."""
    pixels = np.round(np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("could not encode a heatmap as PNG")
    return encoded.tobytes()


async def all_or_none(*steps: Awaitable[T]) -> list[T]:
    """The results of ``steps`` run together, in order; the first to fail cancels the others (a queued detection
    leaves its worker pool's queue, queued crops leave the batcher) and is raised once they have stopped, so nothing
    of a failed request runs on after its admission slot is released (``asyncio.gather`` would let them)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class PixelBudget:
    """The bytes of decoded pixels the images in progress may count together (``max_pixel_bytes_in_flight``), shared
    by every model version (they share the detection workers). A request reserves all of its images' bytes
    (`service.images.decoded_bytes`, read from their headers) before any of them goes to a worker, and gives them
    back when it is done, failed or cancelled. One event loop: no lock."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.bytes = 0

    def reserve(self, size: int) -> None:
        """Reserve ``size`` bytes, or raise: `ImageTooLargeError` (413) when ``size`` alone is over the budget,
        `OverloadedError` (503, Retry-After) when the requests in progress hold too much of it now."""
        if size > self.max_bytes:
            raise ImageTooLargeError(
                f"the images of this request decode to {size} bytes together (declared sizes x bytes per pixel, "
                f"3 or 4); at most {self.max_bytes} bytes are decoded at once (max_pixel_bytes_in_flight): send "
                "fewer or smaller images per request"
            )
        if self.bytes + size > self.max_bytes:
            raise OverloadedError(
                f"the service is busy ({self.bytes} of {self.max_bytes} bytes of decoded pixels in progress); "
                "retry shortly"
            )
        self.bytes += size
        self.metrics.pixel_bytes_in_flight.set(self.bytes)

    def release(self, size: int) -> None:
        self.bytes -= size
        self.metrics.pixel_bytes_in_flight.set(self.bytes)


class Predictor:
    """Runs the pipeline for one model, one detector and one batcher (all owned by the app's lifespan)."""

    def __init__(
        self,
        model: LoadedModel,
        preparer: PreparePool,
        batcher: MicroBatcher,
        metrics: Metrics,
        *,
        max_pending_images: int | None = None,
        explainer: MicroBatcher | None = None,
        explain_max_faces: int = 8,
        pixels: PixelBudget | None = None,
    ) -> None:
        self.model = model
        self.preparer = preparer
        self.batcher = batcher
        self.metrics = metrics
        # The explain queue (None: the export has no explain signature) and the most faces explained per call.
        self.explainer = explainer
        self.explain_max_faces = explain_max_faces
        # Admission bound for the whole pipeline. The batcher's queue only bounds crops waiting for the model;
        # decoding and detection (the costly stages for a small model) queue for the worker processes, and
        # without this bound an overload would grow that queue, and everyone's latency, without limit.
        self.max_pending_images = max_pending_images
        self.pending_images = 0
        # Admission by decoded bytes (None: not bounded): what the images in progress will decode to, so that a
        # few small files declaring huge canvases cannot queue minutes of worker time (docs/reliability.md).
        self.pixels = pixels

    def check_options(self, options: Options) -> None:
        """Refuse options this model or server cannot honour before any work: ``explanations_unavailable`` (no
        explain signature, or explanations turned off) and ``invalid_parameter`` (``explain_class`` not a label)."""
        if options.explain and (self.explainer is None or self.explain_max_faces == 0):
            raise ExplanationsUnavailableError(
                EXPLANATIONS_UNAVAILABLE
                if self.explainer is None
                else "explanations unavailable: this server has them turned off (explain_max_faces=0)"
            )
        if options.explain_class is not None and options.explain_class not in self.model.labels:
            raise InvalidParameterError(
                f"explain_class {options.explain_class!r} is not a label of the model; "
                f"choose one of {', '.join(self.model.labels)}"
            )

    def _explanation(self, prepared: Prepared, face: face_ops.Box, row: np.void, options: Options) -> Explanation:
        margin = self.preparer.spec.margin if options.detect else 0.0
        x0, y0, x1, y1 = face_ops.crop_window(face, prepared.width, prepared.height, margin)
        heatmap = row["heatmap"]
        return Explanation(
            label=self.model.labels[int(row["class_index"])],
            window=face_ops.Box(x0, y0, x1 - x0, y1 - y0),
            width=int(heatmap.shape[1]),
            height=int(heatmap.shape[0]),
            png=heatmap_png(heatmap),
        )

    def _result(
        self,
        prepared: Prepared,
        started: float,
        probabilities: np.ndarray,
        infer_ms: float,
        explained: np.ndarray | None = None,
        options: Options | None = None,
    ) -> ImageResult:
        """``explained``: the explain queue's rows of this image's first faces (the others were not explained)."""
        labels = self.model.labels
        faces = []
        for index, (detection, row) in enumerate(zip(prepared.detections, probabilities, strict=True)):
            top = int(np.argmax(row))
            explanation = None
            if explained is not None and options is not None and index < len(explained):
                explanation = self._explanation(prepared, detection.box, explained[index], options)
            faces.append(
                FaceResult(
                    box=detection.box,
                    score=float(detection.score),
                    emotion=labels[top],
                    confidence=float(row[top]),
                    probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
                    explanation=explanation,
                )
            )
        self.metrics.image_done(len(faces))
        timings = {
            "decode": rounded_ms(prepared.decode_s),
            "detect": rounded_ms(prepared.detect_s),
            "infer": infer_ms,
            "total": rounded_ms(time.perf_counter() - started),
        }
        summary = None
        if explained is not None:
            summary = ExplainSummary(len(explained), len(faces) - len(explained), self.explain_max_faces)
        return ImageResult(prepared.width, prepared.height, faces, timings, summary)

    async def predict(self, data: bytes, options: Options) -> ImageResult:
        """One image's result; raises the ``service.errors`` of decoding and of the batcher."""
        try:
            return (await self.predict_many([data], options))[0]
        except BatchImageError as exc:
            raise exc.error from None  # the only image: its own error says it all

    async def predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        """Results for several images in order; all their crops go to the model together (one submit).

        Any image that fails to decode fails the whole call with a `BatchImageError` naming the image's index; the
        other images' work stops then (`all_or_none`), before the admission slots are given back.
        Before any image goes to a worker, each one's header is read (`service.images.decoded_bytes`: a JPEG whose
        header is unbounded fails here, `InvalidImageError` in a `BatchImageError`) and the call reserves its images'
        decoded bytes in the `PixelBudget`. Raises ``OverloadedError`` at once when ``max_pending_images`` images or
        the budget's bytes are already in the pipeline, ``ImageTooLargeError`` when the images alone are over the
        budget, and the errors of `check_options`.
        """
        self.check_options(options)
        count = len(images)
        size = 0
        if self.pixels is not None:
            max_pixels = self.preparer.spec.max_pixels
            for index, data in enumerate(images):
                try:
                    size += decoded_bytes(data, max_pixels=max_pixels) if data else 0
                except ServiceError as exc:
                    raise BatchImageError(index, exc) from exc
        if self.max_pending_images is not None and self.pending_images + count > self.max_pending_images:
            raise OverloadedError(
                f"the service is busy ({self.pending_images} of {self.max_pending_images} images "
                "in progress); retry shortly"
            )
        if self.pixels is not None:
            self.pixels.reserve(size)
        self.pending_images += count  # one event loop: no lock needed
        try:
            return await self._predict_many(images, options)
        finally:
            self.pending_images -= count
            if self.pixels is not None:
                self.pixels.release(size)

    async def _predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        started = time.perf_counter()

        async def prepare(index: int, data: bytes) -> Prepared:
            try:
                return await self.preparer.prepare(data, options.detect, options.max_faces)
            except ServiceError as exc:
                raise BatchImageError(index, exc) from exc

        prepared = await all_or_none(*(prepare(i, data) for i, data in enumerate(images)))
        parts = [p.crops for p in prepared if len(p.crops)]
        crops = np.concatenate(parts) if parts else np.empty((0,), np.uint8)
        # The first `explaining` faces of the call (in image order, left to right) go to the explain queue.
        explaining = min(len(crops), self.explain_max_faces) if options.explain else 0
        infer_started = time.perf_counter()
        rows, explained = await all_or_none(
            self._classify(crops[explaining:]), self._explain(crops[:explaining], options)
        )
        if explaining:
            rows = np.concatenate([explained["probabilities"], rows]) if len(rows) else explained["probabilities"]
        infer_ms = rounded_ms(time.perf_counter() - infer_started)
        results, offset = [], 0
        for p in prepared:
            count = len(p.detections)
            mine = explained[min(offset, explaining) : min(offset + count, explaining)] if options.explain else None
            results.append(
                self._result(p, started, rows[offset : offset + count], infer_ms if count else 0.0, mine, options)
            )
            offset += count
        return results

    async def _classify(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.empty((0, len(self.model.labels)), np.float32)
        return await self.batcher.submit(crops)

    async def _explain(self, crops: np.ndarray, options: Options) -> np.ndarray:
        """The explain queue's rows (`explain_output_dtype`) for ``crops``."""
        if not len(crops):
            return np.empty((0,), explain_output_dtype(self.model))
        assert self.explainer is not None  # check_options refused explain=True without one
        items = np.empty(len(crops), explain_input_dtype(self.model))
        items["crop"] = crops
        items["class_index"] = -1 if options.explain_class is None else self.model.labels.index(options.explain_class)
        return await self.explainer.submit(items)
