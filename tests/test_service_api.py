"""The real service over real HTTP and WebSocket: uvicorn on a loopback port, the tiny SavedModel exported by the
training package (``exported_model``), the default face detector and real photographs (tests/photos.py)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests import photos
from tests.clocks import ManualClock, gated_model
from tests.hostile_client import wait_until
from tests.servers import RunningService, metric_value, running_service

KEY = "test-key-1"


# --- servers (one per configuration, shared by the tests of this module) -------------------------------------------


@pytest.fixture(scope="module")
def metadata(exported_model: Path) -> dict[str, Any]:
    return json.loads((exported_model / "metadata.json").read_text())


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    """Default settings but a 50 ms batch window; served from the model *name* folder (its highest version)."""
    with running_service(exported_model.parent, max_batch_wait_ms=50) as running:
        yield running


@pytest.fixture(scope="module")
def strict(exported_model: Path) -> Iterator[RunningService]:
    """API keys, CORS and small limits."""
    with running_service(
        exported_model,
        api_keys=[KEY, "other-key"],
        cors_origins=["http://page.example"],
        max_upload_bytes=60_000,
        max_image_pixels=1_000_000,
        max_batch_images=2,
        ws_max_frame_bytes=60_000,
        ws_max_connections=1,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def slow_batches(exported_model: Path) -> Iterator[RunningService]:
    """Batches of two crops that wait up to 10 s for company, and room for only two crops in the queue (so at most
    two images of one face each per request: a queue smaller than a full /predict/batch is refused at start-up). The
    batch window runs on a clock that never moves: a lone crop waits for company however slow the machine is."""
    with running_service(
        exported_model,
        max_batch_size=2,
        max_queue=2,
        max_batch_images=2,
        max_faces=1,
        max_batch_wait_ms=10_000,
        batch_clock=ManualClock(),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as http:
        yield http


def post_image(
    client: httpx.Client, url: str, data: bytes, content_type: str = "image/jpeg", **params: Any
) -> httpx.Response:
    return client.post(url + "/predict", content=data, headers={"Content-Type": content_type}, params=params)


def boxes(body: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    return [(f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]) for f in body["faces"]]


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


# --- /predict on real photographs ------------------------------------------------------------------------------


def test_one_face_multipart_full_response(
    service: RunningService, client: httpx.Client, metadata: dict[str, Any]
) -> None:
    response = client.post(
        service.url + "/predict", files={"file": ("astronaut.jpg", photos.one_face_jpeg(), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "image", "faces", "timings_ms"}
    assert body["model"] == {"name": metadata["name"], "version": metadata["version"]}
    assert body["image"] == {"width": 512, "height": 512}
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert set(face) == {"box", "score", "emotion", "confidence", "probabilities"}
    assert photos.iou(boxes(body)[0], photos.ASTRONAUT_FACE) > 0.5
    assert 0 < face["score"] <= 1
    assert list(face["probabilities"]) == metadata["labels"]  # every label, in the model's order
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
    assert face["confidence"] == face["probabilities"][face["emotion"]]
    assert set(body["timings_ms"]) == {"decode", "detect", "infer", "total"}
    assert all(v >= 0 for v in body["timings_ms"].values())
    assert body["timings_ms"]["total"] >= body["timings_ms"]["decode"]


def test_raw_body_gives_the_same_result_as_multipart(service: RunningService, client: httpx.Client) -> None:
    jpeg = photos.one_face_jpeg()
    raw = post_image(client, service.url, jpeg).json()
    multipart = client.post(service.url + "/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")}).json()
    assert boxes(raw) == boxes(multipart)
    assert raw["faces"][0]["probabilities"] == pytest.approx(multipart["faces"][0]["probabilities"], abs=1e-6)


@pytest.mark.parametrize(
    "fmt, content_type", [("PNG", "image/png"), ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")]
)
def test_other_formats(service: RunningService, client: httpx.Client, fmt: str, content_type: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = photos.encode(photos.astronaut().image, fmt, **options)
    body = post_image(client, service.url, data, content_type).json()
    assert len(body["faces"]) == 1 and photos.iou(boxes(body)[0], photos.ASTRONAUT_FACE) > 0.5


def test_several_faces_left_to_right(service: RunningService, client: httpx.Client) -> None:
    photo = photos.several_faces()
    body = post_image(client, service.url, photos.encode(photo.image)).json()
    assert body["image"] == {"width": photo.image.shape[1], "height": photo.image.shape[0]}
    found = boxes(body)
    assert len(found) == len(photo.faces)
    assert [b[0] for b in found] == sorted(b[0] for b in found)
    for got, expected in zip(found, photo.faces, strict=False):
        assert photos.iou(got, expected) > 0.4, (got, expected)
    limited = post_image(client, service.url, photos.encode(photo.image), max_faces=1).json()
    assert len(limited["faces"]) == 1


def test_no_face_is_an_empty_list_and_counted(service: RunningService, client: httpx.Client) -> None:
    before = metric_value(service.metrics(), "fer_images_without_face_total")
    for kind in ("coffee", "chelsea"):
        response = post_image(client, service.url, photos.encode(photos.no_face(kind).image))
        assert response.status_code == 200
        assert response.json()["faces"] == []
    assert metric_value(service.metrics(), "fer_images_without_face_total") == before + 2


def test_detect_false_treats_the_whole_image_as_one_face(service: RunningService, client: httpx.Client) -> None:
    body = post_image(client, service.url, photos.no_face_jpeg(), detect="false").json()
    height, width = photos.no_face().image.shape[:2]
    assert boxes(body) == [(0, 0, width, height)]
    assert body["faces"][0]["score"] == 1.0
    assert sum(body["faces"][0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_grayscale_rgba_and_16_bit_uploads(service: RunningService, client: httpx.Client) -> None:
    rgb = photos.astronaut().image
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    gray16 = gray.astype(np.uint16) * 257
    uploads = [photos.encode(gray, "PNG"), photos.encode(rgba, "PNG")]
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, "PNG")
    uploads.append(buffer.getvalue())
    for data in uploads:
        body = post_image(client, service.url, data, "image/png").json()
        assert len(body["faces"]) == 1 and photos.iou(boxes(body)[0], photos.ASTRONAUT_FACE) > 0.5


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied_before_detection(
    service: RunningService, client: httpx.Client, orientation: int
) -> None:
    photo = photos.several_faces()
    body = post_image(client, service.url, photos.with_exif_orientation(photo.image, orientation)).json()
    assert body["image"] == {"width": photo.image.shape[1], "height": photo.image.shape[0]}
    found = boxes(body)
    assert len(found) == len(photo.faces)
    for got, expected in zip(found, photo.faces, strict=False):
        assert photos.iou(got, expected) > 0.4


# --- /predict/batch ----------------------------------------------------------------------------------------------


def test_batch_results_in_order_through_one_model_call(service: RunningService, client: httpx.Client) -> None:
    before = service.metrics()
    files = [
        ("files", ("astronaut.jpg", photos.one_face_jpeg(), "image/jpeg")),
        ("files", ("coffee.jpg", photos.no_face_jpeg(), "image/jpeg")),
        ("files", ("three.jpg", photos.several_faces_jpeg(), "image/jpeg")),
    ]
    response = client.post(service.url + "/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [len(r["faces"]) for r in results] == [1, 0, 3]
    assert results[1]["image"] == {"width": 600, "height": 400}
    after = service.metrics()
    # all four faces went through the model together: one call of four crops
    assert metric_value(after, "fer_batch_size_count") - metric_value(before, "fer_batch_size_count") == 1
    assert metric_value(after, "fer_batch_size_sum") - metric_value(before, "fer_batch_size_sum") == 4


def test_batch_bad_image_names_it(service: RunningService, client: httpx.Client) -> None:
    files = [
        ("files", ("good.jpg", photos.one_face_jpeg(), "image/jpeg")),
        ("files", ("bad.jpg", b"this is not a picture", "image/jpeg")),
    ]
    message = assert_error(client.post(service.url + "/predict/batch", files=files), 400, "invalid_image")
    assert message.startswith("image 2 (bad.jpg): ")


def test_batch_needs_files(service: RunningService, client: httpx.Client) -> None:
    message = assert_error(
        client.post(service.url + "/predict/batch", data={"x": "1"}, files={"n": (None, "2")}), 422, "missing_field"
    )
    assert message == "the multipart body has no file parts (use the field name 'files')"
    assert_error(
        client.post(
            service.url + "/predict/batch", content=photos.one_face_jpeg(), headers={"Content-Type": "image/jpeg"}
        ),
        415,
        "unsupported_media_type",
    )


# --- bad input --------------------------------------------------------------------------------------------------


def test_every_bad_input_is_a_4xx_json_error_and_the_service_keeps_serving(
    service: RunningService, client: httpx.Client
) -> None:
    jpeg = photos.one_face_jpeg()
    url = service.url
    assert_error(post_image(client, url, b""), 400, "empty_body")
    assert_error(client.post(url + "/predict", files={"file": ("empty.jpg", b"", "image/jpeg")}), 400, "empty_body")
    assert_error(post_image(client, url, b"hello, this is text", "image/png"), 400, "invalid_image")
    assert_error(post_image(client, url, jpeg[: len(jpeg) // 2]), 400, "invalid_image")  # truncated
    corrupt = bytearray(jpeg)
    corrupt[600:4000] = bytes(3400)  # a real JPEG header, then zeros over the start-of-scan header and image data
    assert_error(post_image(client, url, bytes(corrupt)), 400, "invalid_image")  # corrupt: no decoder finds pixels
    heic = b"\x00\x00\x00\x18ftypheic" + bytes(64)
    assert_error(post_image(client, url, heic, "image/heic"), 415, "unsupported_image_format")
    message = assert_error(post_image(client, url, jpeg, "application/json"), 415, "unsupported_media_type")
    assert message.startswith("Content-Type is application/json")
    assert_error(client.post(url + "/predict", content=jpeg), 415, "unsupported_media_type")  # no Content-Type
    assert_error(client.post(url + "/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")}), 422, "missing_field")
    assert_error(
        client.post(
            url + "/predict", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}
        ),
        422,
        "missing_field",
    )
    assert_error(post_image(client, url, jpeg, detect="maybe"), 422, "invalid_parameter")
    assert_error(post_image(client, url, jpeg, max_faces=0), 422, "invalid_parameter")
    assert_error(client.delete(url + "/healthz"), 405, "method_not_allowed")
    assert_error(client.get(url + "/no/such/thing"), 404, "not_found")
    assert post_image(client, url, jpeg).status_code == 200  # still serving


# --- limits, auth, CORS ------------------------------------------------------------------------------------------


def big_noise_jpeg(side: int = 400) -> bytes:
    """A real JPEG of noise: incompressible, so over any small byte limit."""
    return photos.encode(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_limits(strict: RunningService, client: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    big = big_noise_jpeg()
    assert len(big) > strict.settings.max_upload_bytes
    for response in (
        client.post(strict.url + "/predict", content=big, headers={**auth, "Content-Type": "image/jpeg"}),
        client.post(strict.url + "/predict", files={"file": ("big.jpg", big, "image/jpeg")}, headers=auth),
    ):
        assert_error(response, 413, "payload_too_large")
    # a decompression bomb: a few hundred bytes declaring 4000x4000 pixels, refused before decoding
    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 60_000
    message = assert_error(
        client.post(strict.url + "/predict", content=bomb.getvalue(), headers={**auth, "Content-Type": "image/png"}),
        413,
        "image_too_large",
    )
    assert "4000x4000" in message
    small = photos.encode(photos.astronaut().image, quality=60)
    three = [("files", (f"{i}.jpg", small, "image/jpeg")) for i in range(3)]
    assert_error(client.post(strict.url + "/predict/batch", files=three, headers=auth), 413, "too_many_images")
    ok = client.post(strict.url + "/predict/batch", files=three[:2], headers=auth)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    text = strict.metrics()
    assert metric_value(text, "fer_rejected_total", {"reason": "payload_too_large"}) >= 2
    assert metric_value(text, "fer_rejected_total", {"reason": "image_too_large"}) >= 1


def test_api_keys(strict: RunningService, client: httpx.Client) -> None:
    jpeg = photos.encode(photos.astronaut().image, quality=60)
    missing = client.post(strict.url + "/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.post(
        strict.url + "/predict", content=jpeg, headers={"Content-Type": "image/jpeg", "Authorization": "Bearer nope"}
    )
    assert assert_error(wrong, 401, "unauthorized") == "the API key is not valid"
    assert_error(
        client.post(strict.url + "/predict/batch", files={"files": ("a.jpg", jpeg, "image/jpeg")}), 401, "unauthorized"
    )
    for key in (KEY, "other-key"):
        ok = client.post(
            strict.url + "/predict",
            content=jpeg,
            headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {key}"},
        )
        assert ok.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/"):  # health, metrics and the page stay open
        assert client.get(strict.url + path).status_code == 200


def test_cors_only_when_configured(strict: RunningService, service: RunningService, client: httpx.Client) -> None:
    preflight = {
        "Origin": "http://page.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = client.options(strict.url + "/predict", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://page.example"
    other = client.options(strict.url + "/predict", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    plain = client.get(service.url + "/healthz", headers={"Origin": "http://page.example"})
    assert "access-control-allow-origin" not in plain.headers


# --- health, metrics, docs -----------------------------------------------------------------------------------------


def test_health_readiness_page_and_openapi(
    service: RunningService, client: httpx.Client, metadata: dict[str, Any]
) -> None:
    assert client.get(service.url + "/healthz").json() == {"status": "ok"}
    assert client.get(service.url + "/readyz").json() == {
        "status": "ready",
        "model": {"name": metadata["name"], "version": metadata["version"]},
    }
    page = client.get(service.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    schema = client.get(service.url + "/openapi.json").json()
    assert {"/predict", "/predict/batch", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    prediction = schema["components"]["schemas"]["Prediction"]
    assert prediction["examples"][0]["faces"][0]["emotion"]
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_metrics_change_after_requests(service: RunningService, client: httpx.Client, metadata: dict[str, Any]) -> None:
    ok = {"route": "/predict", "method": "POST", "status": "200"}
    before = service.metrics()
    post_image(client, service.url, photos.one_face_jpeg())
    post_image(client, service.url, b"", "image/jpeg")
    client.get(service.url + "/no/such/path/42")
    after = service.metrics()
    assert metric_value(after, "fer_http_requests_total", ok) == metric_value(before, "fer_http_requests_total", ok) + 1
    bad = {"route": "/predict", "method": "POST", "status": "400"}
    assert (
        metric_value(after, "fer_http_requests_total", bad) == metric_value(before, "fer_http_requests_total", bad) + 1
    )
    for name in (
        "fer_http_request_duration_seconds_count",
        "fer_inference_duration_seconds_count",
        "fer_batch_size_count",
        "fer_queue_wait_seconds_count",
        "fer_faces_per_image_count",
    ):
        assert metric_value(after, name) > metric_value(before, name), name
    assert (
        metric_value(after, "fer_rejected_total", {"reason": "empty_body"})
        == metric_value(before, "fer_rejected_total", {"reason": "empty_body"}) + 1
    )
    assert metric_value(after, "fer_model_load_seconds") > 0
    assert metric_value(after, "fer_model_info", {"name": metadata["name"], "version": metadata["version"]}) == 1
    assert "fer_queue_depth 0.0" in after and "fer_websocket_connections" in after
    assert "/no/such/path/42" not in after  # route templates only, never raw paths


# --- batching and back-pressure ----------------------------------------------------------------------------------


def test_concurrent_requests_share_a_model_call_and_a_full_queue_answers_503(
    slow_batches: RunningService, client: httpx.Client
) -> None:
    """max_batch_size=2, max_queue=2 and a batch window that never ends: a lone crop waits for company."""
    url = slow_batches.url
    small = photos.encode(photos.astronaut().image[:96, :96])
    before = slow_batches.metrics()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_image, httpx.Client(timeout=60), url, small, detect="false")
        # the lone crop is queued (the timeout only bounds a hang: nothing can take it from the queue)
        assert wait_until(lambda: first.done() or metric_value(slow_batches.metrics(), "fer_queue_depth") == 1)
        assert not first.done()
        # two more crops do not fit next to it: refused at once, not queued
        full = client.post(
            url + "/predict/batch?detect=false", files=[("files", (f"{i}.jpg", small, "image/jpeg")) for i in range(2)]
        )
        assert_error(full, 503, "overloaded")
        assert full.headers["Retry-After"] == "1"
        assert not first.done()
        second = post_image(client, url, small, detect="false")  # completes the batch of two
        assert second.status_code == 200
        assert first.result(timeout=30).status_code == 200
    after = slow_batches.metrics()
    assert metric_value(after, "fer_batch_size_count") - metric_value(before, "fer_batch_size_count") == 1
    assert metric_value(after, "fer_batch_size_sum") - metric_value(before, "fer_batch_size_sum") == 2
    assert metric_value(after, "fer_rejected_total", {"reason": "overloaded"}) == 1
    assert metric_value(after, "fer_queue_depth") == 0


def test_many_concurrent_clients_are_batched(service: RunningService) -> None:
    """While the model is busy (a call held at a gate), crops of many concurrent clients queue up; they then share
    one model call. Nothing here depends on the batch window: the requests are provably queued before the model is
    released. (Pre-cropped faces, detect=false: one crop per request.)"""
    clients = 12
    data = photos.one_face_jpeg()
    before = service.metrics()

    def one(_: int) -> int:
        with httpx.Client(timeout=120) as http:
            return post_image(http, service.url, data, detect="false").status_code

    with gated_model(service.state.model) as gate, concurrent.futures.ThreadPoolExecutor(clients + 1) as pool:
        busy = pool.submit(one, -1)  # occupies the model
        assert wait_until(lambda: busy.done() or gate.held == 1)
        others = [pool.submit(one, i) for i in range(clients)]
        assert wait_until(
            lambda: busy.done() or metric_value(service.metrics(), "fer_queue_depth") == clients, timeout=120
        )
        assert not busy.done() and gate.calls == [1]
        gate.open()
        assert busy.result(timeout=120) == 200
        assert [f.result(timeout=120) for f in others] == [200] * clients
    assert gate.calls == [1, clients]  # all the queued crops shared one model call
    after = service.metrics()
    calls = metric_value(after, "fer_batch_size_count") - metric_value(before, "fer_batch_size_count")
    crops = metric_value(after, "fer_batch_size_sum") - metric_value(before, "fer_batch_size_sum")
    assert (calls, crops) == (2, clients + 1)


# --- WebSocket /ws/stream ---------------------------------------------------------------------------------------


def receive(ws: Any, timeout: float = 60) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def test_stream_happy_path_options_and_bad_frames(service: RunningService, metadata: dict[str, Any]) -> None:
    with connect(service.ws_url + "/ws/stream") as ws:
        ws.send(photos.one_face_jpeg())
        reply = receive(ws)
        assert reply["type"] == "result" and reply["seq"] == 1
        assert reply["dropped"] == 0 and reply["dropped_total"] == 0
        assert reply["model"] == {"name": metadata["name"], "version": metadata["version"]}
        assert reply["image"] == {"width": 512, "height": 512}
        assert len(reply["faces"]) == 1 and photos.iou(boxes(reply)[0], photos.ASTRONAUT_FACE) > 0.5
        assert set(reply["timings_ms"]) == {"decode", "detect", "infer", "total"}

        ws.send(b"not an image")  # an error reply, and the socket stays open
        error = receive(ws)
        assert error["type"] == "error" and error["seq"] == 2 and error["code"] == "invalid_image"

        ws.send(json.dumps({"detect": False}))
        assert receive(ws) == {
            "type": "options",
            "detect": False,
            "max_faces": service.settings.max_faces,
            "explain": False,
            "explain_class": None,
            "smoothing": 0,
            "hysteresis": 0,
        }
        ws.send(photos.no_face_jpeg())
        reply = receive(ws)
        assert reply["seq"] == 3 and boxes(reply) == [(0, 0, 600, 400)]

        ws.send(json.dumps({"detect": True, "max_faces": 2}))
        assert receive(ws) == {
            "type": "options",
            "detect": True,
            "max_faces": 2,
            "explain": False,
            "explain_class": None,
            "smoothing": 0,
            "hysteresis": 0,
        }
        ws.send(photos.several_faces_jpeg())
        assert len(receive(ws)["faces"]) == 2

        for bad in ("not json", json.dumps({"detect": "yes"}), json.dumps({"colour": 1}), json.dumps([1])):
            ws.send(bad)
            error = receive(ws)
            assert error["type"] == "error" and error["code"] == "invalid_parameter" and error["seq"] is None
        ws.send(photos.one_face_jpeg())
        assert receive(ws)["seq"] == 5


def test_stream_fast_sender_gets_latest_frames_and_drop_counts(service: RunningService) -> None:
    frames = 40
    jpeg = photos.one_face_jpeg()
    before = metric_value(service.metrics(), "fer_websocket_frames_dropped_total")
    with connect(service.ws_url + "/ws/stream") as ws:
        for _ in range(frames):  # far faster than decode + detect + classify
            ws.send(jpeg)
        replies = []
        while not replies or replies[-1]["seq"] != frames:  # latest wins: the last frame is always answered
            replies.append(receive(ws))
    assert all(r["type"] == "result" for r in replies)
    seqs = [r["seq"] for r in replies]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    dropped = sum(r["dropped"] for r in replies)
    assert dropped > 0 and dropped + len(replies) == frames
    assert replies[-1]["dropped_total"] == dropped
    assert metric_value(service.metrics(), "fer_websocket_frames_dropped_total") == before + dropped


def test_stream_oversize_frame_closes_with_1009(strict: RunningService) -> None:
    with connect(
        strict.ws_url + "/ws/stream", additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None
    ) as ws:
        ws.send(big_noise_jpeg())
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_stream_auth_and_connection_cap(strict: RunningService) -> None:
    with connect(strict.ws_url + "/ws/stream") as ws:  # no key
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
        assert info.value.rcvd.code == 1008
    small = photos.encode(photos.astronaut().image, quality=60)
    with connect(strict.ws_url + f"/ws/stream?api_key={KEY}") as first:  # browsers: key in the query string
        first.send(small)
        assert receive(first)["type"] == "result"
        assert metric_value(strict.metrics(), "fer_websocket_connections") == 1
        with connect(strict.ws_url + "/ws/stream", additional_headers={"Authorization": f"Bearer {KEY}"}) as second:
            assert receive(second)["code"] == "too_many_connections"  # ws_max_connections=1
            with pytest.raises(ConnectionClosed) as info:
                second.recv(timeout=30)
            assert info.value.rcvd.code == 1013
        first.send(small)
        assert receive(first)["type"] == "result"
    deadline = time.monotonic() + 30
    while metric_value(strict.metrics(), "fer_websocket_connections") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_without_a_demo_page_the_root_is_a_placeholder_made_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package without ``static/index.html`` serves a page built in memory and writes nothing (the package
    folder may be on a read-only root filesystem)."""
    from fastapi.testclient import TestClient

    from service import app as app_module
    from service.config import Settings

    missing = tmp_path / "no-static"
    monkeypatch.setattr(app_module, "STATIC_DIR", missing)
    page = TestClient(app_module.create_app(Settings(model_dir=tmp_path))).get("/")  # no lifespan: no model load
    assert page.status_code == 200 and page.text == app_module.PLACEHOLDER_PAGE
    assert not missing.exists()
