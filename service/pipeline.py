"""The prediction pipeline: encoded image -> decoded pixels -> face boxes -> crops -> shared model calls -> result.

Decoding, detection and cropping run in worker threads (they release the GIL in OpenCV/TensorFlow), classification
goes through the micro-batcher so crops of all requests in flight share model calls. No FastAPI here: routes call
``Predictor.predict`` / ``predict_many`` and map the dataclasses below to response models.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service import faces as face_ops
from service.batching import MicroBatcher
from service.errors import OverloadedError, ServiceError
from service.images import decode_image
from service.metrics import Metrics
from service.model import LoadedModel


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


@dataclass
class _Prepared:
    """An image after decoding and detection, before classification."""

    width: int
    height: int
    detections: list[face_ops.Detection]
    crops: np.ndarray
    decode_ms: float
    detect_ms: float
    started: float


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Predictor:
    """Runs the pipeline for one model, one detector and one batcher (all owned by the app's lifespan)."""

    def __init__(self, model: LoadedModel, detector: face_ops.FaceDetector, batcher: MicroBatcher,
                 metrics: Metrics, *, max_pixels: int, margin: float, max_pending_images: int | None = None,
                 prepare_threads: int = 1) -> None:
        self.model = model
        self.detector = detector
        self.batcher = batcher
        self.metrics = metrics
        self.max_pixels = max_pixels
        self.margin = margin
        # Admission bound for the whole pipeline. The batcher's queue only bounds crops waiting for the model;
        # decoding and detection (the costly stages for a small model) queue for worker threads, and without this
        # bound an overload would grow that queue, and everyone's latency, without limit.
        self.max_pending_images = max_pending_images
        self.pending_images = 0
        # Decoding and detection run in their own small pool rather than asyncio's default one (cpu_count + 4
        # threads): the default YuNet detector holds the GIL while it runs, so parallel detections do not run
        # faster, and every extra thread waiting for the GIL takes turns away from the event loop, which then
        # cannot even read and refuse (503) new requests under overload.
        self._prepare_pool = ThreadPoolExecutor(max_workers=prepare_threads, thread_name_prefix="prepare")

    def _prepare(self, data: bytes, options: Options) -> _Prepared:
        """Decode, detect and crop (blocking: run in a thread)."""
        started = time.perf_counter()
        image = decode_image(data, max_pixels=self.max_pixels)
        decoded = time.perf_counter()
        if options.detect:
            detections = face_ops.select_faces(self.detector.detect(image), options.max_faces)
        else:
            detections = [face_ops.whole_image(image)]
        meta = self.model.metadata.input
        crops = face_ops.crop_faces(image, [d.box for d in detections], height=meta.height, width=meta.width,
                                    color_mode=meta.color_mode, margin=self.margin if options.detect else 0.0)
        detected = time.perf_counter()
        height, width = image.shape[:2]
        return _Prepared(int(width), int(height), detections, crops, _ms(decoded - started),
                         _ms(detected - decoded), started)

    def _result(self, prepared: _Prepared, probabilities: np.ndarray, infer_ms: float) -> ImageResult:
        labels = self.model.labels
        faces = []
        for detection, row in zip(prepared.detections, probabilities):
            top = int(np.argmax(row))
            faces.append(FaceResult(box=detection.box, score=float(detection.score), emotion=labels[top],
                                    confidence=float(row[top]),
                                    probabilities={label: float(p) for label, p in zip(labels, row)}))
        self.metrics.image_done(len(faces))
        timings = {"decode": prepared.decode_ms, "detect": prepared.detect_ms, "infer": infer_ms,
                   "total": _ms(time.perf_counter() - prepared.started)}
        return ImageResult(prepared.width, prepared.height, faces, timings)

    async def predict(self, data: bytes, options: Options) -> ImageResult:
        """One image's result; raises the ``service.errors`` of decoding and of the batcher."""
        return (await self.predict_many([data], options))[0]

    async def predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        """Results for several images in order; all their crops go to the model together (one submit).

        Any image that fails to decode fails the whole call (the caller maps that to the request's error).
        Raises ``OverloadedError`` at once when ``max_pending_images`` images are already in the pipeline.
        """
        count = len(images)
        if self.max_pending_images is not None and self.pending_images + count > self.max_pending_images:
            raise OverloadedError(f"the service is busy ({self.pending_images} of {self.max_pending_images} images "
                                  "in progress); retry shortly")
        self.pending_images += count  # one event loop: no lock needed
        try:
            return await self._predict_many(images, options)
        finally:
            self.pending_images -= count

    async def _predict_many(self, images: list[bytes], options: Options) -> list[ImageResult]:
        async def prepare(index: int, data: bytes) -> _Prepared:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, self._prepare, data,
                                                                        options)
            except ServiceError as exc:
                exc.image_index = index  # type: ignore[attr-defined]  # lets a batch route name the image
                raise

        prepared = await asyncio.gather(*(prepare(i, data) for i, data in enumerate(images)))
        crops = [p.crops for p in prepared if len(p.crops)]
        started = time.perf_counter()
        rows = await self.batcher.submit(np.concatenate(crops)) if crops else np.empty((0, len(self.model.labels)))
        infer_ms = _ms(time.perf_counter() - started)
        results, offset = [], 0
        for p in prepared:
            count = len(p.detections)
            results.append(self._result(p, rows[offset:offset + count], infer_ms if count else 0.0))
            offset += count
        return results
