"""Admission before buffering: request bodies in flight are bounded in count and in bytes *before* any of them is
read, so a burst of large uploads is answered 503 ``overloaded`` at once instead of filling the pod's memory.

A request to a route that reads a body reserves what it may buffer when its headers arrive: its declared
Content-Length (at most the route's limit), or the route's whole limit when the length is not declared (chunked).
The reservation lasts until the response is sent, because the body stays in memory while the request is served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class BodyAdmission:
    """The bodies in flight: at most ``max_bodies`` of them, reserving at most ``max_bytes`` together."""

    def __init__(self, max_bodies: int, max_bytes: int, metrics: Metrics) -> None:
        self.max_bodies = max_bodies
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.bodies = 0
        self.bytes = 0

    def try_reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes for one body, or False when that would pass either bound (one event loop: no lock)."""
        if self.bodies + 1 > self.max_bodies or self.bytes + size > self.max_bytes:
            return False
        self.bodies += 1
        self.bytes += size
        self._observe()
        return True

    def release(self, size: int) -> None:
        self.bodies -= 1
        self.bytes -= size
        self._observe()

    def _observe(self) -> None:
        self.metrics.bodies_in_flight.set(self.bodies)
        self.metrics.body_bytes_in_flight.set(self.bytes)


class AdmissionMiddleware:
    """Reserves a body's bytes in a `BodyAdmission` before the route reads it; over a bound, 503 ``overloaded``
    with ``Retry-After: 1`` and ``Connection: close`` without reading the body. ``body_limit(path)`` is the most a
    route buffers (None: the route reads no body and is not admitted here)."""

    def __init__(self, app: ASGIApp, admission: BodyAdmission, body_limit: Callable[[str], int | None]) -> None:
        self.app = app
        self.admission = admission
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.body_limit(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await self.app(scope, receive, send)  # the route refuses it (413) before reading a byte
            return
        size = int(declared) if declared.isdigit() else limit
        if not self.admission.try_reserve(size):
            self.admission.metrics.rejected("overloaded")
            await _overloaded(send, self.admission)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.release(size)


class DeadlineMiddleware:
    """An end-to-end deadline for every HTTP request: after ``seconds`` its handling is cancelled (its queued work
    with it) and, when no response has started yet, the answer is 504 ``deadline_exceeded``."""

    def __init__(self, app: ASGIApp, seconds: float, metrics: Metrics) -> None:
        self.app = app
        self.seconds = seconds
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, send_wrapper)
        except TimeoutError:
            if started:  # the answer is on its way: nothing better to send than the part already sent
                return
            self.metrics.rejected("deadline_exceeded")
            message = f"the request did not complete within {self.seconds:g} s"
            await _error(send, 504, "deadline_exceeded", message, [(b"connection", b"close")])


async def _error(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _overloaded(send: Send, admission: BodyAdmission) -> None:
    message = (
        f"the service is receiving too many request bodies ({admission.bodies} of {admission.max_bodies}, "
        f"{admission.bytes} of {admission.max_bytes} bytes); retry shortly"
    )
    await _error(send, 503, "overloaded", message, [(b"retry-after", b"1"), (b"connection", b"close")])
