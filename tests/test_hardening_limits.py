"""Hardening, round 2 (issue 13), the leftovers: settings that can never work are refused at start-up, cancelled
work leaves the queues at once, crash isolation of the detection workers, and admission by decoded pixel bytes.

Real HTTP against the real app (in process or as ``python -m service``), real worker processes; every wait is for
an event (an answer, a counter, a file a worker wrote), never a sleep or a time window.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import ImpossibleSettingsError, Settings
from tests.servers import service_env

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
