"""Run the real service for tests: uvicorn in a background thread on a free loopback port.

``running_service(model_dir, **settings)`` starts ``create_app(Settings(...))`` under the same uvicorn configuration
``python -m service`` uses, waits until ``/readyz`` answers 200 and yields a ``RunningService`` with its base URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from benchmarks.harness import metric_value  # noqa: F401 (re-exported: one /metrics parser for tests and benchmarks)
from service.app import create_app
from service.batching import BatchClock
from service.config import Settings
from service.server import uvicorn_config

READY_TIMEOUT_S = 180.0


@dataclass
class RunningService:
    url: str
    ws_url: str
    settings: Settings
    server: uvicorn.Server

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=30).text

    @property
    def state(self) -> Any:
        """The app's ``ServiceState`` (the server runs in this process): its model, batcher, predictor."""
        app = self.server.config.app
        assert isinstance(app, FastAPI)
        return app.state.service


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def service_env(**values: str) -> dict[str, str]:
    """The environment for a ``python -m service`` subprocess: the caller's, minus any FER_* setting, plus
    ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FER_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **values})
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago (for a service started as a subprocess)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


@contextlib.contextmanager
def running_service(
    model_dir: Path, *, wait_ready: bool = True, batch_clock: BatchClock | None = None, **settings: Any
) -> Iterator[RunningService]:
    """Serve ``model_dir`` with ``settings`` overrides until the ``with`` block ends; ``batch_clock`` (for instance a
    ``tests.clocks.ManualClock``) measures the batch windows instead of the real clock."""
    sock = free_socket()
    port = sock.getsockname()[1]
    values = {"model_dir": model_dir, "port": port, **settings}
    config = Settings(**values)
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        failures.append(message)

    app = create_app(config, on_fatal=on_fatal, batch_clock=batch_clock)
    server = uvicorn.Server(uvicorn_config(app, config, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    service = RunningService(url=url, ws_url=f"ws://127.0.0.1:{port}", settings=config, server=server)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        path = "/readyz" if wait_ready else "/healthz"
        while True:
            if failures:
                raise RuntimeError(f"the service failed to start: {failures[0]}")
            try:
                if httpx.get(url + path, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the service at {url} did not become ready")
            time.sleep(0.05)
        yield service
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
