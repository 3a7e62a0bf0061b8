"""A real ``python -m service`` process on a free local port, for end-to-end tests (web page, stream client).

Tests that need the service as a user runs it — a separate process speaking HTTP and WebSocket on a port —
start it through `running_service`; the process is shared by every test module that asks for the same model
directory and API key, and stopped when the last of them is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
#: The API key of the shared test service: the page and client tests use the same one, so they share one process.
TEST_API_KEY = "e2e-test-key"
READY_TIMEOUT_S = 180.0  # a tiny model loads in ~10 s here; CI machines share their 2 cores with other work


@dataclass
class ServiceProcess:
    """A started service: its base URL, the API key it requires ("" for none), the process and its log file."""

    url: str
    port: int
    api_key: str
    model_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws/stream"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the process (again, after `stop`, on the same port) and wait until ``/readyz`` answers 200."""
        args = [
            sys.executable,
            "-m",
            "service",
            "--model-dir",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "FER_API_KEYS": self.api_key}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.readyz() == 200:
                return
            time.sleep(0.25)
        raise RuntimeError(f"the service was not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def readyz(self) -> int | None:
        """The status of ``GET /readyz``, or None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it has not exited in 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_labels(model_dir: Path) -> list[str]:
    """The labels of an exported model, from its metadata.json (docs/model-contract.md)."""
    return json.loads((model_dir / "metadata.json").read_text())["labels"]


def new_service(model_dir: Path, log_dir: Path, api_key: str = "") -> ServiceProcess:
    """A not yet started service on a free port; the caller starts and stops it."""
    port = free_port()
    return ServiceProcess(
        url=f"http://127.0.0.1:{port}",
        port=port,
        api_key=api_key,
        model_dir=model_dir,
        log_path=log_dir / f"service-{port}.log",
    )


_shared: dict[tuple[str, str], tuple[ServiceProcess, int]] = {}


@contextlib.contextmanager
def running_service(model_dir: Path, log_dir: Path, api_key: str = "") -> Iterator[ServiceProcess]:
    """A started service for ``model_dir``/``api_key``, shared with every other user of the same pair."""
    key = (str(model_dir), api_key)
    if key in _shared:
        service, users = _shared[key]
        _shared[key] = (service, users + 1)
    else:
        service = new_service(model_dir, log_dir, api_key)
        try:
            service.start()
        except BaseException:
            service.stop()
            raise
        _shared[key] = (service, 1)
    try:
        yield service
    finally:
        service, users = _shared[key]
        if users > 1:
            _shared[key] = (service, users - 1)
        else:
            del _shared[key]
            service.stop()
