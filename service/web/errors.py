"""The error handlers: every error leaves the service as ``{"error": {"code", "message"}}`` (docs/api.md)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ClientClosedError, InvalidParameterError, ServiceError, describe_validation_errors
from service.metrics import Metrics

log = logging.getLogger("service")

#: Error codes of the errors Starlette raises itself (unknown route, wrong method, ...).
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body of the service: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def register_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map ``ServiceError``, request validation errors, Starlette's HTTP errors and anything unexpected."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.rejected(exc.code)
        if isinstance(exc, ClientClosedError):  # the client's doing: INFO, no traceback (docs/reliability.md)
            log.info("client closed the connection", extra={"path": request.url.path, "code": exc.code})
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _service_error(
            request, InvalidParameterError(describe_validation_errors(exc.errors()) or "invalid request")
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
