"""Property-based fuzzing of the real service against its own OpenAPI document (issue 7, item 2).

schemathesis reads ``/openapi.json`` from the running service and, for every operation, has hypothesis generate
requests: valid ones from the schema and invalid ones (wrong types, missing or extra fields, odd query values,
random bodies for every declared media type). Every response must not be a 5xx, must use a status and a content
type the schema declares for that operation, and its body must match the declared schema.

The example budget is small (``FUZZ_EXAMPLES`` per operation and mode, default 12) so that the test stays fast in
CI; raise it to fuzz for longer: ``FUZZ_EXAMPLES=500 pytest tests/test_fuzz_openapi.py``. ``derandomize`` makes a
CI run reproducible; set ``FUZZ_SEED`` to explore other examples.

Every test here runs on its own: the check that the fuzzing is not vacuous draws from the same generators itself
instead of reading what another test recorded.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.servers import RunningService, running_service

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=FUZZ_SEED is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_service(exported_model: Path) -> Iterator[RunningService]:
    with running_service(exported_model, max_batch_wait_ms=5, body_timeout_s=10) as running:
        yield running


def app_schema() -> Any:
    """The OpenAPI document the service serves at /openapi.json (built by the same app factory; building the app
    does not load a model, so the operations are known when pytest collects this module)."""
    from service.app import create_app
    from service.config import Settings

    return schemathesis.openapi.from_dict(create_app(Settings(model_dir=Path("unused"))).openapi())


schema = app_schema()
schema.config.generation.update(modes=MODES)


def test_the_fuzzed_document_is_the_one_the_service_serves(fuzz_service: RunningService) -> None:
    import httpx

    assert httpx.get(fuzz_service.url + "/openapi.json", timeout=30).json() == schema.raw_schema


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_server_error_and_every_response_matches_the_schema(case: Any, fuzz_service: RunningService) -> None:
    case.call_and_validate(base_url=fuzz_service.url, checks=CHECKS, timeout=60)


def test_fuzzing_reaches_every_operation_with_valid_and_invalid_requests(fuzz_service: RunningService) -> None:
    """Guards against a vacuous fuzz run: the generators the fuzzing test uses (every operation of the document,
    both modes, the same budget and seed) reach every operation, and the service accepts some of their requests and
    refuses others."""
    calls: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # one_of: a mode that cannot apply (no parameters to make invalid) simply draws nothing
        cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in MODES])

        @given(case=cases)
        @FUZZ_SETTINGS
        def send(case: Any) -> None:
            calls.append((case.operation.label, case.call(base_url=fuzz_service.url, timeout=60).status_code))

        send()
    print("fuzzed calls by operation and status:", sorted(collections.Counter(calls).items()))
    operations = {operation for operation, _ in calls}
    assert {"POST /predict", "POST /predict/batch", "GET /healthz", "GET /readyz", "GET /metrics"} <= operations
    statuses = {status for _, status in calls}
    assert 200 in statuses and any(400 <= status < 500 for status in statuses)
