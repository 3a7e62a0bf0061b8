"""Hardening, round 2 (issue 13), the leftovers: settings that can never work are refused at start-up, cancelled
work leaves the queues at once, crash isolation of the detection workers, and admission by decoded pixel bytes.

Real HTTP against the real app (in process or as ``python -m service``), real worker processes; every wait is for
an event (an answer, a counter, a file a worker wrote), never a sleep or a time window.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from websockets.sync.client import connect

from service import prepare as prepare_module
from service.config import ImpossibleSettingsError, Settings
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
