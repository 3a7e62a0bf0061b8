"""Hardening, round 2 (issue 13), against the real service over real sockets with real worker processes.

Every wait here is for an event (an answer, a close, a counter reaching a value), never a sleep or a time window.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

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


# --- 2. no secrets at rest ---------------------------------------------------------------------------------------

KEY = "s3cret-key-0123456789"
WRONG_KEY = "wr0ng-but-maybe-someone-elses-key"
LEAKS = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|/home/|/usr/|/tmp/|/opt/")


@pytest.fixture(scope="module")
def keyed(exported_model: Path) -> Iterator[RunningService]:
    with running_service(exported_model, api_keys=[KEY], max_batch_wait_ms=5) as running:
        yield running


def test_api_keys_never_reach_a_log_line_an_error_or_a_metric(
    keyed: RunningService, client: httpx.Client, face_jpeg: bytes
) -> None:
    with captured_logs("service", "uvicorn.error", "uvicorn.access") as logs:
        for key in (KEY, WRONG_KEY):
            with connect(f"{keyed.ws_url}/ws/stream?api_key={key}", open_timeout=60) as ws:
                if key == KEY:
                    ws.send(face_jpeg)
                    assert json.loads(ws.recv(timeout=120))["type"] == "result"
                else:
                    refused = json.loads(ws.recv(timeout=60))
                    assert refused["code"] == "unauthorized" and key not in json.dumps(refused)
        wrong = client.post(
            keyed.url + "/predict?api_key=" + WRONG_KEY,
            content=face_jpeg,
            headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {WRONG_KEY}"},
        )
        assert wrong.status_code == 401 and WRONG_KEY not in wrong.text
        right = client.post(
            keyed.url + "/predict",
            content=face_jpeg,
            headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {KEY}"},
        )
        assert right.status_code == 200
    text = logs.text()
    assert "WebSocket /ws/stream?api_key=[redacted]" in text, "uvicorn's WebSocket line is there, redacted"
    assert KEY not in text and WRONG_KEY not in text
    metrics = keyed.metrics()
    assert KEY not in metrics and WRONG_KEY not in metrics


def test_the_json_log_handler_redacts_secret_query_parameters() -> None:
    from service.logs import JsonFormatter, RedactingFilter, redact

    assert redact("GET /ws/stream?api_key=abc&x=1 token=zz") == "GET /ws/stream?api_key=[redacted]&x=1 token=zz"
    assert redact("/p?a=1&token=t0k;password=pw") == "/p?a=1&token=[redacted];password=[redacted]"
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s"', ("1.2.3.4", "/ws?apikey=K"), None
    )
    record.path = "/x?access_token=T"
    assert RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert 'K"' not in line and "=T" not in line and line.count("[redacted]") == 2


def test_a_configuration_error_names_the_setting_never_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    from service.config import settings_from_args

    with pytest.raises(SystemExit) as exit_info:
        settings_from_args(["--api-keys", f'[["{KEY}"]]', "--max-queue", "not-a-number"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "api_keys" in err and "max_queue" in err and "invalid settings" in err
    assert KEY not in err and "not-a-number" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith("python -m service: error: invalid settings: ")


def test_secret_settings_do_not_show_in_repr_or_dumps() -> None:
    from service.config import Settings

    settings = Settings(model_dir=Path("unused"), api_keys=[KEY])
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump()) and KEY not in settings.model_dump_json()


def test_a_model_that_fails_to_load_names_no_path_in_the_health_bodies(tmp_path: Path) -> None:
    import threading

    import uvicorn

    from service.app import create_app
    from service.config import Settings
    from service.server import uvicorn_config
    from tests.servers import free_socket

    sock = free_socket()
    failed = threading.Event()
    settings = Settings(model_dir=tmp_path / "no-such-model", port=sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn_config(create_app(settings, on_fatal=lambda _: failed.set()), settings, log_level="critical")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert failed.wait(120)
        url = f"http://127.0.0.1:{settings.port}"
        assert wait_until(lambda: _answers(url + "/healthz"))
        ready = httpx.get(url + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        for body in (ready.text, httpx.get(url + "/healthz", timeout=30).text):
            assert str(tmp_path) not in body and not LEAKS.search(body), body
        assert "failed to load" in ready.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_with_api_keys_the_docs_follow_their_setting(keyed: RunningService, client: httpx.Client) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings, build_parser

    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(keyed.url + path).status_code == 404, path
    assert client.get(keyed.url + "/healthz").status_code == 200
    assert client.get(keyed.url + "/readyz").status_code == 200
    # the same app with the setting on (its routes need no model: no lifespan is run)
    opened = TestClient(create_app(Settings(model_dir=Path("unused"), api_keys=[KEY], docs_with_api_keys=True)))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert opened.get(path).status_code == 200, path
    help_text = " ".join(build_parser().format_help().split())
    assert "the API docs (/docs, /redoc, /openapi.json) are served only with --docs-with-api-keys" in help_text
    assert "the docs and the web page stay open" not in help_text


# --- 3. bounded telemetry ----------------------------------------------------------------------------------------


def raw_request(service: RunningService, method: str, path: str) -> int:
    """Send one bodiless request with any method token; the answer's status."""
    with raw_connection(service) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            data += chunk
    return int(data.split()[1])


def label_values(text: str, name: str, label: str) -> set[str]:
    return set(re.findall(rf'^{name}{{[^}}]*\b{label}="([^"]*)"', text, re.M))


def test_method_and_route_labels_come_from_a_fixed_set_whatever_clients_send(service: RunningService) -> None:
    import random

    from service.web.observability import KNOWN_METHODS

    rng = random.Random(13)
    token = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def hostile_round() -> None:
        for _ in range(40):
            method = "".join(rng.choice(token) for _ in range(12))
            path = "/" + "".join(rng.choice("abcdefgh0123") for _ in range(10)) + "?q=" + method
            assert raw_request(service, method, path) < 500
            assert raw_request(service, "GET", path) < 500
            assert raw_request(service, method, "/predict") < 500

    before = service.metrics()
    other_before = metric_value(before, "fer_http_requests_total", {"method": "other"})
    hostile_round()
    after_one = service.metrics()
    assert metric_value(after_one, "fer_http_requests_total", {"method": "other"}) == other_before + 80
    hostile_round()
    after_two = service.metrics()
    assert len(after_two.splitlines()) == len(after_one.splitlines()), "a second round adds no series"
    assert label_values(after_two, "fer_http_requests_total", "method") <= KNOWN_METHODS | {"other"}
    routes = label_values(after_two, "fer_http_requests_total", "route")
    assert routes <= {"/predict", "/predict/batch", "/healthz", "/readyz", "/ws/stream", "/{path}", "unmatched"}, routes
    access = label_values(after_two, "fer_http_request_duration_seconds_bucket", "method")
    assert access <= KNOWN_METHODS | {"other"}


# --- 4. memory per image is bounded ------------------------------------------------------------------------------

MiB = 1024 * 1024


def _tree_kib(pid: int, field: str, reset: bool = False) -> dict[int, int]:
    from benchmarks.harness import process_tree

    sizes = {}
    for member in process_tree(pid):
        try:
            if reset:
                Path(f"/proc/{member}/clear_refs").write_text("5")  # peak RSS := current RSS
            found = re.search(rf"{field}:\s*(\d+)", Path(f"/proc/{member}/status").read_text())
        except OSError:
            continue
        if found:
            sizes[member] = int(found.group(1))
    return sizes


@pytest.fixture(scope="module")
def memory_cases() -> list[Any]:
    from tests.hostile_client import corpus_module

    return corpus_module().memory_cases(6000)


@pytest.mark.parametrize("index", range(4), ids=["webp-lossless-rgba", "png-rgba", "tiff-16bit-gray", "tiff-rgba"])
def test_a_small_file_declaring_a_huge_canvas_costs_at_most_three_rgb_copies(
    service: RunningService, client: httpx.Client, face_jpeg: bytes, memory_cases: list[Any], index: int
) -> None:
    """The peak rise of the whole service (this process, which runs it, and its detection workers) while one such
    image is served stays under 3x the image's 8-bit RGB size plus 64 MiB (was 0.7-1.4 GiB; benchmarks/
    RELIABILITY.md)."""
    case = memory_cases[index]
    assert_serves(client, service, face_jpeg)  # workers warm, buffers at their working size
    before = _tree_kib(os.getpid(), "VmRSS", reset=True)
    answer = client.post(service.url + "/predict", content=case.data, headers={"Content-Type": case.content_type})
    peaks = _tree_kib(os.getpid(), "VmHWM")
    rise_mib = sum(max(0, peak - before.get(pid, 0)) for pid, peak in peaks.items()) / 1024
    assert answer.status_code == 200, answer.text
    assert answer.json()["faces"] == [] and answer.json()["image"] == {"width": 6000, "height": 6000}
    budget_mib = 3 * 6000 * 6000 * 3 / MiB + 64
    assert rise_mib <= budget_mib, f"{case.name}: peak rise {rise_mib:.0f} MiB, budget {budget_mib:.0f} MiB"
    assert_serves(client, service, face_jpeg)


def test_detection_never_searches_more_than_a_bounded_number_of_pixels() -> None:
    from service.faces import MAX_SEARCH_PIXELS, detection_scale

    for width, height in [(6000, 6000), (6324, 6324), (40_000, 1000), (4000, 3000), (8000, 5000)]:
        for min_face in (8, 40, 200):
            scale = detection_scale(width, height, max_side=640, min_face_size=min_face, native_min_face=16)
            assert width * height * scale * scale <= MAX_SEARCH_PIXELS * 1.0001
    # a 12 MP phone photo keeps its scale: 40 px faces stay 16 px
    assert detection_scale(4000, 3000, max_side=640, min_face_size=40, native_min_face=16) == pytest.approx(0.4)


# --- 5. admission before buffering, no spill to disk ------------------------------------------------------------

ADMIT_UPLOAD = 100_000  # max_upload_bytes of the admission service; its batch body limit is 2 x that + 64 KiB


@pytest.fixture(scope="module")
def admitting(exported_model: Path) -> Iterator[RunningService]:
    with running_service(
        exported_model,
        max_upload_bytes=ADMIT_UPLOAD,
        max_batch_images=2,
        max_bodies_in_flight=2,
        max_body_bytes_in_flight=2 * ADMIT_UPLOAD + 64 * 1024 + 50_000,
        max_batch_wait_ms=5,
    ) as running:
        yield running


def start_upload(service: RunningService, path: str, declared: int, content_type: str = "image/jpeg") -> socket.socket:
    """Headers and the first bytes of an upload that is then held open (the body never completes)."""
    sock = raw_connection(service)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n".encode()
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + bytes(100)
    )
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    from tests.hostile_client import _read_response

    answer = _read_response(sock)
    return answer.status, answer.headers, answer.json()


def test_bodies_in_flight_are_bounded_in_count_before_they_are_read(
    admitting: RunningService, client: httpx.Client, face_jpeg: bytes
) -> None:
    held = [start_upload(admitting, "/predict", 50_000) for _ in range(2)]
    try:
        assert wait_until(lambda: counter(admitting, "fer_request_bodies_in_flight") == 2)
        third = start_upload(admitting, "/predict", 1000)
        with third:
            status, headers, body = read_answer(third)  # answered at once, its body never read
        assert status == 503 and body["error"]["code"] == "overloaded" and headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: counter(admitting, "fer_request_bodies_in_flight") == 0)
    assert counter(admitting, "fer_request_body_bytes_in_flight") == 0
    assert_serves(client, admitting, face_jpeg)


def test_bodies_in_flight_are_bounded_in_bytes_and_undeclared_lengths_reserve_the_route_limit(
    admitting: RunningService, client: httpx.Client, face_jpeg: bytes
) -> None:
    batch_limit = 2 * ADMIT_UPLOAD + 64 * 1024
    sock = raw_connection(admitting)
    sock.sendall(
        b"POST /predict/batch HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\n"
    )
    try:
        assert wait_until(lambda: counter(admitting, "fer_request_body_bytes_in_flight") == batch_limit)
        small = client.post(admitting.url + "/predict", content=bytes(49_000), headers={"Content-Type": "image/jpeg"})
        assert small.status_code == 400  # 49,000 more bytes fit: admitted (and refused as no image)
        big = client.post(admitting.url + "/predict", content=bytes(60_000), headers={"Content-Type": "image/jpeg"})
        assert big.status_code == 503 and big.json()["error"]["code"] == "overloaded"
        assert big.headers["retry-after"] == "1"
    finally:
        sock.close()
    assert wait_until(lambda: counter(admitting, "fer_request_body_bytes_in_flight") == 0)
    assert_serves(client, admitting, face_jpeg)


def test_multipart_parts_never_spill_to_disk_and_an_oserror_is_a_507(
    service: RunningService, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    from starlette.formparsers import MultiPartParser

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    # parts over Starlette's 1 MiB spool size: before, they went to a temporary file
    photo = photos.encode(photos.astronaut().image, quality=100)
    padded = photo + bytes(1_500_000 - len(photo))  # JPEG with trailing bytes: still one image
    files = [("files", (f"{i}.jpg", padded, "image/jpeg")) for i in range(2)]
    monkeypatch.setattr(tempfile, "TemporaryFile", disk_full)
    answer = client.post(service.url + "/predict/batch", files=files)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2
    # and if parsing fails with an OSError anyway (memory), it is a 507 with a code, not a 500
    monkeypatch.setattr(MultiPartParser, "parse", disk_full)
    full = client.post(service.url + "/predict/batch", files=files)
    assert full.status_code == 507 and full.json()["error"]["code"] == "insufficient_storage", full.text


def test_the_batch_parser_stops_at_max_batch_images_plus_one(service: RunningService, client: httpx.Client) -> None:
    files = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(5000)]
    answer = client.post(service.url + "/predict/batch", files=files)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_many_images"


# --- 6. time limits ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(exported_model: Path) -> Iterator[RunningService]:
    """Short stream timeouts and a request deadline shorter than the body timeout."""
    with running_service(
        exported_model,
        ws_first_frame_timeout_s=0.5,
        ws_idle_timeout_s=1.0,
        request_deadline_s=1.0,
        body_timeout_s=600,
        max_batch_wait_ms=5,
    ) as running:
        yield running


def test_a_stream_that_sends_no_first_frame_is_closed(impatient: RunningService) -> None:
    with connect(impatient.ws_url + "/ws/stream", open_timeout=60) as ws:
        message = json.loads(ws.recv(timeout=60))  # the server speaks first: its timeout, then the close
        assert message["type"] == "error" and message["code"] == "first_frame_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "first_frame_timeout"


def test_an_idle_stream_is_closed_and_its_slot_freed(impatient: RunningService, face_jpeg: bytes) -> None:
    with connect(impatient.ws_url + "/ws/stream", open_timeout=60) as ws:
        ws.send(face_jpeg)
        assert json.loads(ws.recv(timeout=120))["type"] == "result"
        message = json.loads(ws.recv(timeout=60))  # then nothing is sent: the idle timeout
        assert message["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "idle_timeout"
    assert wait_until(lambda: counter(impatient, "fer_websocket_connections") == 0)


def test_a_request_past_its_deadline_is_a_504_and_the_service_serves_on(
    impatient: RunningService, client: httpx.Client, face_jpeg: bytes
) -> None:
    sock = start_upload(impatient, "/predict", 50_000)  # a body that never completes (body timeout 600 s)
    with sock:
        status, headers, body = read_answer(sock)
    assert status == 504 and body["error"]["code"] == "deadline_exceeded"
    assert counter(impatient, "fer_http_requests_total", route="/predict", status="504") >= 1
    assert wait_until(lambda: counter(impatient, "fer_request_bodies_in_flight") == 0)
    assert_serves(client, impatient, face_jpeg)


# --- 7. deployment --------------------------------------------------------------------------------------------


def test_grafana_needs_a_password_you_set_and_has_no_anonymous_access() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    env = compose["services"]["grafana"]["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}", "no default password"
    # Grafana's container refuses to start without one; the default stack (the service alone) does not need one
    guard = " ".join(compose["services"]["grafana"]["entrypoint"])
    assert '[ -z "$$GF_SECURITY_ADMIN_PASSWORD" ]' in guard and "exit 1" in guard and guard.endswith("exec /run.sh")
    assert "GRAFANA_ADMIN_PASSWORD:?" not in (Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text()
