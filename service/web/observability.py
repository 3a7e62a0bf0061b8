"""Request observability: every HTTP request is counted and timed by route template and status, and written as one
access-log line."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

access_log = logging.getLogger("service.access")


#: The methods that get their own label value; any other token a client sends is labelled "other" (h11 accepts any
#: token as a method, and each distinct label value is a new time series).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(scope: Scope) -> str:
    """The request's method if it is one of `KNOWN_METHODS`, else ``"other"``."""
    method = scope.get("method", "")
    return method if method in KNOWN_METHODS else "other"


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
                self.metrics.request_done(route, method_label(scope), status, seconds)
            extra: dict[str, Any] = {
                "route": route,
                "method": method_label(scope),
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            }
            if "fer.faces" in scope:  # set by the prediction routes
                extra["faces"] = scope["fer.faces"]
            access_log.info("request", extra=extra)
