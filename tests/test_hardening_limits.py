"""Hardening, round 2 (issue 13), the leftovers: settings that can never work are refused at start-up, cancelled
work leaves the queues at once, crash isolation of the detection workers, and admission by decoded pixel bytes.

Real HTTP against the real app (in process or as ``python -m service``), real worker processes; every wait is for
an event (an answer, a counter, a file a worker wrote), never a sleep or a time window.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from websockets.sync.client import connect

from service import prepare as prepare_module
from service.config import ImpossibleSettingsError, Settings
from service.errors import InvalidImageError
from service.images import decoded_bytes, read_header
from service.prepare import PreparePool
from tests import photos, worker_probe
from tests.clocks import gated_model
from tests.hostile_client import wait_until
from tests.servers import RunningService, metric_value, running_service, service_env

ROOT = Path(__file__).resolve().parents[1]


# --- 1. settings that can never work ------------------------------------------------------------------------------


def _impossible(**values: object) -> ImpossibleSettingsError:
    with pytest.raises(ValidationError) as caught:
        Settings(model_dir=Path("unused"), **values)  # type: ignore[arg-type]
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    error = errors[0]["ctx"]["error"]
    assert isinstance(error, ImpossibleSettingsError)
    return error


def test_a_queue_smaller_than_a_full_batch_request_is_refused_naming_the_settings() -> None:
    # /predict/batch submits all of its crops at once: 16 images x 10 faces could never fit in 100
    error = _impossible(max_queue=100)
    assert [c.names for c in error.conflicts] == [("max_queue", "max_batch_images", "max_faces")]
    assert "max_queue (100) must be at least max_batch_images x max_faces (16 x 10 = 160)" in str(error)
    # the same queue is fine once a full batch fits in it
    assert Settings(model_dir=Path("unused"), max_queue=100, max_batch_images=10).max_queue == 100


def test_every_impossible_combination_is_named_in_one_message() -> None:
    error = _impossible(max_queue=8, max_batch_size=16, max_pending_images=4, max_body_bytes_in_flight=1024 * 1024)
    named = {name for conflict in error.conflicts for name in conflict.names}
    assert {"max_queue", "max_batch_size", "max_batch_images", "max_faces", "max_pending_images"} <= named
    assert "max_body_bytes_in_flight" in named
    assert len(error.conflicts) == 4 and str(error).count("; ") == 3


def test_python_m_service_refuses_impossible_settings_before_loading_anything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(tmp_path / "absent"), "--max-queue", "100"],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=120,  # bounds a hang only
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    assert "invalid settings" in errors[0] and "max_queue (100)" in errors[0] and "max_batch_images" in errors[0]
    assert "Traceback" not in result.stderr and "absent" not in result.stderr  # refused before the model was looked at


# --- 2. and 3. cancelled work stops; a crash fails only its own image ---------------------------------------------


@pytest.fixture(scope="module")
def one_worker(exported_model: Path) -> Iterator[RunningService]:
    """One detection worker (its queue is FIFO), one crop per model call, and room for exactly one full batch of
    eight single-face images in the model's queue."""
    with running_service(
        exported_model, prepare_processes=1, max_batch_size=1, max_batch_images=8, max_faces=1, max_queue=8
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as http:
        yield http


@contextlib.contextmanager
def probed(service: RunningService) -> Iterator[PreparePool]:
    """The service's detection workers run `tests.worker_probe.prepare_with_probe` around their real function."""
    pool = service.state.preparer
    assert isinstance(pool, PreparePool)
    pool.task = worker_probe.prepare_with_probe
    try:
        yield pool
    finally:
        pool.task = prepare_module._prepare_in_worker


def queued_in_pool(pool: PreparePool) -> int:
    """Images handed to the current worker pool and not finished (the executor's own record of its work)."""
    return len(getattr(pool._executor, "_pending_work_items", {}))


def small_jpeg() -> bytes:
    return photos.encode(photos.astronaut().image[100:148, 180:228])


def restarts(service: RunningService) -> float:
    return metric_value(service.metrics(), "fer_prepare_pool_restarts_total", {"reason": "crashed"})


def test_a_closed_stream_takes_its_queued_crop_out_of_the_queue_bound_at_once(
    one_worker: RunningService, client: httpx.Client
) -> None:
    """The model is held at a gate with one crop; a stream frame's crop waits in the queue; the stream closes, its
    frame's work is cancelled, and its crop stops counting at once (the worker is still stuck in the model call):
    a full batch of eight crops then fits in the queue of eight."""
    url, data = one_worker.url, small_jpeg()
    with (
        gated_model(one_worker.state.model) as gate,
        concurrent.futures.ThreadPoolExecutor(2) as threads,
    ):
        held = threads.submit(
            client.post, url + "/predict?detect=false", content=data, headers={"Content-Type": "image/jpeg"}
        )
        assert wait_until(lambda: gate.held == 1, timeout=120)  # the timeout only bounds a hang
        with connect(one_worker.ws_url + "/ws/stream", open_timeout=60) as ws:
            ws.send(json.dumps({"detect": False}))
            assert json.loads(ws.recv(timeout=60))["type"] == "options"
            ws.send(data)
            assert wait_until(lambda: metric_value(one_worker.metrics(), "fer_queue_depth") == 1, timeout=120)
        # the model call is still held: only the cancellation can have emptied the queue
        assert wait_until(lambda: metric_value(one_worker.metrics(), "fer_queue_depth") == 0, timeout=60)
        assert gate.held == 1 and not held.done()
        files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i in range(8)]
        batch = threads.submit(client.post, url + "/predict/batch?detect=false", files=files)
        assert wait_until(lambda: batch.done() or metric_value(one_worker.metrics(), "fer_queue_depth") == 8)
        assert not batch.done(), batch.result().text  # queued (8 of 8), not refused
        gate.open()
        assert held.result(timeout=120).status_code == 200
        answer = batch.result(timeout=120)
    assert answer.status_code == 200, answer.text
    assert [len(r["faces"]) for r in answer.json()["results"]] == [1] * 8
    assert metric_value(one_worker.metrics(), "fer_queue_depth") == 0


def test_when_one_image_of_a_batch_fails_the_others_stop(
    one_worker: RunningService, client: httpx.Client, tmp_path: Path
) -> None:
    """Image 0 of a batch of eight is held in the only worker until all eight are queued for it, then fails to
        decode. The request is answered 400 for image 0, and the seven others leave the worker's queue instead of
        running on: of them, only those the pool had already handed to its worker's call queue (a process pool keeps
    workers + 1 items there, and one more may be in transit: at most three here) are ever decoded. A
        request sent afterwards runs after anything still queued (one worker, FIFO), so the log is complete when it
        is answered."""
    gate, log = tmp_path / "gate", tmp_path / "ran.log"
    jpeg = small_jpeg()
    images = [worker_probe.probe(jpeg[: len(jpeg) // 2], name="img0", hold=gate)]
    images += [worker_probe.probe(jpeg, name=f"img{i}", log=log) for i in range(1, 8)]
    with probed(one_worker) as pool, concurrent.futures.ThreadPoolExecutor(1) as threads:
        files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        batch = threads.submit(client.post, one_worker.url + "/predict/batch", files=files)
        assert wait_until(lambda: Path(f"{gate}.entered").exists(), timeout=120)
        assert wait_until(lambda: queued_in_pool(pool) == 8, timeout=120)
        gate.touch()
        answer = batch.result(timeout=120)
        assert answer.status_code == 400, answer.text
        assert "0.jpg" in answer.json()["error"]["message"]
        sentinel = worker_probe.probe(jpeg, name="sentinel", log=log)
        after = client.post(one_worker.url + "/predict", content=sentinel, headers={"Content-Type": "image/jpeg"})
        assert after.status_code == 200
    names = [name for name, _, _ in worker_probe.logged(log)]
    assert names[-1] == "sentinel"
    assert len(names) - 1 <= 3, f"images of the failed batch ran on: {names}"  # (all seven before the fix)


def test_an_image_that_crashes_its_worker_fails_alone_and_the_replacement_pool_is_warm(
    one_worker: RunningService, client: httpx.Client, tmp_path: Path
) -> None:
    """A poisoned image X (its worker dies with SIGKILL, as on a native fault) takes down the pool while an
    innocent image A waits in the same pool. Both are tried again, each alone in a quarantine worker: A succeeds,
    X kills that worker too and gets 500 detection_failed. The replacement pool was warmed up before it took its
    first image, and so was each quarantine worker (the probe logs whether the detector was built before the
    image arrived)."""
    gate, log = tmp_path / "gate", tmp_path / "ran.log"
    face = photos.one_face_jpeg()
    poison = worker_probe.probe(face, name="X", hold=gate, crash=True, log=log)
    innocent = worker_probe.probe(face, name="A", log=log)
    before = restarts(one_worker)

    def post(data: bytes) -> httpx.Response:
        return client.post(one_worker.url + "/predict", content=data, headers={"Content-Type": "image/jpeg"})

    with probed(one_worker) as pool, concurrent.futures.ThreadPoolExecutor(2) as threads:
        (first_pid,) = pool.worker_pids()
        x = threads.submit(post, poison)
        assert wait_until(lambda: Path(f"{gate}.entered").exists(), timeout=120)
        a = threads.submit(post, innocent)
        assert wait_until(lambda: queued_in_pool(pool) == 2, timeout=120)  # A waits behind X in the same pool
        gate.touch()
        crashed, served = x.result(timeout=300), a.result(timeout=300)
        assert served.status_code == 200, served.text
        assert len(served.json()["faces"]) == 1
        assert crashed.status_code == 500
        assert crashed.json()["error"]["code"] == "detection_failed"
        assert restarts(one_worker) - before == 2  # the pool, then X's quarantine worker
        fresh = post(worker_probe.probe(face, name="B", log=log))
        assert fresh.status_code == 200
        (new_pid,) = pool.worker_pids()
    runs = worker_probe.logged(log)
    assert [(name, warm) for name, _, warm in runs if name == "X"] == [("X", "warm"), ("X", "warm")]
    assert [(name, warm) for name, _, warm in runs if name == "A"] == [("A", "warm")]  # only alone, after the crash
    assert [(name, pid, warm) for name, pid, warm in runs if name == "B"] == [("B", new_pid, "warm")]
    pids = {name: pid for name, pid, _ in runs if name != "X"}
    assert first_pid not in (pids["A"], new_pid) and pids["A"] != new_pid  # A ran in the quarantine, not a pool
    assert wait_until(lambda: gone(first_pid), timeout=60)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- 4. admission by decoded pixel bytes ----------------------------------------------------------------------------


def _encoded(mode: str, size: tuple[int, int], fmt: str, **options: object) -> bytes:
    image = Image.new(mode, size, 200 if mode in ("L", "P", "I;16", "I", "F", "1") else None)
    if image.mode != mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


#: (format, mode, save options, bytes per pixel the header declares, bytes per pixel admission counts)
HEADER_CASES = [
    ("PNG", "RGB", {}, 3, 3),
    ("PNG", "RGBA", {}, 4, 4),
    ("PNG", "L", {}, 1, 3),
    ("PNG", "I;16", {}, 2, 3),
    ("PNG", "P", {}, 1, 3),
    ("JPEG", "RGB", {}, 3, 3),
    ("JPEG", "L", {}, 1, 3),
    ("JPEG", "CMYK", {}, 4, 4),
    ("JPEG", "RGB", {"progressive": True}, 3, 3),
    ("GIF", "P", {}, 3, 3),
    ("BMP", "RGB", {}, 3, 3),
    ("BMP", "RGBA", {}, 4, 4),
    ("BMP", "L", {}, 1, 3),
    ("WEBP", "RGB", {"quality": 80}, 3, 3),
    ("WEBP", "RGB", {"lossless": True}, 3, 3),
    ("WEBP", "RGBA", {"lossless": True}, 4, 4),
    ("WEBP", "RGBA", {"quality": 80}, 4, 4),
    ("WEBP", "RGB", {"quality": 80, "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"}, 3, 3),
    ("TIFF", "RGB", {}, 3, 3),
    ("TIFF", "RGBA", {}, 4, 4),
    ("TIFF", "I;16", {}, 2, 3),
    ("TIFF", "F", {}, 4, 4),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}, 3, 3),
]


@pytest.mark.parametrize(("fmt", "mode", "options", "declared", "counted"), HEADER_CASES)
def test_the_header_reader_reads_size_and_bytes_per_pixel_of_each_format(
    fmt: str, mode: str, options: dict[str, object], declared: float, counted: int
) -> None:
    data = _encoded(mode, (301, 173), fmt, **options)
    header = read_header(data)
    assert header is not None
    opened = Image.open(io.BytesIO(data))
    assert (header.format, header.width, header.height) == (opened.format, *opened.size) == (fmt, 301, 173)
    assert header.bytes_per_pixel == declared
    assert decoded_bytes(data, max_pixels=10**6) == 301 * 173 * counted
    assert decoded_bytes(data, max_pixels=1000) == 1000 * counted  # at most the pixel limit: above it is refused


def test_the_header_reader_reads_big_endian_tiff_and_16_bit_png() -> None:
    array = np.full((40, 50, 3), 40000, dtype=np.uint16)
    png = cv2.imencode(".png", array)[1].tobytes()  # 16-bit RGB: 6 bytes a pixel declared, 4 counted
    header = read_header(png)
    assert header is not None and (header.width, header.height, header.bytes_per_pixel) == (50, 40, 6)
    assert decoded_bytes(png, max_pixels=10**6) == 50 * 40 * 4
    out = io.BytesIO()
    Image.new("RGB", (64, 32)).save(out, "TIFF")
    little = out.getvalue()
    big = _tiff_big_endian(64, 32)
    for data in (little, big):
        header = read_header(data)
        assert header is not None and (header.format, header.width, header.height) == ("TIFF", 64, 32)
        assert Image.open(io.BytesIO(data)).size == (64, 32)


def _tiff_big_endian(width: int, height: int) -> bytes:
    """A minimal uncompressed big-endian ("MM") RGB TIFF, written field by field."""
    import struct

    pixels = bytes(width * height * 3)
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 1, 8),  # (one value for three samples: Pillow reads it as 8,8,8)
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 0),  # strip offset, filled in below
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack(">HI", value, 0)[:4] if kind == 3 else struct.pack(">I", value)
        ifd += struct.pack(">HHI", tag, kind, count) + packed
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + pixels


def test_an_unreadable_header_counts_as_the_largest_image() -> None:
    png = _encoded("RGB", (30, 20), "PNG")
    for data in (png[:20], b"not an image at all", b"\xff\xd8\xff\xe0\x00"):
        assert decoded_bytes(data, max_pixels=5000) == 5000 * 4


def comment_marker_jpeg(size: int) -> bytes:
    """A real JPEG with ``size`` bytes of four-byte comment segments before its frame header."""
    jpeg = photos.encode(np.full((32, 32, 3), 128, dtype=np.uint8))
    return jpeg[:2] + b"\xff\xfe\x00\x02" * (size // 4) + jpeg[2:]


def test_the_jpeg_marker_walk_is_bounded() -> None:
    jpeg = photos.encode(np.full((32, 32, 3), 128, dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="marker segments"):
        read_header(comment_marker_jpeg(10 * 1024 * 1024 - 4096))
    with pytest.raises(InvalidImageError, match="junk or padding"):
        read_header(jpeg[:2] + b"\xff" * (1 << 20) + jpeg[2:])
    app0 = 4 + int.from_bytes(jpeg[4:6], "big")  # junk after the first segment
    with pytest.raises(InvalidImageError, match="junk"):
        read_header(jpeg[:app0] + b"\x00" * (1 << 20) + jpeg[app0:])
    # a few hundred segments and a little padding are fine, and Pillow agrees on the size
    fine = comment_marker_jpeg(4 * 500)
    fine = fine[:2] + b"\xff" * 10 + fine[2:]
    header = read_header(fine)
    assert header is not None and (header.width, header.height) == Image.open(io.BytesIO(fine)).size == (32, 32)


@pytest.fixture(scope="module")
def pixel_budget(exported_model: Path) -> Iterator[RunningService]:
    """One detection worker; images of at most 1 MP; 4.5 MB of decoded pixels in flight: one 1000x1000 RGB image
    (3 MB) fits, and an 800x800 one (1.92 MB) does not fit beside it."""
    with running_service(
        exported_model,
        prepare_processes=1,
        max_image_pixels=1_000_000,
        max_pixel_bytes_in_flight=4_500_000,
        max_batch_images=4,
    ) as running:
        yield running


def pixel_bytes(service: RunningService) -> float:
    return metric_value(service.metrics(), "fer_pixel_bytes_in_flight")


def rgb_png(width: int, height: int) -> bytes:
    return photos.encode(np.full((height, width, 3), 90, dtype=np.uint8), "PNG")


def test_a_jpeg_made_of_comment_markers_is_refused_before_it_reaches_a_worker(
    pixel_budget: RunningService, client: httpx.Client, tmp_path: Path
) -> None:
    """Pillow's header parser takes seconds over a JPEG of nothing but comment markers, in the detection worker;
    the service refuses it (400 invalid_image) from the event loop: the worker never sees it, as the sentinel sent
    after it shows (one worker, FIFO)."""
    log = tmp_path / "ran.log"
    bomb = worker_probe.probe(comment_marker_jpeg(10 * 1024 * 1024 - 8192), name="bomb", log=log)
    with probed(pixel_budget):
        answer = client.post(pixel_budget.url + "/predict", content=bomb, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_image"
        files = [("files", ("ok.jpg", small_jpeg(), "image/jpeg")), ("files", ("bomb.jpg", bomb, "image/jpeg"))]
        batch = client.post(pixel_budget.url + "/predict/batch", files=files)
        assert batch.status_code == 400, batch.text
        assert "bomb.jpg" in batch.json()["error"]["message"]
        sentinel = worker_probe.probe(small_jpeg(), name="sentinel", log=log)
        after = client.post(pixel_budget.url + "/predict", content=sentinel, headers={"Content-Type": "image/jpeg"})
        assert after.status_code == 200
    assert [name for name, _, _ in worker_probe.logged(log)] == ["sentinel"]
    assert pixel_bytes(pixel_budget) == 0


def test_the_pixel_budget_refuses_a_second_large_request_while_the_first_is_held(
    pixel_budget: RunningService, client: httpx.Client, tmp_path: Path
) -> None:
    """A 1000x1000 image (3 MB counted) is held in the worker; an 800x800 one (1.92 MB) would pass the 4.5 MB
    budget: 503 overloaded with Retry-After at once, although one image in progress is far from max_pending_images.
    Once the first is answered, the gauge is back at 0 and the same image is served."""
    gate = tmp_path / "gate"
    first = worker_probe.probe(rgb_png(1000, 1000), name="first", hold=gate)
    second = rgb_png(800, 800)

    def post(data: bytes) -> httpx.Response:
        return client.post(pixel_budget.url + "/predict", content=data, headers={"Content-Type": "image/png"})

    with probed(pixel_budget), concurrent.futures.ThreadPoolExecutor(1) as threads:
        held = threads.submit(post, first)
        assert wait_until(lambda: Path(f"{gate}.entered").exists(), timeout=120)
        assert pixel_bytes(pixel_budget) == 3_000_000
        refused = post(second)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert "bytes of decoded pixels" in refused.json()["error"]["message"]
        assert pixel_bytes(pixel_budget) == 3_000_000  # the refused request reserved nothing
        gate.touch()
        assert held.result(timeout=120).status_code == 200
    assert pixel_bytes(pixel_budget) == 0
    assert post(second).status_code == 200
    assert pixel_bytes(pixel_budget) == 0


def test_one_request_over_the_pixel_budget_alone_is_413(pixel_budget: RunningService, client: httpx.Client) -> None:
    files = [("files", (f"{i}.png", rgb_png(1000, 1000), "image/png")) for i in range(2)]  # 6 MB > 4.5 MB
    answer = client.post(pixel_budget.url + "/predict/batch", files=files)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "image_too_large"
    assert "max_pixel_bytes_in_flight" in answer.json()["error"]["message"]
    assert pixel_bytes(pixel_budget) == 0


def test_the_pixel_budget_is_given_back_after_a_failure_and_a_cancellation(
    pixel_budget: RunningService, client: httpx.Client, tmp_path: Path
) -> None:
    """A batch whose second image is corrupt (400) gives its bytes back; so does a stream frame whose stream closes
    while the frame is held in the worker (its work cancelled: the gauge returns to 0 before the worker is let go)."""
    png = rgb_png(600, 600)
    files = [("files", ("good.png", png, "image/png")), ("files", ("bad.png", png[: len(png) // 2], "image/png"))]
    failed = client.post(pixel_budget.url + "/predict/batch", files=files)
    assert failed.status_code == 400, failed.text
    assert pixel_bytes(pixel_budget) == 0
    gate = tmp_path / "gate"
    frame = worker_probe.probe(small_jpeg(), name="frame", hold=gate)
    with probed(pixel_budget):
        with connect(pixel_budget.ws_url + "/ws/stream", open_timeout=60) as ws:
            ws.send(json.dumps({"detect": False}))
            assert json.loads(ws.recv(timeout=60))["type"] == "options"
            ws.send(frame)
            assert wait_until(lambda: Path(f"{gate}.entered").exists(), timeout=120)
            assert pixel_bytes(pixel_budget) == 48 * 48 * 3
        assert wait_until(lambda: pixel_bytes(pixel_budget) == 0, timeout=60)  # the worker still holds the frame
        gate.touch()
        after = client.post(pixel_budget.url + "/predict", content=small_jpeg(), headers={"Content-Type": "image/jpeg"})
        assert after.status_code == 200
    assert pixel_bytes(pixel_budget) == 0


def test_a_pixel_budget_smaller_than_one_largest_image_is_refused() -> None:
    error = _impossible(max_image_pixels=1_000_000, max_pixel_bytes_in_flight=3_999_999)
    assert [c.names for c in error.conflicts] == [("max_pixel_bytes_in_flight", "max_image_pixels")]
    assert "max_pixel_bytes_in_flight (3999999) must be at least max_image_pixels x 4 bytes (4000000)" in str(error)


# --- 5. shutdown fits in the grace periods ----------------------------------------------------------------------------

#: Images already handed to a detection worker ((1 worker + 1 queued) x ~3 s at 40 MP) and the process's exit.
WORKERS_AND_EXIT_S = 8


def test_the_grace_periods_cover_the_worst_case_shutdown() -> None:
    """docs/reliability.md, "Shutdown": the server waits for requests up to their deadline, then each queue of the
    served version gets BATCHER_STOP_TIMEOUT_S, then the workers finish and the process exits; k8s adds its preStop.
    The deadline is the one the ConfigMap sets (compose passes the same default through)."""
    import yaml
    from fastapi import FastAPI

    from service.app import BATCHER_STOP_TIMEOUT_S
    from service.server import uvicorn_config

    configmap = yaml.safe_load((ROOT / "k8s" / "configmap.yaml").read_text())["data"]
    deadline = float(configmap["FER_REQUEST_DEADLINE_S"])
    settings = Settings(model_dir=Path("unused"), request_deadline_s=deadline)
    assert settings.request_deadline_s == Settings(model_dir=Path("unused")).request_deadline_s  # compose: default
    graceful = uvicorn_config(FastAPI(), settings).timeout_graceful_shutdown
    assert graceful is not None and graceful >= deadline  # no request is cut before its deadline
    after_sigterm = graceful + 2 * BATCHER_STOP_TIMEOUT_S + WORKERS_AND_EXIT_S

    deployment = yaml.safe_load((ROOT / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert deployment["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + after_sigterm

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["fer"]
    assert compose["stop_grace_period"].endswith("s")
    assert float(compose["stop_grace_period"][:-1]) >= after_sigterm
    # the same memory limit in both (docs/reliability.md, "Memory of a pod")
    assert container["resources"]["limits"]["memory"] == "3Gi" and compose["mem_limit"] == "3g"
