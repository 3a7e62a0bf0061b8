"""Typed errors of the service. Each knows its HTTP status and a stable machine-readable code.

Every error response has the same JSON body: ``{"error": {"code": "<code>", "message": "<human text>"}}``.
Domain modules raise these; one exception handler in the app maps them to responses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` the stable machine-readable error code."""

    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImageError(ServiceError):
    status, code = 400, "empty_body"


class InvalidImageError(ServiceError):
    """Not an image, or a truncated/corrupt one."""

    status, code = 400, "invalid_image"


class UnsupportedImageError(ServiceError):
    """An image, but in a format the service does not decode."""

    status, code = 415, "unsupported_image_format"


class UnsupportedMediaTypeError(ServiceError):
    """Wrong or missing Content-Type for the route."""

    status, code = 415, "unsupported_media_type"


class MissingFieldError(ServiceError):
    status, code = 422, "missing_field"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class RequestTimeoutError(ServiceError):
    """The request body did not arrive within the body timeout (a stalled or slow-loris upload)."""

    status, code = 408, "request_timeout"
    headers = {"Connection": "close"}


class ClientClosedError(ServiceError):
    """The client hung up before its request body arrived: its own doing, never a server error. Answered (to no
    one) and counted with nginx's status 499 so that dashboards and alerts can tell it from a 5xx."""

    status, code = 499, "client_closed"


class ImageTooLargeError(ServiceError):
    """More pixels than allowed (refused from the header, before decoding: decompression bombs)."""

    status, code = 413, "image_too_large"


class InsufficientStorageError(ServiceError):
    """A request could not be stored while it was parsed (an OSError: memory or disk full)."""

    status, code = 507, "insufficient_storage"
    headers = {"Retry-After": "1"}


class TooManyImagesError(ServiceError):
    status, code = 413, "too_many_images"


class InvalidParameterError(ServiceError):
    status, code = 422, "invalid_parameter"


class ExplanationsUnavailableError(ServiceError):
    """Explanations were asked for, but the served model's export has no ``explain`` signature (exported before
    explanations existed) or the server turned them off (``explain_max_faces=0``)."""

    status, code = 409, "explanations_unavailable"


class VersionNotFoundError(ServiceError):
    """``?version=`` names a model version that is not loaded (see ``GET /v1/models``)."""

    status, code = 404, "version_not_found"


class VersionNotReadyError(ServiceError):
    """``?version=`` names a model version that is loading, unloading or failed to load."""

    status, code = 409, "version_not_ready"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class OverloadedError(ServiceError):
    """The batch queue is full: shed load at once instead of letting latency grow."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class ShuttingDownError(ServiceError):
    status, code = 503, "shutting_down"
    headers = {"Retry-After": "1"}


class InferenceError(ServiceError):
    """The model failed on a batch; every request of that batch gets this, the next batch is unaffected."""

    status, code = 500, "inference_failed"


class DetectionError(ServiceError):
    """The face detector's worker process crashed on this image twice; the service itself keeps serving."""

    status, code = 500, "detection_failed"


class BatchImageError(ServiceError):
    """One image of a several-image call failed: ``index`` (0-based) says which and ``error`` is that image's own
    error. Status, code and headers are the image error's; the message names the image (and its file name, once
    the route has given it with `named`)."""

    def __init__(self, index: int, error: ServiceError, name: str | None = None) -> None:
        label = f"image {index + 1}" if name is None else f"image {index + 1} ({name or 'no name'})"
        super().__init__(f"{label}: {error.message}")
        self.index = index
        self.error = error
        self.status, self.code, self.headers = error.status, error.code, error.headers

    def named(self, name: str) -> BatchImageError:
        """The same failure, its message naming the image's file (``"no name"`` when it is empty)."""
        return BatchImageError(self.index, self.error, name)


class ModelLoadError(RuntimeError):
    """The model directory violates the contract (docs/model-contract.md); the service refuses to start."""


def describe_validation_errors(errors: Iterable[Mapping[str, Any]], *, root: str | None = None) -> str:
    """pydantic's (or FastAPI's) validation errors as one line, ``where: what; where: what``.

    ``where`` is the dotted location without FastAPI's ``query``/``body`` parts; an error without a location is
    written ``root: what``, or only ``what`` when ``root`` is None.
    """
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body")) or root
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)
