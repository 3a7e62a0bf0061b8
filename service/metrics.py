"""Every Prometheus metric of the service, in one registry per app (so tests can run several apps).

Naming follows Prometheus conventions: one ``fer_`` prefix, base units (seconds), ``_total`` counters. The
``route`` label is the route template (``/predict``), never the raw path, so its cardinality stays bounded.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FACE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)


class Metrics:
    """The service's metrics; also the ``BatchObserver`` of the micro-batcher."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "fer_http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.http_duration = Histogram(
            "fer_http_request_duration_seconds",
            "HTTP request latency.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "fer_inference_duration_seconds",
            "Duration of one model call, by model version.",
            ["version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "fer_batch_size",
            "Face crops per model call, by model version.",
            ["version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth_gauge = Gauge("fer_queue_depth", "Face crops waiting for the model.", registry=r)
        self.queue_wait_seconds = Histogram(
            "fer_queue_wait_seconds",
            "Time a request's crops waited for their model call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.faces_per_image = Histogram(
            "fer_faces_per_image", "Faces found per image.", buckets=_FACE_BUCKETS, registry=r
        )
        self.images_without_face = Counter("fer_images_without_face", "Images in which no face was found.", registry=r)
        self.rejected_total = Counter("fer_rejected", "Requests or frames refused, by reason.", ["reason"], registry=r)
        self.websocket_connections = Gauge("fer_websocket_connections", "Open /ws/stream connections.", registry=r)
        self.websocket_frames_dropped = Counter(
            "fer_websocket_frames_dropped",
            "Stream frames replaced by a newer one before they were processed.",
            registry=r,
        )
        self.bodies_in_flight = Gauge(
            "fer_request_bodies_in_flight", "Request bodies admitted and not yet answered.", registry=r
        )
        self.body_bytes_in_flight = Gauge(
            "fer_request_body_bytes_in_flight",
            "Bytes reserved by the request bodies in flight (declared length, or the route's limit).",
            registry=r,
        )
        self.pixel_bytes_in_flight = Gauge(
            "fer_pixel_bytes_in_flight",
            "Bytes of decoded pixels reserved by the images in progress (declared size x 3 or 4 bytes a pixel).",
            registry=r,
        )
        self.model_load_seconds = Gauge("fer_model_load_seconds", "Time to load and validate the model.", registry=r)
        self.model_info = Info("fer_model", "The model being served (its default version).", registry=r)
        self.model_loads = Counter(
            "fer_model_loads", "Model version loads, by result (loaded, failed).", ["result"], registry=r
        )
        for result in ("loaded", "failed"):  # exported at 0 from the start: increase() then sees the first failure
            self.model_loads.labels(result=result)
        self.model_version_ready = Gauge(
            "fer_model_version_ready", "1 for each model version loaded and ready.", ["version"], registry=r
        )
        self.prepare_pool_restarts = Counter(
            "fer_prepare_pool_restarts",
            "Replacements of the face detection worker pool, by reason (recycled, crashed).",
            ["reason"],
            registry=r,
        )

    # --- BatchObserver -------------------------------------------------------------------------------------------

    def queue_depth(self, crops: int) -> None:
        self.queue_depth_gauge.set(crops)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def batch_done(self, crops: int, seconds: float, version: str = "") -> None:
        self.batch_size.labels(version=version).observe(crops)
        self.inference_duration.labels(version=version).observe(seconds)

    def rejected(self, reason: str) -> None:
        self.rejected_total.labels(reason=reason).inc()

    # --- the rest ------------------------------------------------------------------------------------------------

    def image_done(self, faces: int) -> None:
        self.faces_per_image.observe(faces)
        if faces == 0:
            self.images_without_face.inc()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.http_duration.labels(route=route, method=method).observe(seconds)

    def model_loaded(self, name: str, version: str, seconds: float) -> None:
        self.model_load_seconds.set(seconds)
        self.model_info.info({"name": name, "version": version})

    # --- RegistryObserver (service/registry.py) -------------------------------------------------------------------

    def version_loaded(self, name: str, version: str, seconds: float) -> None:
        self.model_loads.labels(result="loaded").inc()
        self.model_load_seconds.set(seconds)
        self.model_version_ready.labels(version=version).set(1)

    def version_load_failed(self, version: str) -> None:
        self.model_loads.labels(result="failed").inc()

    def version_unloaded(self, version: str) -> None:
        with contextlib.suppress(KeyError):
            self.model_version_ready.remove(version)

    def default_version(self, name: str, version: str) -> None:
        self.model_info.info({"name": name, "version": version})

    def prepare_pool_restarted(self, reason: str) -> None:
        self.prepare_pool_restarts.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
