"""The application factory: ``create_app(settings)`` builds the app from the web layer and gives it its lifespan.

Start-up (the lifespan) begins serving at once — ``/healthz`` answers while the model loads — and loads, validates
and warms up the model versions (``service.registry``: the version policy) and the face detector in a background
thread; ``/readyz`` turns 200 only after that. Then the model folder is scanned every ``model_poll_interval_s`` and
on SIGHUP: new versions load beside the serving ones, removed ones drain and unload. Start-up with no version that
loads is fatal: the error is logged as one line naming the problem and ``on_fatal`` is called (``python -m service``
then stops the server and exits with status 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.batching import BatchClock, BatchFn, MicroBatcher
from service.config import Settings
from service.errors import ModelLoadError
from service.metrics import Metrics
from service.model import LoadedModel, load_model
from service.pipeline import PixelBudget, Predictor, QueueObserver, explain_rows
from service.prepare import PreparePool, PrepareSpec
from service.registry import ModelRegistry, VersionPolicy, freeze_long_lived_objects, reclaim_memory
from service.web.admission import AdmissionMiddleware, BodyAdmission, DeadlineMiddleware
from service.web.errors import register_error_handlers
from service.web.observability import ObservabilityMiddleware
from service.web.routes import router
from service.web.schemas import ErrorBody
from service.web.state import ServiceState

log = logging.getLogger("service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Served at "/" when the package has no demo page (built in memory: the package folder may be read-only).
PLACEHOLDER_PAGE = (
    "<!doctype html><title>FER service</title><p>Facial-expression recognition service. "
    'See <a href="/docs">/docs</a>.</p>\n'
)


#: How long a stopping version's queue may take to finish its model call in progress. It stops after its requests
#: (drained at an unload, answered or past request_deadline_s at shutdown), so its queue is empty and only a model call
#: that hangs takes this long (shutdown's worst case: docs/reliability.md).
BATCHER_STOP_TIMEOUT_S = 5.0


@dataclass
class ServedVersion:
    """One ready model version's queues and predictor (``service.registry.Serving``); the face detection workers are
    shared by every version."""

    version: str
    predictor: Predictor
    batchers: list[MicroBatcher]
    observer: QueueObserver

    async def close(self) -> None:
        for batcher, name in zip(self.batchers, ("predict", "explain"), strict=False):
            await batcher.stop(BATCHER_STOP_TIMEOUT_S)
            self.observer.forget(name, self.version)


def _loader(state: ServiceState) -> Callable[[Path], LoadedModel]:
    """Load + validate + warm up one version; the first one also starts and warms up the face detection workers
    (slow: the registry runs it in a thread). A version whose input differs from the workers' crops is refused."""
    settings = state.settings

    def load(path: Path) -> LoadedModel:
        model = load_model(
            path, precision=settings.precision, runtime=settings.runtime, openvino_threads=settings.openvino_threads
        )
        warm_sizes = (1, settings.max_batch_size) if settings.max_batch_size > 1 else (1,)
        model.warm_up(warm_sizes)
        meta = model.metadata.input
        spec = PrepareSpec(
            detector=settings.detector,
            min_face_size=settings.min_face_size,
            threshold=settings.detection_threshold,
            max_side=settings.detection_max_side,
            max_pixels=settings.max_image_pixels,
            margin=settings.face_margin,
            height=meta.height,
            width=meta.width,
            color_mode=meta.color_mode,
        )
        if state.preparer is None:
            pool = PreparePool(spec, processes=settings.prepare_processes, recycle_after=settings.prepare_recycle_after)
            pool.start()  # raises ModelLoadError naming the detector when it cannot be built
            state.preparer = pool
        elif state.preparer.spec != spec:
            raise ModelLoadError(
                f"{path}: input {meta.height}x{meta.width} {meta.color_mode} differs from the versions being served "
                f"({state.preparer.spec.height}x{state.preparer.spec.width} {state.preparer.spec.color_mode}); "
                "serve it from new pods (docs/deployment.md)"
            )
        return model

    return load


def _builder(
    state: ServiceState, observer: QueueObserver, batch_clock: BatchClock | None
) -> Callable[[str, LoadedModel], ServedVersion]:
    """Start a loaded version's queues (its own micro-batchers) and its predictor."""
    settings = state.settings

    def started(fn: BatchFn, kind: str, version: str) -> MicroBatcher:
        """A running micro-batcher for one of a version's queues; every queue has the same bounds."""
        batcher = MicroBatcher(
            fn,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_s,
            max_queue=settings.max_queue,
            observer=observer.watch(kind, version),
            clock=batch_clock,
        )
        batcher.start()
        return batcher

    def build(version: str, model: LoadedModel) -> ServedVersion:
        assert state.preparer is not None
        batcher = started(model.predict, "predict", version)
        # the explain queue: its own model calls (service/pipeline.py)
        explainer = started(explain_rows(model), "explain", version) if model.can_explain else None
        batchers = [batcher] if explainer is None else [batcher, explainer]
        predictor = Predictor(
            model,
            state.preparer,
            batcher,
            state.metrics,
            max_pending_images=settings.max_pending_images,
            explainer=explainer,
            explain_max_faces=settings.explain_max_faces,
            pixels=state.pixels,
        )
        return ServedVersion(version, predictor, batchers, observer)

    return build


async def _start(
    state: ServiceState, on_fatal: Callable[[str], None] | None, batch_clock: BatchClock | None = None
) -> None:
    settings = state.settings
    started = time.perf_counter()
    log.info(
        "loading model",
        extra={"model_dir": str(settings.model_dir), "precision": settings.precision, "detector": settings.detector},
    )
    registry = ModelRegistry(
        settings.model_dir,
        VersionPolicy.parse(settings.model_version_policy),
        load=_loader(state),
        build=_builder(state, QueueObserver(state.metrics), batch_clock),
        observer=state.metrics,
        drain_timeout_s=settings.request_deadline_s,  # no request runs longer
        reclaim=reclaim_memory,
    )
    state.registry = registry
    try:
        # the libraries' objects out of the cycle collector's way before any version loads (reclaim_memory is cheap)
        runtime_modules = ("tensorflow", "openvino") if settings.runtime == "openvino" else ("tensorflow",)
        await asyncio.to_thread(freeze_long_lived_objects, *runtime_modules)
        await registry.poll()
        if registry.default is None:
            failed = sorted(registry.versions.values(), key=lambda v: v.sort_key, reverse=True)
            raise ModelLoadError(failed[0].reason if failed and failed[0].reason else "no model version loaded")
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
    _announce_ready(state, registry, time.perf_counter() - started)
    if not registry.fixed:
        # no local of this coroutine may refer to a version: it waits here for as long as the app runs, and would keep
        # an unloaded version's model alive (tests/test_model_versions.py checks that none stays)
        await _watch(state, registry)


def _announce_ready(state: ServiceState, registry: ModelRegistry, seconds: float) -> None:
    """Start-up is done: mark the service ready, record the load in the metrics and log it."""
    settings = state.settings
    assert registry.default is not None
    model = registry.default.model
    assert model is not None and state.preparer is not None
    state.preparer.on_restart = state.metrics.prepare_pool_restarted
    state.metrics.model_loaded(model.metadata.name, registry.default.version, seconds)
    state.ready = True
    log.info(
        "ready",
        extra={
            "model": model.metadata.name,
            "version": registry.default.version,
            "versions": [v.version for v in registry.ready_versions()],
            "version_policy": str(registry.policy),
            "path": str(model.path),
            "load_seconds": round(seconds, 3),
            "labels": model.labels,
            "detector": settings.detector,
            "prepare_processes": settings.prepare_processes,
            "explanations": model.can_explain,
        },
    )


async def _watch(state: ServiceState, registry: ModelRegistry) -> None:
    """Scan the model folder every ``model_poll_interval_s`` (0: never) and on SIGHUP, until the app stops."""
    interval = state.settings.model_poll_interval_s
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, wake.set)
        hangup = True
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread, or no SIGHUP
        hangup = False
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval if interval > 0 else None)
            wake.clear()
            try:
                await registry.poll()
            except Exception:  # a scan must never stop the watching (the versions being served are untouched)
                log.exception("scanning the model folder failed")
    finally:
        if hangup:
            loop.remove_signal_handler(signal.SIGHUP)


async def _placeholder_page() -> HTMLResponse:
    return HTMLResponse(PLACEHOLDER_PAGE)


def _body_limits(settings: Settings) -> Callable[[str], int | None]:
    """The most bytes each route that reads a body buffers (for admission before buffering)."""
    limits = {"/predict": settings.max_body_bytes, "/predict/batch": settings.max_batch_body_bytes}
    return limits.get


def _serves_docs(settings: Settings) -> bool:
    """The API docs are served without API keys, and with keys only if ``docs_with_api_keys``."""
    return not settings.api_keys or settings.docs_with_api_keys


def create_app(
    settings: Settings,
    *,
    on_fatal: Callable[[str], None] | None = None,
    batch_clock: BatchClock | None = None,
) -> FastAPI:
    """A new app for ``settings`` with its own metrics registry; the model loads when the app starts.
    ``batch_clock`` measures the batchers' windows (a seam for tests; default: the real monotonic clock)."""
    state = ServiceState(settings=settings, metrics=Metrics())
    state.pixels = PixelBudget(settings.max_pixel_bytes_in_flight, state.metrics)  # shared by every version

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_start(state, on_fatal, batch_clock), name="load-model")
        state.tasks.append(task)
        try:
            yield
        finally:
            state.shutting_down = True
            state.ready = False
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.registry is not None:
                await state.registry.close()
            if state.preparer is not None:
                await state.preparer.aclose()
            log.info("stopped")

    app = FastAPI(
        title="Facial-expression recognition service",
        version="1.0.0",
        summary="Finds every face in an image and classifies its expression with the exported model.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if _serves_docs(settings) else None,  # None: /docs and /redoc go too
        responses={code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 422, 499, 500, 503, 504, 507)},
    )
    app.state.service = state
    register_error_handlers(app, state.metrics)
    app.include_router(router)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")  # last: API routes win
    else:  # a package without the demo page (never written into the package: it may be read-only)
        app.add_api_route("/", _placeholder_page, methods=["GET"], include_in_schema=False)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    admission = BodyAdmission(settings.max_bodies_in_flight, settings.max_body_bytes_in_flight, state.metrics)
    app.add_middleware(AdmissionMiddleware, admission=admission, body_limit=_body_limits(settings))  # inside:
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_deadline_s, metrics=state.metrics)
    app.add_middleware(ObservabilityMiddleware, metrics=state.metrics)  # outermost: counts admission's 503s too
    return app
