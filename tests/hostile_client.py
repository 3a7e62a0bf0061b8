"""Send the cases of the hostile-input corpus (scripts/make_hostile_corpus.py) to a running service.

Shared by tests/test_hostile_inputs.py and benchmarks that replay the corpus. Byte payloads go through httpx; the
request shapes httpx will not produce (a 100 MB body generated while sending, a body trickled byte by byte) go
through a plain socket so that exactly what a hostile client does reaches the server.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]


def corpus_module() -> ModuleType:
    """``scripts/make_hostile_corpus.py`` imported as a module (``scripts/`` is not a package)."""
    name = "make_hostile_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "make_hostile_corpus.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Answer:
    """What the server answered: status, headers (lower-case names) and body (JSON when it was JSON)."""

    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def _from_httpx(response: httpx.Response) -> Answer:
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.text)


def _read_response(sock: socket.socket) -> Answer:
    """Read one HTTP/1.1 response with a Content-Length from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(status, headers, body[:length].decode("utf-8", errors="replace"))


def _connect(url: str, timeout: float) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    return sock, f"{parts.hostname}:{parts.port}"


def send_huge_body(
    url: str, path: str, size: int, content_type: str, *, chunked: bool, timeout: float = 60.0
) -> Answer:
    """POST ``size`` zero bytes, generated while sending; stops sending once the server has answered."""
    sock, host = _connect(url, timeout)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode())
    answered = threading.Event()

    def pump() -> None:
        block = bytes(1 << 20)
        sent = 0
        try:
            while sent < size and not answered.is_set():
                piece = block[: min(len(block), size - sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and not answered.is_set():
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection after answering: expected

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        return _read_response(sock)
    finally:
        answered.set()
        sock.close()
        sender.join(timeout)


def send_slowly(
    url: str,
    path: str,
    data: bytes,
    content_type: str,
    *,
    bytes_per_step: int = 8,
    step_s: float = 0.25,
    timeout: float = 60.0,
) -> Answer:
    """A slow-loris upload: the headers at once, then the body ``bytes_per_step`` bytes every ``step_s``."""
    sock, host = _connect(url, timeout)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
    )
    sock.settimeout(step_s)
    try:
        for start in range(0, len(data), bytes_per_step):
            try:
                sock.sendall(data[start : start + bytes_per_step])
            except OSError:
                break  # the server gave up on us
            try:
                sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue  # no answer yet: keep trickling
            break  # the server answered (or closed the connection)
        sock.settimeout(timeout)
        return _read_response(sock)
    finally:
        sock.close()


def send_case(client: httpx.Client, url: str, case: Any) -> Answer:
    """Send one ``HostileInput`` the way its ``send`` field says and return the answer."""
    params = dict(case.params)
    if case.send == "raw":
        headers = {"Content-Type": case.content_type} if case.content_type else {}
        request = client.build_request("POST", url + "/predict", content=case.data, headers=headers, params=params)
        if not case.content_type:
            request.headers.pop("Content-Type", None)
        return _from_httpx(client.send(request))
    if case.send == "multipart":
        return _from_httpx(
            client.post(
                url + "/predict",
                params=params,
                files={case.field: ("upload.bin", case.data, "application/octet-stream")},
            )
        )
    if case.send == "multipart_text":
        return _from_httpx(
            client.post(url + "/predict", params=params, data={"note": "no file here"}, files={"other": (None, "text")})
        )
    if case.send == "multipart_raw":
        return _from_httpx(
            client.post(url + "/predict", params=params, content=case.data, headers={"Content-Type": case.content_type})
        )
    if case.send == "batch_raw":
        return _from_httpx(
            client.post(
                url + "/predict/batch", params=params, content=case.data, headers={"Content-Type": case.content_type}
            )
        )
    if case.send == "huge_body":
        return send_huge_body(url, "/predict", case.size, case.content_type, chunked=case.chunked)
    if case.send == "slow_upload":
        return send_slowly(url, "/predict", case.data, case.content_type)
    raise ValueError(f"unknown send kind {case.send!r}")


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval)
