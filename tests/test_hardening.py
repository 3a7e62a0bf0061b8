"""Hardening, round 2 (issue 13), against the real service over real sockets with real worker processes.

Every wait here is for an event (an answer, a close, a counter reaching a value), never a sleep or a time window.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import photos
from tests.hostile_client import wait_until
from tests.servers import RunningService, metric_value, running_service


class Records(logging.Handler):
    """Every log record of the service's loggers (the service runs in this process, in a thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        lines = []
        for record in self.records:
            lines.append(record.getMessage())
            lines.extend(str(v) for k, v in record.__dict__.items() if k not in ("msg", "args", "message"))
        return "\n".join(lines)


@contextlib.contextmanager
def captured_logs(*names: str) -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in names or ("service", "uvicorn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    with running_service(exported_model, max_batch_wait_ms=5) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    return photos.encode(photos.astronaut().image[40:340, 100:360], quality=85)


def assert_serves(client: httpx.Client, service: RunningService, jpeg: bytes) -> None:
    response = client.post(service.url + "/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text


def raw_connection(service: RunningService) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def counter(service: RunningService, name: str, **labels: str) -> float:
    return metric_value(service.metrics(), name, labels)


# --- 1. a client's mistake is never a 5xx ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_client_that_hangs_up_mid_upload_is_a_499_logged_at_info_never_a_500(
    service: RunningService, client: httpx.Client, face_jpeg: bytes, path: str
) -> None:
    labels = {"route": path, "method": "POST", "status": "499"}
    before = counter(service, "fer_http_requests_total", **labels)
    closed_before = counter(service, "fer_rejected_total", reason="client_closed")
    errors_before = counter(service, "fer_http_requests_total", route=path, method="POST", status="500")
    kind = "image/jpeg" if path == "/predict" else "multipart/form-data; boundary=xyz"
    with captured_logs() as logs:
        sock = raw_connection(service)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {kind}\r\nContent-Length: 100000\r\n\r\n".encode()
            + bytes(1000)
        )
        sock.close()  # hang up with 99,000 bytes still to come
        assert wait_until(lambda: counter(service, "fer_http_requests_total", **labels) == before + 1)
    assert counter(service, "fer_rejected_total", reason="client_closed") == closed_before + 1
    assert counter(service, "fer_http_requests_total", route=path, method="POST", status="500") == errors_before
    closed = [r for r in logs.records if r.getMessage() == "client closed the connection"]
    assert len(closed) == 1 and closed[0].levelno == logging.INFO
    assert not [r for r in logs.records if r.levelno >= logging.WARNING], logs.text()
    assert not [r for r in logs.records if r.exc_info], "no traceback for a client's hang-up"
    assert_serves(client, service, face_jpeg)
