"""The face detection worker processes (service/prepare.py): recycled after a number of images, so a native leak
cannot grow without bound, and replaced when one dies, without losing the service or (on a first death) the
request. Faults are real: worker processes are killed with SIGKILL while the service runs."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import prepare as prepare_module
from service.prepare import PreparePool
from tests import photos, worker_probe
from tests.hostile_client import wait_until
from tests.servers import RunningService, metric_value, running_service

RECYCLE_AFTER = 3


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    with running_service(exported_model, prepare_processes=1, prepare_recycle_after=RECYCLE_AFTER) as running:
        yield running


def pool_of(service: RunningService) -> PreparePool:
    pool = service.server.config.app.state.service.preparer
    assert isinstance(pool, PreparePool)
    return pool


def predict(service: RunningService) -> httpx.Response:
    return httpx.post(
        service.url + "/predict", content=photos.one_face_jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=120
    )


def restarts(service: RunningService, reason: str) -> float:
    return metric_value(service.metrics(), "fer_prepare_pool_restarts_total", {"reason": reason})


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_detection_runs_in_a_worker_process_that_is_replaced_after_recycle_after_images(
    service: RunningService,
) -> None:
    pool = pool_of(service)
    first = pool.worker_pids()
    assert first and os.getpid() not in first
    before = restarts(service, "recycled")
    for _ in range(RECYCLE_AFTER):
        response = predict(service)
        assert response.status_code == 200
        assert len(response.json()["faces"]) == 1
    # The replacement pool warms up beside the old one, which serves meanwhile; then it takes over.
    sent = RECYCLE_AFTER
    while restarts(service, "recycled") - before < 2:
        assert sent < 200, "the pool was not replaced after recycle_after detections"
        assert predict(service).status_code == 200
        sent += 1
    assert wait_until(lambda: all(gone(pid) for pid in first), timeout=60), "a retired worker process did not exit"
    assert pool.worker_pids() and not set(pool.worker_pids()) & set(first)


def test_a_killed_idle_worker_is_replaced_and_the_next_request_still_succeeds(service: RunningService) -> None:
    pool = pool_of(service)
    assert wait_until(lambda: bool(pool.worker_pids()), timeout=60)
    before = restarts(service, "crashed")
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    killed = set(pool.worker_pids())
    response = predict(service)  # served by the quarantine worker while the replacement pool warms up
    assert response.status_code == 200
    assert len(response.json()["faces"]) == 1
    # The replacement is swapped in (and counted) once warm, which can be after that answer; the next image waits
    # for it, so after a second request the count and the workers are settled.
    assert predict(service).status_code == 200
    assert restarts(service, "crashed") - before == 1
    assert pool.worker_pids() and not set(pool.worker_pids()) & killed


def test_an_image_whose_worker_dies_twice_gets_a_clear_500_and_the_service_recovers(service: RunningService) -> None:
    pool = pool_of(service)
    before = restarts(service, "crashed")
    # a detector that crashes on this image, every time (tests/worker_probe.py: SIGKILL inside the real worker)
    pool.task = worker_probe.prepare_with_probe
    try:
        response = httpx.post(
            service.url + "/predict",
            content=worker_probe.probe(photos.one_face_jpeg(), crash=True),
            headers={"Content-Type": "image/jpeg"},
            timeout=120,
        )
    finally:
        pool.task = prepare_module._prepare_in_worker
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "detection_failed"
    assert "Traceback" not in response.text and "/" not in body["error"]["message"]
    after = predict(service)  # the next image is served by a fresh pool (it waits for the replacement to be warm)
    assert after.status_code == 200
    assert len(after.json()["faces"]) == 1
    # Counted once the replacements are in place: the crashed pool's is swapped in only after its warm-up, which can
    # end after the quarantine's crash was answered, but before the next image is served.
    assert restarts(service, "crashed") - before == 2  # its pool, then the quarantine worker it was retried in alone
    assert httpx.get(service.url + "/readyz", timeout=30).status_code == 200
