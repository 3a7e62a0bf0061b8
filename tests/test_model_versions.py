"""Model versions (issue 17): the version policy, the registry's states, draining, and hot reload under load.

The registry tests use a fake loader (no TensorFlow): what they check is the bookkeeping. The last test runs the real
service as a subprocess (``python -m service``) with the tiny export, drops version 2 in and removes version 1 while
clients keep sending requests over real HTTP; every step waits on ``GET /v1/models``, never on a sleep. The one
before it runs the app in this process to see that an unloaded version's objects are really released.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.errors import ModelLoadError, NotReadyError, VersionNotFoundError, VersionNotReadyError
from service.model import LoadedModel
from service.registry import ModelRegistry, VersionPolicy, VersionState
from tests.servers import free_port, running_service, service_env

ROOT = Path(__file__).resolve().parents[1]


# --- the policy -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "available", "chosen"),
    [
        ("latest", [1, 3, 2], {3}),
        ("latest:2", [1, 3, 2], {3, 2}),
        ("latest:5", [1, 2], {1, 2}),
        ("specific:1,3", [1, 2, 3], {1, 3}),
        ("specific:4", [1, 2], set()),
    ],
)
def test_the_version_policy_picks_versions(text: str, available: list[int], chosen: set[int]) -> None:
    policy = VersionPolicy.parse(text)
    assert policy.select(available) == chosen
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "specific:", "specific:a,b"])
def test_a_malformed_version_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        VersionPolicy.parse(text)


# --- the registry with a fake loader ----------------------------------------------------------------------------


class FakeModel:
    def __init__(self, path: Path) -> None:
        meta = json.loads((path / "metadata.json").read_text())
        if meta.get("broken"):
            raise ModelLoadError(f"{path}: broken on purpose")
        self.metadata = type("Meta", (), {"name": "fake", "version": meta["version"]})()


@dataclass
class FakeServing:
    version: str
    closed: bool = False

    @property
    def predictor(self) -> Any:
        return self

    async def close(self) -> None:
        self.closed = True


def write_version(root: Path, version: str, **extra: Any) -> Path:
    folder = root / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps({"version": version, **extra}))
    return folder


def fake_registry(root: Path, policy: str = "latest", drain_timeout_s: float = 30.0) -> ModelRegistry:
    def load(path: Path) -> LoadedModel:
        return FakeModel(path)  # type: ignore[return-value]

    def build(version: str, model: LoadedModel) -> FakeServing:
        return FakeServing(version)

    return ModelRegistry(root, VersionPolicy.parse(policy), load=load, build=build, drain_timeout_s=drain_timeout_s)


def states(registry: ModelRegistry) -> dict[str, str]:
    return {key: entry.state.value for key, entry in registry.versions.items()}


async def settle(registry: ModelRegistry) -> None:
    """Wait for the drains under way (each one a task of the registry)."""
    while registry._drains:
        await asyncio.gather(*registry._drains, return_exceptions=True)


def test_new_versions_switch_the_default_and_old_ones_drain_before_unloading(tmp_path: Path) -> None:
    async def scenario() -> None:
        write_version(tmp_path, "1")
        registry = fake_registry(tmp_path)
        await registry.poll()
        assert states(registry) == {"1": "ready"} and registry.get().version == "1"
        with registry.lease() as old:  # a request in flight on version 1
            write_version(tmp_path, "2")
            await registry.poll()
            assert registry.get().version == "2"  # new requests go to 2 at once
            assert old.state is VersionState.UNLOADING and old.serving is not None  # 1 drains: not stopped yet
            with pytest.raises(VersionNotReadyError):
                registry.get("1")
            await asyncio.sleep(0)
            assert old.serving is not None and "1" in registry.versions
        await settle(registry)
        assert states(registry) == {"2": "ready"} and old.serving is None
        with pytest.raises(VersionNotFoundError):
            registry.get("1")

    asyncio.run(scenario())


def test_a_broken_new_version_fails_never_serves_and_is_retried_when_its_folder_changes(tmp_path: Path) -> None:
    async def scenario() -> None:
        write_version(tmp_path, "1")
        registry = fake_registry(tmp_path)
        await registry.poll()
        write_version(tmp_path, "2", broken=True)
        await registry.poll()
        assert states(registry) == {"1": "ready", "2": "failed"}
        assert "broken on purpose" in (registry.versions["2"].reason or "")
        assert registry.get().version == "1"
        await registry.poll()  # unchanged folder: not loaded again
        assert states(registry) == {"1": "ready", "2": "failed"}
        (tmp_path / "2" / "metadata.json").write_text(json.dumps({"version": "2", "fixed": "yes"}))
        await registry.poll()
        await settle(registry)
        assert states(registry) == {"2": "ready"}

    asyncio.run(scenario())


def test_a_folder_without_metadata_is_not_a_version_yet_and_removed_versions_unload(tmp_path: Path) -> None:
    async def scenario() -> None:
        write_version(tmp_path, "1")
        registry = fake_registry(tmp_path, policy="latest:2")
        await registry.poll()
        (tmp_path / "2").mkdir()  # being copied: no metadata.json yet
        await registry.poll()
        assert states(registry) == {"1": "ready"}
        write_version(tmp_path, "2")
        await registry.poll()
        assert states(registry) == {"1": "ready", "2": "ready"} and registry.get().version == "2"
        shutil.rmtree(tmp_path / "2")
        await registry.poll()
        await settle(registry)
        assert states(registry) == {"1": "ready"} and registry.get().version == "1"
        shutil.rmtree(tmp_path / "1")
        await registry.poll()
        await settle(registry)
        with pytest.raises(NotReadyError):
            registry.get()

    asyncio.run(scenario())


def test_specific_versions_are_served_side_by_side(tmp_path: Path) -> None:
    async def scenario() -> None:
        for version in ("1", "2", "3"):
            write_version(tmp_path, version)
        registry = fake_registry(tmp_path, policy="specific:1,2")
        await registry.poll()
        assert states(registry) == {"1": "ready", "2": "ready"}
        assert registry.get().version == "2" and registry.get("1").version == "1"

    asyncio.run(scenario())


# --- hot reload under load, through the real service ------------------------------------------------------------


@dataclass
class Answer:
    started: float
    ended: float
    status: int
    version: str | None


def models(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/v1/models", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(url: str, condition: Any, what: str, timeout_s: float = 240.0) -> tuple[float, dict[str, Any]]:
    """Poll /v1/models until ``condition(body)``; the time it was first seen to hold."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = models(url)
        if condition(body):
            return time.monotonic(), body
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {body}"
        time.sleep(0.05)


def ready(body: dict[str, Any]) -> set[str]:
    return {v["version"] for v in body["versions"] if v["state"] == "ready"}


def png_face() -> bytes:
    import cv2

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def test_hot_reload_under_load_answers_every_request_from_a_ready_version(exported_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    shutil.copytree(exported_model, root / "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model-dir", str(root), "--port", str(port)],
        cwd=ROOT,
        env=service_env(FER_MODEL_POLL_INTERVAL_S="0.2", FER_PREPARE_PROCESSES="0", FER_LOG_LEVEL="warning"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[Answer] = []
    stop = threading.Event()
    image = png_face()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                started = time.monotonic()
                response = http.post(
                    url + "/predict?detect=false", content=image, headers={"content-type": "image/png"}
                )
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                answers.append(Answer(started, time.monotonic(), response.status_code, version))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)
        assert ready(models(url)) == {"1"}
        for thread in threads:
            thread.start()
        while len(answers) < 20:  # traffic on version 1 first
            time.sleep(0.05)
        staging = root / ".incoming-2"  # copy under a hidden name, then rename into place (docs/deployment.md)
        shutil.copytree(exported_model, staging)
        metadata = json.loads((staging / "metadata.json").read_text())
        (staging / "metadata.json").write_text(json.dumps({**metadata, "version": "2"}))
        staging.rename(root / "2")
        switched, body = wait_for(url, lambda b: b["default_version"] == "2", "version 2 to take traffic")
        assert ready(body) >= {"2"}
        count = len(answers)
        while len(answers) < count + 20:  # traffic on version 2
            time.sleep(0.05)
        shutil.rmtree(root / "1")
        gone, body = wait_for(url, lambda b: [v["version"] for v in b["versions"]] == ["2"], "version 1 to unload")
        count = len(answers)
        while len(answers) < count + 10:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(60)
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert len(answers) >= 50
    assert [a for a in answers if a.status != 200] == []
    # every answer came from a version that was ready then: 1 until the switch was seen, 2 from the switch on
    assert {a.version for a in answers} == {"1", "2"}
    assert all(a.version == "2" for a in answers if a.started > switched)
    assert all(a.version == "1" for a in answers if a.version != "2" and a.started <= switched)
    assert 'fer_model_loads_total{result="loaded"} 2.0' in metrics
    assert 'fer_model_version_ready{version="2"} 1.0' in metrics
    assert 'fer_model_version_ready{version="1"}' not in metrics
    assert 'fer_batch_size_count{version="2"}' in metrics


def drop_version(source: Path, root: Path, version: str) -> None:
    """Copy an export under a hidden name, set its metadata's version, rename it into place (docs/deployment.md)."""
    staging = root / f".incoming-{version}"
    shutil.copytree(source, staging)
    metadata = json.loads((staging / "metadata.json").read_text())
    (staging / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    staging.rename(root / version)


def version_objects(state: Any, version: str) -> dict[str, weakref.ref[Any]]:
    """Weak references to what a loaded version is made of: its model, runtime and the TensorFlow objects the
    runtime holds (the loaded SavedModel, its functions), what serves it (predictor, micro-batchers) and its
    registry entry. Built in a function so that no local of the test refers to them."""
    entry = state.registry.versions[version]
    model, serving = entry.model, entry.serving
    objects: dict[str, Any] = {
        "registry entry": entry,
        "LoadedModel": model,
        "runtime": model.runtime,
        "ServedVersion": serving,
        "Predictor": serving.predictor,
    }
    objects.update({f"batcher {i}": batcher for i, batcher in enumerate(serving.batchers)})
    held = {
        name: value
        for name, value in vars(model.runtime).items()
        if type(value).__module__.startswith(("tensorflow", "openvino"))
    }
    assert held, "the runtime holds no TensorFlow or OpenVINO object"
    objects.update({f"runtime.{name}": value for name, value in held.items()})
    return {name: weakref.ref(value) for name, value in objects.items()}


def tf_function_count() -> int:
    """Functions registered in TensorFlow's eager context (each loaded SavedModel adds its own)."""
    from tensorflow.python.eager import context

    return len(context.context().list_function_names())


def test_an_unloaded_version_is_released_not_kept_by_the_app(exported_model: Path, tmp_path: Path) -> None:
    """Version 1 serves predictions and explanations (its batchers, explain function and TensorFlow functions are
    all used), version 2 is dropped in and version 1 removed; once /v1/models no longer lists it, nothing of version
    1 is alive and TensorFlow's eager context holds only version 2's functions. The automatic garbage collection is
    off meanwhile and the test never collects: the unload's own collection must free the version
    (service.registry.reclaim_memory), whenever the collector would have run."""
    root = tmp_path / "tiny"
    shutil.copytree(exported_model, root / "1")
    image = png_face()
    headers = {"content-type": "image/png"}
    # TensorFlow: a loaded SavedModel is the object graph with reference cycles (whatever the default runtime is)
    settings = {"runtime": "tensorflow", "precision": "fp32", "model_poll_interval_s": 0.1, "prepare_processes": 0}
    with running_service(root, **settings) as service, httpx.Client() as http:
        for query in ("detect=false", "detect=false&explain=true", "detect=false&version=1"):
            response = http.post(f"{service.url}/predict?{query}", content=image, headers=headers, timeout=60)
            assert response.status_code == 200 and response.json()["model"]["version"] == "1", response.text
        refs = version_objects(service.state, "1")
        assert len(refs) >= 8  # two batchers (predict, explain) and the runtime's TensorFlow objects among them
        functions = tf_function_count()  # version 1's functions in TensorFlow's eager context
        gc.disable()  # a loaded SavedModel is reference cycles: freed by the unload's own collection, not by chance
        try:
            drop_version(exported_model, root, "2")
            wait_for(service.url, lambda b: b["default_version"] == "2", "version 2 to take traffic")
            shutil.rmtree(root / "1")
            wait_for(service.url, lambda b: [v["version"] for v in b["versions"]] == ["2"], "version 1 to unload")
            alive = sorted(name for name, ref in refs.items() if ref() is not None)
        finally:
            gc.enable()
        assert alive == [], f"still alive after version 1 unloaded: {alive}"
        # the function definitions TensorFlow keeps for a loaded SavedModel go only when its cycles are collected (at
        # most the one-version level: the collection may also free what earlier tests left in this process)
        assert tf_function_count() <= functions, "TensorFlow still holds version 1's functions"
        response = http.post(f"{service.url}/predict?detect=false", content=image, headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["model"]["version"] == "2"
        assert "@1" not in " ".join(service.state.registry.default.serving.observer._depths)  # queue depths forgotten
