"""Hardening (issue 7): hostile input, WebSocket abuse and faults, against the real service over real sockets.

- Item 1: every case of the generated corpus (scripts/make_hostile_corpus.py, 60+ inputs) gets its documented
  answer — never a 5xx, never a stack trace or an internal path — and a normal request succeeds right after each;
  slow-loris uploads time out with 408 without blocking anyone else; oversized headers are refused.
- Item 5: garbage and oversize WebSocket frames, a client that never reads, fast connect/disconnect churn and the
  connection cap leave the server healthy and other clients unaffected.
- Item 6: a missing, truncated or mismatching model directory stops ``python -m service`` with one clear line and
  a non-zero status, readiness never true; SIGTERM lets every request in flight finish; a model that crashes on one
  batch fails only that batch's requests (500 ``inference_failed``) and the next batch works.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests import gated_service, photos
from tests.clocks import ManualClock, gated_model
from tests.hostile_client import Answer, corpus_module, send_case, send_slowly, wait_until
from tests.servers import RunningService, free_port, metric_value, running_service, service_env

ROOT = Path(__file__).resolve().parents[1]
#: Things that must never appear in a response body: tracebacks, source files, the install or checkout paths.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|/home/|/usr/|/tmp/|/opt/")
BODY_TIMEOUT_S = 2.0
WS_CAP = 4


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    """Default limits, except a short body timeout (so slow-loris cases finish quickly) and a small stream cap."""
    with running_service(
        exported_model,
        body_timeout_s=BODY_TIMEOUT_S,
        ws_max_connections=WS_CAP,
        ws_max_frame_bytes=256 * 1024,
        max_batch_wait_ms=20,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def corpus() -> list[Any]:
    return corpus_module().build_corpus()


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    return photos.encode(photos.astronaut().image[40:340, 100:360], quality=85)


def assert_serves(client: httpx.Client, service: RunningService, jpeg: bytes) -> None:
    response = client.post(service.url + "/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 1


def problems_with(case: Any, answer: Answer) -> list[str]:
    """What is wrong with ``answer`` for ``case`` (empty when it is the documented answer)."""
    found = []
    if answer.status != case.status:
        found.append(f"status {answer.status}, expected {case.status}: {answer.text[:200]}")
    if LEAKS.search(answer.text):
        found.append(f"the body leaks internals: {answer.text[:300]}")
    if answer.status >= 500:
        found.append("a 5xx")
    try:
        body = answer.json()
    except ValueError:
        return found + [f"not JSON: {answer.text[:200]!r}"]
    if case.status == 200 and answer.status == 200:
        if case.faces is not None and len(body["faces"]) != case.faces:
            found.append(f"{len(body['faces'])} faces, expected {case.faces}")
        for face in body["faces"]:
            if abs(sum(face["probabilities"].values()) - 1.0) > 1e-3:
                found.append("probabilities do not sum to 1")
    elif case.code is not None:
        if set(body) != {"error"} or set(body["error"]) != {"code", "message"} or not body["error"]["message"]:
            found.append(f"not the error body: {body}")
        elif body["error"]["code"] != case.code:
            found.append(f"code {body['error']['code']}, expected {case.code}")
    return found


# --- item 1: the corpus ----------------------------------------------------------------------------------------


def test_corpus_script_writes_at_least_40_cases_with_a_manifest(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "make_hostile_corpus.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "corpus")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())["cases"]
    assert len(manifest) >= corpus_module().MIN_CASES
    names = [entry["name"] for entry in manifest]
    assert len(set(names)) == len(names)
    for entry in manifest:
        if entry["file"]:
            assert (tmp_path / "corpus" / entry["file"]).stat().st_size == entry["bytes"]
    kinds = {entry["send"] for entry in manifest}
    assert {"raw", "multipart", "batch_raw", "huge_body", "slow_upload"} <= kinds


def test_every_hostile_input_gets_its_documented_answer_and_the_service_keeps_serving(
    service: RunningService, client: httpx.Client, face_jpeg: bytes, corpus: list[Any]
) -> None:
    failures = []
    for case in corpus:
        try:
            answer = send_case(client, service.url, case)
        except (OSError, httpx.HTTPError) as exc:
            failures.append(f"{case.name}: no answer ({type(exc).__name__}: {exc})")
        else:
            failures += [f"{case.name}: {problem}" for problem in problems_with(case, answer)]
            if answer.status == 503 or answer.status == 408:
                assert answer.headers.get("connection") == "close" or "retry-after" in answer.headers
        assert_serves(client, service, face_jpeg)  # right after each case
    assert not failures, "\n".join(failures)
    text = service.metrics()
    server_errors = [
        line
        for line in text.splitlines()
        if line.startswith("fer_http_requests_total{")
        and "/readyz" not in line  # 503 while loading
        and re.search(r'status="5\d\d"', line)
    ]
    assert not server_errors


def test_slow_loris_uploads_time_out_without_blocking_other_clients(
    service: RunningService, client: httpx.Client, face_jpeg: bytes
) -> None:
    slow = 16
    with concurrent.futures.ThreadPoolExecutor(slow) as pool:
        started = time.monotonic()
        futures = [
            pool.submit(send_slowly, service.url, "/predict", face_jpeg, "image/jpeg", bytes_per_step=4, step_s=0.2)
            for _ in range(slow)
        ]
        served = 0
        while not all(f.done() for f in futures):  # everyone else is served meanwhile
            assert_serves(client, service, face_jpeg)
            served += 1
        answers = [f.result() for f in futures]
    assert served >= 1
    for answer in answers:
        assert answer.status == 408 and answer.json()["error"]["code"] == "request_timeout"
        assert answer.headers["connection"] == "close"
    assert time.monotonic() - started < 60  # each was cut off after the body timeout, not after its whole upload


def _raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # refused mid-send: read what the server said
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_oversized_request_headers_are_refused(service: RunningService, client: httpx.Client, face_jpeg: bytes) -> None:
    host = service.url.removeprefix("http://")
    huge_value = b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    many = (
        b"GET /healthz HTTP/1.1\r\nHost: "
        + host.encode()
        + b"\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
        + b"\r\n"
    )
    for request in (huge_value, many):
        reply = _raw_request(service.url, request)
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    normal = client.get(service.url + "/healthz", headers={f"X-Ok-{i}": "1" for i in range(50)})
    assert normal.status_code == 200
    assert_serves(client, service, face_jpeg)


# --- item 5: WebSocket abuse -------------------------------------------------------------------------------------


def receive(ws: Any, timeout: float = 60) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def ws_connections(service: RunningService) -> float:
    return metric_value(service.metrics(), "fer_websocket_connections")


def test_ws_garbage_frames_get_errors_and_the_connection_keeps_serving(
    service: RunningService, face_jpeg: bytes
) -> None:
    rng = np.random.default_rng(3)
    with connect(service.ws_url + "/ws/stream") as ws:
        binary = [
            b"",
            rng.bytes(1),
            rng.bytes(100_000),
            face_jpeg[:500],
            b"\xff\xd8\xff" + bytes(1000),
            b"\x89PNG\r\n\x1a\n" + rng.bytes(64),
        ]
        for seq, frame in enumerate(binary, start=1):
            ws.send(frame)
            reply = receive(ws)
            assert reply["type"] == "error" and reply["seq"] == seq, reply
            assert reply["code"] in ("empty_body", "invalid_image") and not LEAKS.search(reply["message"])
        texts = [
            "",
            "null",
            "{",
            "[" * 100_000 + "]" * 100_000,
            json.dumps({"detect": {"$gt": 1}}),
            json.dumps({"max_faces": 1.5}),
            json.dumps({"max_faces": -1}),
            "\u0000" * 1000,
            json.dumps({"detect": True, "x": "y" * 100_000}),
        ]
        for text in texts:
            ws.send(text)
            reply = receive(ws)
            assert reply["type"] == "error" and reply["code"] == "invalid_parameter" and reply["seq"] is None
            assert not LEAKS.search(reply["message"])
        ws.send(json.dumps({"max_faces": 10**30}))  # valid, capped at the server's setting
        options = receive(ws)  # the reply lists every option; these are the ones this message touched
        assert options["type"] == "options" and options["detect"] is True
        assert options["max_faces"] == service.settings.max_faces
        ws.send(face_jpeg)
        reply = receive(ws)
        assert reply["type"] == "result" and reply["seq"] == len(binary) + 1 and len(reply["faces"]) == 1


def test_every_corpus_payload_as_a_stream_frame_gets_its_answer_on_an_open_connection(
    service: RunningService, corpus: list[Any]
) -> None:
    """The corpus's byte payloads as WebSocket frames: the same error codes as over HTTP (content types do not
    exist there, so those payloads are just valid images), one reply per frame, and the socket stays open."""
    frames = [
        case
        for case in corpus
        if case.send == "raw" and len(case.data) <= service.settings.ws_max_frame_bytes and not case.params
    ]
    assert len(frames) >= 40
    failures = []
    with connect(service.ws_url + "/ws/stream", max_size=None) as ws:
        for seq, case in enumerate(frames, start=1):
            ws.send(case.data)
            reply = receive(ws)
            valid = case.status == 200 or case.code == "unsupported_media_type"
            expected = ("result", None) if valid else ("error", case.code)
            got = (reply["type"], reply.get("code"))
            if got != expected or reply["seq"] != seq or LEAKS.search(json.dumps(reply)):
                failures.append(f"{case.name}: {got}, expected {expected} (seq {reply['seq']} for {seq})")
    assert not failures, "\n".join(failures)


def test_ws_oversize_frame_closes_only_that_connection(service: RunningService, face_jpeg: bytes) -> None:
    with connect(service.ws_url + "/ws/stream") as bystander:
        with connect(service.ws_url + "/ws/stream", max_size=None) as ws:
            ws.send(bytes(service.settings.ws_max_frame_bytes + 1))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=30)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        bystander.send(face_jpeg)
        assert receive(bystander)["type"] == "result"


class RawWebSocket:
    """A minimal client speaking RFC 6455 over a plain socket: it can stop reading, or vanish without a close."""

    def __init__(self, ws_url: str, path: str = "/ws/stream", receive_buffer: int = 4096) -> None:
        host, port = ws_url.removeprefix("ws://").split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # fills up sooner
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode("latin-1"))

    def send_binary(self, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x82, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x82, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, length)
        data = np.frombuffer(payload, dtype=np.uint8)
        masked = (data ^ np.resize(np.frombuffer(mask, dtype=np.uint8), length)).tobytes()
        self.sock.sendall(header + mask + masked)

    def vanish(self) -> None:
        """Drop the TCP connection without a close handshake (RST where data is unread)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def test_ws_client_that_never_reads_does_not_affect_others(service: RunningService, face_jpeg: bytes) -> None:
    dropped_before = metric_value(service.metrics(), "fer_websocket_frames_dropped_total")
    silent = RawWebSocket(service.ws_url)
    stop = threading.Event()
    sent = 0

    def flood() -> None:
        nonlocal sent
        try:
            while not stop.is_set() and sent < 2000:
                silent.send_binary(face_jpeg)
                sent += 1
        except OSError:
            pass

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        with connect(service.ws_url + "/ws/stream") as other:
            for seq in range(1, 6):
                other.send(face_jpeg)
                reply = receive(other)
                assert reply["type"] == "result" and reply["seq"] == seq and reply["dropped"] == 0
        with httpx.Client(timeout=60) as http:
            assert_serves(http, service, face_jpeg)
    finally:
        stop.set()
        flooder.join(30)
        silent.vanish()
    assert sent > 10
    assert wait_until(lambda: ws_connections(service) == 0)
    # latest wins: what the silent client sent while its frames were being processed was dropped, not queued
    assert metric_value(service.metrics(), "fer_websocket_frames_dropped_total") > dropped_before


def test_ws_connection_churn_and_the_cap_leak_nothing(service: RunningService, face_jpeg: bytes) -> None:
    small = photos.encode(photos.astronaut().image[100:148, 180:228])
    for i in range(120):  # open and close as fast as possible, half of them without a close handshake
        if i % 2:
            raw = RawWebSocket(service.ws_url)
            if i % 4 == 1:
                raw.send_binary(small)  # vanish with a frame in flight
            raw.vanish()
        else:
            with connect(service.ws_url + "/ws/stream") as ws:
                if i % 4 == 0:
                    ws.send(small)
    assert wait_until(lambda: ws_connections(service) == 0)
    # every slot is free again: the cap's worth of clients is served, one more is refused with 1013
    clients = [connect(service.ws_url + "/ws/stream") for _ in range(WS_CAP)]
    try:
        with connect(service.ws_url + "/ws/stream") as refused:
            reply = receive(refused)
            assert reply["code"] == "too_many_connections"
            with pytest.raises(ConnectionClosed) as info:
                refused.recv(timeout=30)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        for ws in clients:
            ws.send(face_jpeg)
        for ws in clients:
            assert receive(ws)["type"] == "result"
    finally:
        for ws in clients:
            ws.close()
    assert wait_until(lambda: ws_connections(service) == 0)
    with httpx.Client(timeout=60) as http:
        assert http.get(service.url + "/healthz").json() == {"status": "ok"}


# --- item 6: faults ----------------------------------------------------------------------------------------------


def readyz(url: str) -> int | None:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code
    except httpx.TransportError:
        return None


def broken_models(exported_model: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Model folders broken in the ways the issue names, each with a fragment of the message it must produce."""
    cases: dict[str, tuple[Path, str]] = {"missing": (root / "no-such-model", "does not exist")}
    truncated = root / "truncated" / "1"
    shutil.copytree(exported_model, truncated)
    pb = truncated / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])
    cases["truncated"] = (truncated.parent, "cannot load the SavedModel")
    mismatch = root / "mismatch" / "1"
    shutil.copytree(exported_model, mismatch)
    metadata = json.loads((mismatch / "metadata.json").read_text())
    metadata["labels"] = metadata["labels"] + ["contempt"]
    (mismatch / "metadata.json").write_text(json.dumps(metadata))
    cases["mismatch"] = (mismatch.parent, f"lists {len(metadata['labels'])} labels")
    return cases


def test_broken_model_directories_refuse_to_start_and_never_become_ready(exported_model: Path, tmp_path: Path) -> None:
    cases = broken_models(exported_model, tmp_path)
    started = {}
    for name, (model_dir, _) in cases.items():
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--model-dir", str(model_dir), "--port", str(port)],
            cwd=ROOT,
            env=service_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[name] = (proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 240
        while any(proc.poll() is None for proc, _ in started.values()):
            for name, (proc, url) in started.items():
                if proc.poll() is None:
                    assert readyz(url) != 200, f"{name}: became ready"
            assert time.monotonic() < deadline, "a broken model did not stop the service"
            time.sleep(0.2)
        for name, (proc, _) in started.items():
            stderr = proc.stderr.read()
            assert proc.returncode == 2, (name, proc.returncode, stderr[-2000:])
            last = stderr.strip().splitlines()[-1]
            assert last.startswith("error: cannot serve the model: ") and cases[name][1] in last, (name, last)
            assert "Traceback" not in stderr, name
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_sigterm_lets_every_request_in_flight_finish(exported_model: Path, face_jpeg: bytes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # python -m service's main with a gate in front of the model (tests/gated_service.py): while the gate is
    # closed no request can finish, so all of them are provably in flight when SIGTERM arrives
    proc = subprocess.Popen(
        gated_service.command(),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=service_env(FER_MODEL_DIR=str(exported_model), FER_PORT=str(port), FER_MAX_BATCH_SIZE="64"),
    )
    gate = gated_service.GateControl(proc)
    in_flight = 12
    try:
        gate.open()  # for the warm-up
        assert wait_until(lambda: proc.poll() is not None or readyz(url) == 200, timeout=240, interval=0.2)
        assert proc.poll() is None
        gate.close()
        small = photos.encode(photos.astronaut().image[100:148, 180:228])

        def post(_: int) -> int:
            with httpx.Client(timeout=120) as http:
                return http.post(
                    url + "/predict?detect=false", content=small, headers={"Content-Type": "image/jpeg"}
                ).status_code

        def crops_in_flight() -> float:
            held = gate.held  # read first: a crop moves from the queue to the gate, never back
            return held + metric_value(httpx.get(url + "/metrics", timeout=5).text, "fer_queue_depth")

        with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            futures = [pool.submit(post, i) for i in range(in_flight)]
            # every crop waits at the gate or queued behind it (the timeout only bounds a hang)
            assert wait_until(lambda: crops_in_flight() == in_flight, timeout=120)
            assert not any(f.done() for f in futures)
            proc.send_signal(signal.SIGTERM)
            while True:  # the server stops accepting connections: it is shutting down, the requests still held
                try:
                    httpx.get(url + "/healthz", timeout=5)
                except httpx.TransportError:
                    break
                assert proc.poll() is None
                time.sleep(0.02)
            assert not any(f.done() for f in futures)
            gate.open()
            statuses = [f.result(timeout=120) for f in futures]
        assert statuses == [200] * in_flight  # all finished, nothing dropped
        assert proc.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):  # and then it is gone
            httpx.get(url + "/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def poisoned_model(exported_model: Path, root: Path) -> Path:
    """A copy of the real export whose serving function fails (InvalidArgumentError) on any batch that holds an
    all-black crop: a real model that crashes inside inference for some batches, not a stand-in."""
    import tensorflow as tf

    metadata = json.loads((exported_model / "metadata.json").read_text())
    spec, signature = metadata["input"], metadata["signature"]
    inner = tf.saved_model.load(str(exported_model))

    class Poisoned(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, spec["height"], spec["width"], spec["channels"]], tf.float32, name=signature["input"]
                )
            ]
        )
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            tf.debugging.assert_greater(
                tf.reduce_max(images, axis=[1, 2, 3]), 0.0, message="poisoned batch: an all-black crop"
            )
            return self.inner.signatures[signature["key"]](**{signature["input"]: images})

    module = Poisoned()
    out = root / "poisoned" / "1"
    tf.saved_model.save(module, str(out), signatures={signature["key"]: module.serve})
    shutil.copy(exported_model / "metadata.json", out / "metadata.json")
    return out


def test_a_crash_inside_inference_fails_only_that_batch(exported_model: Path, tmp_path: Path) -> None:
    model_dir = poisoned_model(exported_model, tmp_path)
    black = photos.encode(np.zeros((48, 48, 3), dtype=np.uint8), "PNG")
    face = photos.encode(photos.astronaut().image[100:148, 180:228], "PNG")
    # batches of exactly two crops: the pair sent together shares one model call (the batch window runs on a clock
    # that never moves, so only the size rule closes a batch, however far apart the two requests arrive)
    with (
        running_service(
            model_dir,
            runtime="tensorflow",  # the poison is a TensorFlow assertion, which OpenVINO's conversion drops
            max_batch_size=2,
            max_queue=8,
            max_batch_images=8,
            max_faces=1,  # (a queue smaller than a full /predict/batch is refused at start-up)
            max_batch_wait_ms=10_000,
            batch_clock=ManualClock(),
        ) as running,
        httpx.Client(timeout=120) as http,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):

        def post(data: bytes) -> httpx.Response:
            return http.post(running.url + "/predict?detect=false", content=data, headers={"Content-Type": "image/png"})

        poisoned_pair = list(pool.map(post, [black, face]))
        for response in poisoned_pair:  # both requests of the failing batch get the clear 5xx
            assert response.status_code == 500
            assert response.json() == {
                "error": {"code": "inference_failed", "message": "inference failed: InvalidArgumentError"}
            }
        for _ in range(2):  # the next batches work
            healthy_pair = list(pool.map(post, [face, face]))
            assert [r.status_code for r in healthy_pair] == [200, 200]
            assert all(len(r.json()["faces"]) == 1 for r in healthy_pair)
        text = running.metrics()
        assert metric_value(text, "fer_http_requests_total", {"route": "/predict", "status": "500"}) == 2
        assert http.get(running.url + "/readyz").status_code == 200


# --- overload: the admission bound covers the whole pipeline ------------------------------------------------------


def test_images_in_progress_are_bounded_not_only_crops_waiting_for_the_model(exported_model: Path) -> None:
    """Decoding and detection queue for worker threads before any crop reaches the batcher's bounded queue; without
    a bound on images in progress, an overload made that queue (and latency) grow without limit. Here the batcher
    has room for 8 crops, but only 2 images may be in progress: the third is refused at once with 503. (The model
    is held at a gate, so the first two are provably still in progress while the third arrives.)"""
    small = photos.encode(photos.astronaut().image[100:148, 180:228])
    with (
        running_service(
            exported_model,
            max_pending_images=2,
            max_batch_images=1,
            max_faces=8,  # (a queue smaller than a full /predict/batch is refused at start-up)
            max_batch_size=4,
            max_queue=8,
        ) as running,
        httpx.Client(timeout=60) as http,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
        gated_model(running.state.model) as gate,
    ):

        def post(_: int) -> httpx.Response:
            return http.post(
                running.url + "/predict?detect=false", content=small, headers={"Content-Type": "image/jpeg"}
            )

        waiting = [pool.submit(post, i) for i in range(2)]  # both wait at the gate, or queued behind it

        def crops_in_flight() -> float:
            held = gate.held  # read first: a crop moves from the queue to the gate, never back
            return held + metric_value(running.metrics(), "fer_queue_depth")

        assert wait_until(lambda: crops_in_flight() == 2, timeout=120)  # the timeout only bounds a hang
        refused = post(3)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        with connect(running.ws_url + "/ws/stream") as ws:  # stream frames share the same bound
            ws.send(small)
            reply = receive(ws)
            assert reply["type"] == "error" and reply["code"] == "overloaded"
        assert not any(f.done() for f in waiting)
        gate.open()
        assert [f.result(timeout=60).status_code for f in waiting] == [200, 200]
        assert post(4).status_code == 200  # admitted again as soon as the load is gone
