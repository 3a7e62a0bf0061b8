"""Grad-CAM explanations in the service (issue 15): the runtime's ``explain`` signature, ``explain=true`` on
/predict and /predict/batch, the stream option, the explain queue's batching and an export without the signature.

The model is the tiny one exported by the training package (``exported_model``: it has the signature); the old
export is the same network written again without it, as exports from before explanations are.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import jsonschema_rs
import numpy as np
import pytest
from websockets.sync.client import connect

from tests import photos
from tests.servers import RunningService, metric_value, running_service


@pytest.fixture(scope="module")
def labels(exported_model: Path) -> list[str]:
    return list(json.loads((exported_model / "metadata.json").read_text())["labels"])


@pytest.fixture(scope="module")
def input_size(exported_model: Path) -> tuple[int, int]:
    shape = json.loads((exported_model / "metadata.json").read_text())["input"]
    return shape["height"], shape["width"]


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    """At most two faces explained per request; a 50 ms batch window."""
    with running_service(exported_model, max_batch_wait_ms=50, explain_max_faces=2) as running:
        yield running


@pytest.fixture(scope="module")
def old_export(exported_model: Path, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network as a SavedModel with ``serving_default`` only and metadata without an ``explain``
    section: an export from before explanations existed."""
    from training.export import write_saved_model
    from training.model import load_inference_model

    old = tmp_path_factory.mktemp("old-export") / "tiny" / "1"
    shutil.copytree(exported_model, old)
    shutil.rmtree(old / "variables")
    (old / "saved_model.pb").unlink()
    write_saved_model(load_inference_model(str(trained_run / "model.keras")), old)
    metadata = json.loads((old / "metadata.json").read_text())
    metadata.pop("explain", None)
    (old / "metadata.json").write_text(json.dumps(metadata))
    return old


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as http:
        yield http


def schema_validator(url: str, component: str) -> Any:
    """A validator of the OpenAPI document's ``component`` schema, with its references into the document."""
    openapi = httpx.get(url + "/openapi.json", timeout=30).json()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    )


def decode_map(explanation: dict[str, Any]) -> np.ndarray:
    """The explanation's PNG as a 2-D uint8 array, checked to be of the stated size."""
    png = base64.b64decode(explanation["png"], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None and pixels.dtype == np.uint8
    assert pixels.shape == (explanation["height"], explanation["width"])  # one channel, the stated size
    return pixels


def face_crop_jpeg(margin: int = 30) -> bytes:
    x, y, w, h = photos.ASTRONAUT_FACE
    return photos.encode(photos.astronaut().image[y - margin : y + h + margin, x - margin : x + w + margin])


def blank_jpeg() -> bytes:
    return photos.encode(np.full((150, 150, 3), 128, np.uint8))


def post(client: httpx.Client, url: str, data: bytes, **params: Any) -> httpx.Response:
    return client.post(url + "/predict", content=data, headers={"Content-Type": "image/jpeg"}, params=params)


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# --- the runtime ------------------------------------------------------------------------------------------------


def test_the_tensorflow_runtime_runs_the_explain_signature(exported_model: Path, old_export: Path) -> None:
    """TensorFlow running the signature (OpenVINO's compiled explain IR: tests/test_runtimes.py)."""
    from service.errors import ExplanationsUnavailableError
    from service.model import load_model

    model = load_model(exported_model, runtime="tensorflow")
    assert model.can_explain
    height, width = model.input_size
    face = cv2.resize(
        cv2.cvtColor(cv2.imdecode(np.frombuffer(face_crop_jpeg(), np.uint8), 1), cv2.COLOR_BGR2GRAY), (width, height)
    )
    crops = np.stack([face, np.full((height, width), 128, np.uint8)])[..., None]
    out = model.explain(crops, np.array([-1, -1]))
    assert out.heatmaps.shape == (2, height, width) and out.heatmaps.dtype == np.float32
    assert 0 <= out.heatmaps.min() and out.heatmaps.max() <= 1
    assert not np.allclose(out.heatmaps[0], out.heatmaps[1])  # a face and a blank crop are explained differently
    np.testing.assert_allclose(out.probabilities, model.predict(crops), atol=1e-5)
    assert list(out.classes) == list(out.probabilities.argmax(axis=1))  # -1 = the top class
    assert list(model.explain(crops, np.array([2, 5])).classes) == [2, 5]

    old = load_model(old_export, runtime="tensorflow")
    assert not old.can_explain
    with pytest.raises(ExplanationsUnavailableError):
        old.explain(crops, np.array([-1, -1]))


def test_metadata_naming_a_missing_signature_only_turns_explanations_off(
    old_export: Path, exported_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.model import load_model

    promised = tmp_path / "1"
    shutil.copytree(old_export, promised)
    metadata = json.loads((promised / "metadata.json").read_text())
    metadata["explain"] = json.loads((exported_model / "metadata.json").read_text())["explain"]
    (promised / "metadata.json").write_text(json.dumps(metadata))
    assert not load_model(promised).can_explain
    assert "explanations are unavailable" in caplog.text


# --- HTTP -------------------------------------------------------------------------------------------------------


def test_predict_explain_adds_a_map_per_face_valid_against_the_openapi_schema(
    service: RunningService, client: httpx.Client, input_size: tuple[int, int]
) -> None:
    response = post(client, service.url, photos.one_face_jpeg(), explain="true")
    assert response.status_code == 200, response.text
    body = response.json()
    schema_validator(service.url, "Prediction").validate(body)
    assert body["explanations"] == {"explained": 1, "skipped": 0, "limit": 2}
    face = body["faces"][0]
    explanation = face["explanation"]
    assert set(explanation) == {"label", "box", "width", "height", "png"}
    assert explanation["label"] == face["emotion"]  # default: the top class
    assert (explanation["height"], explanation["width"]) == input_size  # the model's input size
    pixels = decode_map(explanation)
    assert pixels.max() == 255  # normalised per face
    # the map covers the crop the model saw: the face box plus the margin, a square inside the image
    box, window = face["box"], explanation["box"]
    assert window["width"] == window["height"] > box["width"]
    assert window["x"] <= box["x"] and window["y"] <= box["y"]
    assert window["x"] + window["width"] >= box["x"] + box["width"]
    assert window["y"] + window["height"] >= box["y"] + box["height"]

    plain = post(client, service.url, photos.one_face_jpeg()).json()  # off by default: no trace of it
    assert "explanations" not in plain and "explanation" not in plain["faces"][0]


def test_a_face_and_a_blank_crop_get_different_maps(service: RunningService, client: httpx.Client) -> None:
    face = post(client, service.url, face_crop_jpeg(), explain="true", detect="false").json()
    blank = post(client, service.url, blank_jpeg(), explain="true", detect="false").json()
    face_map, blank_map = decode_map(face["faces"][0]["explanation"]), decode_map(blank["faces"][0]["explanation"])
    assert not np.array_equal(face_map, blank_map)
    # detect=false: the map covers the whole image
    assert face["faces"][0]["explanation"]["box"] == {"x": 0, "y": 0, **face["image"]}


def test_explain_class_is_honoured_and_checked(
    service: RunningService, client: httpx.Client, labels: list[str]
) -> None:
    maps = []
    for label in labels:
        body = post(client, service.url, face_crop_jpeg(), explain="true", detect="false", explain_class=label).json()
        assert body["faces"][0]["explanation"]["label"] == label
        maps.append(decode_map(body["faces"][0]["explanation"]).tobytes())
    assert len(set(maps)) > 1  # the classes are explained by different evidence
    for bad in ("no-such-label", ""):
        response = post(client, service.url, face_crop_jpeg(), explain="true", explain_class=bad)
        assert response.status_code == 422 and error_code(response) == "invalid_parameter", response.text
    assert labels[0] in response.json()["error"]["message"]  # the message lists the labels


def test_batch_explains_at_most_the_limit_per_request(service: RunningService, client: httpx.Client) -> None:
    files = [
        ("files", ("three.jpg", photos.several_faces_jpeg(), "image/jpeg")),
        ("files", ("one.jpg", photos.one_face_jpeg(), "image/jpeg")),
    ]
    response = client.post(service.url + "/predict/batch", params={"explain": "true"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    schema_validator(service.url, "BatchPrediction").validate(body)
    first, second = body["results"]
    assert len(first["faces"]) == 3 and len(second["faces"]) == 1
    # the limit (2) is per request: the first two faces in order are explained, the rest are counted as skipped
    assert first["explanations"] == {"explained": 2, "skipped": 1, "limit": 2}
    assert second["explanations"] == {"explained": 0, "skipped": 1, "limit": 2}
    assert ["explanation" in face for face in first["faces"] + second["faces"]] == [True, True, False, False]
    for face in first["faces"][:2]:
        decode_map(face["explanation"])


def test_explained_crops_of_concurrent_requests_share_model_calls(exported_model: Path) -> None:
    clients = 4
    with running_service(exported_model, max_batch_size=clients, max_batch_wait_ms=5_000) as running:
        before = running.metrics()

        def one(_: int) -> httpx.Response:
            with httpx.Client(timeout=120) as http:
                return post(http, running.url, face_crop_jpeg(), explain="true", detect="false")

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            responses = list(pool.map(one, range(clients)))
        assert all(r.status_code == 200 and "explanation" in r.json()["faces"][0] for r in responses)
        after = running.metrics()
    # one model call of the explain signature carried the four crops (a full batch runs at once)
    assert metric_value(after, "fer_batch_size_count") - metric_value(before, "fer_batch_size_count") == 1
    assert metric_value(after, "fer_batch_size_sum") - metric_value(before, "fer_batch_size_sum") == clients
    assert metric_value(after, "fer_queue_depth") == 0


# --- the stream -------------------------------------------------------------------------------------------------


def receive(ws: Any) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=60)))


def test_stream_option_explain(service: RunningService, labels: list[str]) -> None:
    with connect(service.ws_url + "/ws/stream") as ws:
        ws.send(json.dumps({"explain": True, "explain_class": labels[1]}))
        options = receive(ws)  # (other options may be listed too)
        assert options["type"] == "options" and (options["explain"], options["explain_class"]) == (True, labels[1])
        assert (options["detect"], options["max_faces"]) == (True, service.settings.max_faces)  # unchanged
        ws.send(photos.one_face_jpeg())
        reply = receive(ws)
        assert reply["type"] == "result" and reply["explanations"] == {"explained": 1, "skipped": 0, "limit": 2}
        assert reply["faces"][0]["explanation"]["label"] == labels[1]
        decode_map(reply["faces"][0]["explanation"])

        ws.send(json.dumps({"explain_class": None}))  # null: back to the top class
        assert receive(ws)["explain_class"] is None
        ws.send(photos.one_face_jpeg())
        face = receive(ws)["faces"][0]
        assert face["explanation"]["label"] == face["emotion"]

        ws.send(json.dumps({"explain_class": "no-such-label"}))
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "invalid_parameter" and error["seq"] is None

        ws.send(json.dumps({"explain": False}))
        assert receive(ws)["explain"] is False
        ws.send(photos.one_face_jpeg())
        reply = receive(ws)
        assert "explanations" not in reply and "explanation" not in reply["faces"][0]


# --- an export without the signature ----------------------------------------------------------------------------


def test_an_export_without_the_signature_answers_explanations_unavailable(
    old_export: Path, client: httpx.Client
) -> None:
    with running_service(old_export) as old:
        response = post(client, old.url, photos.one_face_jpeg(), explain="true")
        assert response.status_code == 409, response.text
        assert response.json() == {
            "error": {"code": "explanations_unavailable", "message": response.json()["error"]["message"]}
        }
        assert "explanations unavailable for this model" in response.json()["error"]["message"]
        openapi = client.get(old.url + "/openapi.json").json()
        for path in ("/predict", "/predict/batch"):  # documented
            assert "409" in openapi["paths"][path]["post"]["responses"]
        batch = client.post(
            old.url + "/predict/batch?explain=true", files=[("files", ("a.jpg", photos.one_face_jpeg(), "image/jpeg"))]
        )
        assert batch.status_code == 409 and error_code(batch) == "explanations_unavailable"
        # everything else keeps working
        plain = post(client, old.url, photos.one_face_jpeg())
        assert plain.status_code == 200 and len(plain.json()["faces"]) == 1
        with connect(old.ws_url + "/ws/stream") as ws:
            ws.send(json.dumps({"explain": True}))
            error = receive(ws)
            assert error["type"] == "error" and error["code"] == "explanations_unavailable" and error["seq"] is None
            ws.send(photos.one_face_jpeg())
            reply = receive(ws)
            assert reply["type"] == "result" and "explanation" not in reply["faces"][0]
        assert metric_value(old.metrics(), "fer_rejected_total", {"reason": "explanations_unavailable"}) == 3


def test_explain_max_faces_zero_turns_explanations_off(exported_model: Path) -> None:
    from service.errors import ExplanationsUnavailableError
    from service.model import load_model
    from service.pipeline import Options, Predictor

    model = load_model(exported_model)
    off = Predictor(model, None, None, None, explainer=object(), explain_max_faces=0)  # type: ignore[arg-type]
    with pytest.raises(ExplanationsUnavailableError, match="turned off"):
        off.check_options(Options(explain=True))
    off.check_options(Options())  # without explain nothing is refused
