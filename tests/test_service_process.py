"""``python -m service`` as a real process: flags and environment variables, readiness while the model loads,
refusing to start on a broken model, structured logs and graceful shutdown on SIGTERM. (bf16 precision is tested
on the model itself, in test_service_model.py.)

The lifecycle test runs the service through ``tests.gated_service`` (the same ``main`` with a gate in front of the
model), so "the model is still loading" and "a request is in flight" are states the test holds, not races."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests import gated_service, photos
from tests.servers import free_port, service_env

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_setting_with_default_and_env_name() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=service_env(),
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert "FER_" + name.upper() in text
    assert "[default: 127.0.0.1; env: FER_HOST]" in text
    assert "[default: 8000; env: FER_PORT]" in text
    assert "[default: models/fer-cnn-48; env: FER_MODEL_DIR]" in text


def test_the_readme_table_documents_every_setting_with_its_real_default() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `--")}
    for name, field in Settings.model_fields.items():
        flag = "`--" + name.replace("_", "-") + "`"
        assert flag in rows, f"README's settings table has no row for {flag}"
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default == [] else f"`{default}`"
        assert rows[flag].split("|")[2:4] == [f" `FER_{name.upper()}` ", f" {shown} "], rows[flag]
    assert len(rows) == len(Settings.model_fields), "README documents a setting the service does not have"


def test_flags_override_environment_variables() -> None:
    from service.config import settings_from_args

    old = dict(os.environ)
    try:
        os.environ.update({"FER_PORT": "9001", "FER_API_KEYS": "a, b", "FER_MAX_FACES": "3"})
        settings = settings_from_args(["--port", "9002", "--cors-origins", "http://x.example,http://y.example"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert settings.port == 9002 and settings.max_faces == 3
    assert [key.get_secret_value() for key in settings.api_keys] == ["a", "b"]
    assert settings.cors_origins == ["http://x.example", "http://y.example"]
    bad = subprocess.run(
        [sys.executable, "-m", "service", "--max-batch-size", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=service_env(),
    )
    assert bad.returncode == 2 and "max_batch_size" in bad.stderr


def test_broken_model_refuses_to_start_with_one_clear_message(exported_model: Path, tmp_path: Path) -> None:
    """(Every contract check is covered in test_service_model.py; this is what the process does with one.)"""
    broken = tmp_path / "broken" / "1"
    shutil.copytree(exported_model, broken)
    metadata = json.loads((broken / "metadata.json").read_text())
    metadata["input"]["color_mode"] = "rgb"  # but channels stays 1
    (broken / "metadata.json").write_text(json.dumps(metadata))
    out = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(broken.parent), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=service_env(),
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: cannot serve the model: {broken / 'metadata.json'} violates the model contract: "
        "input.channels is 1 but color_mode 'rgb' needs 3"
    )
    assert "Traceback" not in out.stderr


@pytest.fixture
def process(exported_model: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        gated_service.command(),
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=service_env(FER_MODEL_DIR=str(exported_model), FER_PORT=str(port)),
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def healthz_refused(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=5)
    except httpx.TransportError:
        return True
    return False


def test_lifecycle_readiness_logs_and_graceful_shutdown(
    process: tuple[subprocess.Popen[str], str], exported_model: Path
) -> None:
    proc, url = process
    gate = gated_service.GateControl(proc)  # closed: the model's warm-up cannot finish until the test opens it
    jpeg = photos.encode(photos.astronaut().image[100:148, 180:228])
    deadline = time.monotonic() + 180  # bounds a hang only
    while True:  # /healthz answers as soon as the port is open, before the model is ready
        assert proc.poll() is None and time.monotonic() < deadline
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.02)
    gate.wait_held(1)  # the warm-up's first model call waits at the gate: the model is provably still loading
    not_ready = httpx.get(url + "/readyz", timeout=5)
    assert not_ready.status_code == 503
    assert not_ready.json() == {"error": {"code": "not_ready", "message": "the model is still loading"}}
    early = httpx.post(url + "/predict", content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
    gate.open()
    while httpx.get(url + "/readyz", timeout=5).status_code != 200:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)

    gate.close()
    warm_up_calls = gate.call_count()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # detect=false: the whole 48x48 image is the crop; its model call waits at the gate while SIGTERM arrives
        in_flight = pool.submit(
            httpx.post, url + "/predict?detect=false", content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=120
        )
        gate.wait_held(1)
        assert gate.calls[warm_up_calls:] == [1] and not in_flight.done()
        proc.send_signal(signal.SIGTERM)
        while not healthz_refused(url):  # the server has stopped accepting connections: it is shutting down
            assert not in_flight.done() and time.monotonic() < deadline
            time.sleep(0.02)
        gate.open()
        response = in_flight.result(timeout=120)
    assert response.status_code == 200  # finished, not dropped
    # uvicorn re-raises the signal it handled once it has shut down cleanly, so the exit status says "SIGTERM"
    assert proc.wait(60) in (0, -signal.SIGTERM)
    stderr = proc.stderr.read()

    # the answer is the model's own on that crop
    from service import faces
    from service.images import decode_image
    from service.model import load_model

    model = load_model(exported_model)
    image = decode_image(jpeg, max_pixels=10**6)
    meta = model.metadata.input
    crop = faces.crop_faces(
        image,
        [faces.whole_image(image).box],
        height=meta.height,
        width=meta.width,
        color_mode=meta.color_mode,
        margin=0.0,
    )
    expected = model.predict(crop)[0]
    got = np.array(list(response.json()["faces"][0]["probabilities"].values()))
    assert np.max(np.abs(got - expected)) < 1e-4

    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [
        line
        for line in lines
        if line["logger"] == "service.access" and line["route"] == "/predict" and line["status"] == 200
    ]
    assert access and access[-1]["faces"] == 1 and access[-1]["method"] == "POST" and access[-1]["duration_ms"] > 0
    messages = [line["message"] for line in lines]
    assert "ready" in messages and "stopped" in messages
    assert messages.index("stopped") > messages.index("ready")
