"""The application factory: ``create_app(settings)`` wires settings, model, detector, batcher, routes and errors.

Start-up (the lifespan) begins serving at once — ``/healthz`` answers while the model loads — and loads, validates
and warms up the model and the face detector in a background thread; ``/readyz`` turns 200 only after that. A
model that violates the contract is fatal: the error is logged as one line naming the problem and ``on_fatal`` is
called (``python -m service`` then stops the server and exits with status 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batching import MicroBatcher
from service.config import Settings
from service.errors import ModelLoadError, ServiceError
from service.metrics import Metrics
from service.model import LoadedModel, load_model
from service.pipeline import Predictor
from service.prepare import PreparePool, PrepareSpec
from service.schemas import ModelRef

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Largest request line + headers accepted (uvicorn's h11 limit); larger requests get a 400 from the parser.
MAX_HEADER_BYTES = 16 * 1024
_PLACEHOLDER_PAGE = ("<!doctype html><title>FER service</title><p>Facial-expression recognition service. "
                     "See <a href=\"/docs\">/docs</a>.</p>\n")


@dataclass
class ServiceState:
    """Everything the routes need, owned by one app instance (no module-level singletons)."""

    settings: Settings
    metrics: Metrics
    model: LoadedModel | None = None
    predictor: Predictor | None = None
    preparer: PreparePool | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    shutting_down: bool = False
    load_error: str | None = None
    websocket_connections: int = 0
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def model_ref(self) -> ModelRef:
        assert self.model is not None
        return ModelRef(name=self.model.metadata.name, version=self.model.metadata.version)


def _load_blocking(settings: Settings) -> tuple[LoadedModel, PreparePool]:
    """Load + validate + warm up the model, then start and warm up the face detection workers (slow: runs in a
    thread)."""
    model = load_model(settings.model_dir, precision=settings.precision)
    warm_sizes = (1, settings.max_batch_size) if settings.max_batch_size > 1 else (1,)
    model.warm_up(warm_sizes)
    meta = model.metadata.input
    spec = PrepareSpec(detector=settings.detector, min_face_size=settings.min_face_size,
                       threshold=settings.detection_threshold, max_side=settings.detection_max_side,
                       max_pixels=settings.max_image_pixels,
                       margin=settings.face_margin, height=meta.height, width=meta.width, color_mode=meta.color_mode)
    pool = PreparePool(spec, processes=settings.prepare_processes, recycle_after=settings.prepare_recycle_after)
    pool.start()  # raises ModelLoadError naming the detector when it cannot be built
    return model, pool


async def _start(state: ServiceState, on_fatal: Callable[[str], None] | None) -> None:
    settings = state.settings
    started = time.perf_counter()
    log.info("loading model", extra={"model_dir": str(settings.model_dir), "precision": settings.precision,
                                     "detector": settings.detector})
    try:
        model, preparer = await asyncio.to_thread(_load_blocking, settings)
    except ModelLoadError as exc:
        state.load_error = str(exc)
        log.error("cannot start: %s", exc)
        if on_fatal is not None:
            on_fatal(str(exc))
        return
    except Exception as exc:  # unexpected: still one clear line, plus the traceback in the log
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("cannot start: unexpected error while loading the model")
        if on_fatal is not None:
            on_fatal(state.load_error)
        return
    seconds = time.perf_counter() - started
    batcher = MicroBatcher(model.predict, max_batch_size=settings.max_batch_size,
                           max_wait_s=settings.max_batch_wait_s, max_queue=settings.max_queue,
                           observer=state.metrics)
    batcher.start()
    state.model, state.batcher = model, batcher
    preparer.on_restart = state.metrics.prepare_pool_restarted
    state.preparer = preparer
    state.predictor = Predictor(model, preparer, batcher, state.metrics,
                                max_pending_images=settings.max_pending_images)
    state.metrics.model_loaded(model.metadata.name, model.metadata.version, seconds)
    state.ready = True
    log.info("ready", extra={"model": model.metadata.name, "version": model.metadata.version,
                             "path": str(model.path), "load_seconds": round(seconds, 3),
                             "labels": model.labels, "detector": settings.detector,
                             "prepare_processes": settings.prepare_processes})


# --- errors -------------------------------------------------------------------------------------------------------

def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body of the service: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _register_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.rejected(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        metrics.rejected("invalid_parameter")
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")


# --- observability middleware -------------------------------------------------------------------------------------

def route_label(scope: Scope) -> str:
    """The matched route's template (bounded label values), ``"unmatched"`` when no route matched."""
    route = scope.get("route")
    if isinstance(route, Mount) or isinstance(scope.get("endpoint"), StaticFiles):
        return "/{path}"  # the static page mounted at "/": one label for all its files
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    """Counts and times every HTTP request by route template and status, and writes one access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope)
            if route != "/metrics":  # scraping must not change what it reads
                self.metrics.request_done(route, scope["method"], status, seconds)
            extra: dict[str, Any] = {"route": route, "method": scope["method"], "status": status,
                                     "duration_ms": round(seconds * 1000, 2)}
            if "fer.faces" in scope:
                extra["faces"] = scope["fer.faces"]
            if "fer.error" in scope:
                extra["error"] = scope["fer.error"]
            access_log.info("request", extra=extra)


# --- the factory --------------------------------------------------------------------------------------------------

def create_app(settings: Settings, *, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """A new app for ``settings`` with its own metrics registry; the model loads when the app starts."""
    from service import api  # routes import schemas and the state type from here

    state = ServiceState(settings=settings, metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_start(state, on_fatal), name="load-model")
        state._tasks.append(task)
        try:
            yield
        finally:
            state.shutting_down = True
            state.ready = False
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.batcher is not None:
                await state.batcher.stop()
            if state.preparer is not None:
                await state.preparer.aclose()
            log.info("stopped")

    app = FastAPI(
        title="Facial-expression recognition service",
        version="1.0.0",
        summary="Finds every face in an image and classifies its expression with the exported model.",
        lifespan=lifespan,
        responses={code: {"model": api.ErrorBody} for code in (400, 401, 413, 415, 422, 500, 503)},
    )
    app.state.service = state
    _register_error_handlers(app, state.metrics)
    app.include_router(api.router)
    if not STATIC_DIR.is_dir():
        STATIC_DIR.mkdir(parents=True, exist_ok=True)
        (STATIC_DIR / "index.html").write_text(_PLACEHOLDER_PAGE)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")  # last: API routes win
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(ObservabilityMiddleware, metrics=state.metrics)
    return app


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> "uvicorn.Config":
    """The uvicorn configuration the service runs under (also used by the tests' in-process servers).

    ``ws_max_size`` equals the frame limit so an oversize WebSocket message is refused by the protocol layer with
    close code 1009 before it is buffered whole; graceful shutdown waits up to 30 s for requests in flight.
    The HTTP parser is h11, which refuses a request line plus headers over ``h11_max_incomplete_event_size``
    (16 KiB) with a 400; httptools, uvicorn's other parser, buffers headers of any size (measured: 1 MB of
    headers and 20,000 header lines were accepted). Request parsing is a small part of a request's cost here.
    """
    import uvicorn

    options: dict[str, Any] = dict(host=settings.host, port=settings.port, log_config=None, access_log=False,
                                   ws_max_size=settings.ws_max_frame_bytes, timeout_graceful_shutdown=30,
                                   server_header=False, lifespan="on", http="h11",
                                   h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    options.update(overrides)
    return uvicorn.Config(app, **options)
