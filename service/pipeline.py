"""The prediction pipeline: encoded image -> decoded pixels -> face boxes -> crops -> shared model calls -> result.

Decoding, detection and cropping run in worker processes (`service.prepare`), classification goes through the
micro-batcher so crops of all requests in flight share model calls. No FastAPI here: routes call
``Predictor.predict`` / ``predict_many`` and map the dataclasses below to response models.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from service import faces as face_ops
from service.batching import MicroBatcher
from service.errors import BatchImageError, OverloadedError, ServiceError
from service.metrics import Metrics
from service.model import LoadedModel
from service.prepare import Prepared, PreparePool


def rounded_ms(seconds: float) -> float:
    """``seconds`` as milliseconds rounded to microseconds (the unit of the results' ``timings_ms``)."""
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class Options:
    """Per-request choices: detect faces or treat the whole image as one, and the most faces to return."""

    detect: bool = True
    max_faces: int = 10


@dataclass
class FaceResult:
    box: face_ops.Box
    score: float
    emotion: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class ImageResult:
    width: int
    height: int
    faces: list[FaceResult]
    timings_ms: dict[str, float] = field(default_factory=dict)


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
    ) -> None:
        self.model = model
        self.preparer = preparer
        self.batcher = batcher
        self.metrics = metrics
        # Admission bound for the whole pipeline. The batcher's queue only bounds crops waiting for the model;
        # decoding and detection (the costly stages for a small model) queue for the worker processes, and
        # without this bound an overload would grow that queue, and everyone's latency, without limit.
        self.max_pending_images = max_pending_images
        self.pending_images = 0

    def _result(self, prepared: Prepared, started: float, probabilities: np.ndarray, infer_ms: float) -> ImageResult:
        labels = self.model.labels
        faces = []
        for detection, row in zip(prepared.detections, probabilities, strict=True):
            top = int(np.argmax(row))
            faces.append(
                FaceResult(
                    box=detection.box,
                    score=float(detection.score),
                    emotion=labels[top],
                    confidence=float(row[top]),
                    probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
                )
            )
        self.metrics.image_done(len(faces))
        timings = {
            "decode": rounded_ms(prepared.decode_s),
            "detect": rounded_ms(prepared.detect_s),
            "infer": infer_ms,
            "total": rounded_ms(time.perf_counter() - started),
        }
        return ImageResult(prepared.width, prepared.height, faces, timings)

    async def predict(self, data: bytes, options: Options) -> ImageResult:
        """One image's result; raises the ``service.errors`` of decoding and of the batcher."""
        try:
            return (await self.predict_many([data], options))[0]
        except BatchImageError as exc:
            raise exc.error from None  # the only image: its own error says it all

    async def predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        """Results for several images in order; all their crops go to the model together (one submit).

        Any image that fails to decode fails the whole call with a `BatchImageError` naming the image's index.
        Raises ``OverloadedError`` at once when ``max_pending_images`` images are already in the pipeline.
        """
        count = len(images)
        if self.max_pending_images is not None and self.pending_images + count > self.max_pending_images:
            raise OverloadedError(
                f"the service is busy ({self.pending_images} of {self.max_pending_images} images "
                "in progress); retry shortly"
            )
        self.pending_images += count  # one event loop: no lock needed
        try:
            return await self._predict_many(images, options)
        finally:
            self.pending_images -= count

    async def _predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        started = time.perf_counter()

        async def prepare(index: int, data: bytes) -> Prepared:
            try:
                return await self.preparer.prepare(data, options.detect, options.max_faces)
            except ServiceError as exc:
                raise BatchImageError(index, exc) from exc

        prepared = await asyncio.gather(*(prepare(i, data) for i, data in enumerate(images)))
        crops = [p.crops for p in prepared if len(p.crops)]
        infer_started = time.perf_counter()
        rows = await self.batcher.submit(np.concatenate(crops)) if crops else np.empty((0, len(self.model.labels)))
        infer_ms = rounded_ms(time.perf_counter() - infer_started)
        results, offset = [], 0
        for p in prepared:
            count = len(p.detections)
            results.append(self._result(p, started, rows[offset : offset + count], infer_ms if count else 0.0))
            offset += count
        return results
