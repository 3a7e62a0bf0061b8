"""Checks shared by the HTTP routes and the WebSocket stream: API keys and readiness."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence

from pydantic import SecretStr

from service.errors import NotReadyError, ShuttingDownError, UnauthorizedError
from service.pipeline import Predictor
from service.registry import ModelVersion
from service.web.state import ServiceState


def check_api_key(keys: Sequence[SecretStr], authorization: str | None, query_key: str | None = None) -> None:
    """Raise ``UnauthorizedError`` unless ``keys`` is empty or one of them was sent, as ``Authorization: Bearer``
    or (WebSocket only: browsers cannot set its headers) as ``query_key``."""
    if not keys:
        return
    token = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None and query_key:
        token = query_key
    if token is None:
        raise UnauthorizedError("an API key is required: send 'Authorization: Bearer <key>'")
    # constant-time comparison with every key, so response timing reveals nothing about a key; the message never
    # repeats what was sent (a wrong key is often a right key of another service)
    if not any(secrets.compare_digest(token.encode(), key.get_secret_value().encode()) for key in keys):
        raise UnauthorizedError("the API key is not valid")


def ready_version(state: ServiceState, version: str | None = None) -> ModelVersion:
    """The ready model version ``version`` (None: the default), or the error that says why there is none: 503
    (loading, failed to load, shutting down, no version ready), 404 ``version_not_found``, 409 ``version_not_ready``."""
    if state.shutting_down:
        raise ShuttingDownError("the service is shutting down")
    if not state.ready or state.registry is None:
        # never the load error itself: it names filesystem paths (it is in the service log)
        raise NotReadyError(
            "the model failed to load; the service log says why" if state.load_error else "the model is still loading"
        )
    return state.registry.get(version)


def ready_predictor(state: ServiceState, version: str | None = None) -> Predictor:
    """The predictor of a ready version (see ``ready_version``), for checks before any work."""
    return ready_version(state, version).predictor


@contextlib.contextmanager
def serving(state: ServiceState, version: str | None = None) -> Iterator[ModelVersion]:
    """Hold a ready version while a request uses it: it does not unload (drain) before the block ends."""
    ready_version(state, version)
    assert state.registry is not None
    with state.registry.lease(version) as entry:
        yield entry
