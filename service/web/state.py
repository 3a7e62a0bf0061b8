"""What one app instance shares between its lifespan and its routes, and the FastAPI dependency that hands it out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.batching import MicroBatcher
from service.config import Settings
from service.metrics import Metrics
from service.model import LoadedModel
from service.pipeline import Predictor
from service.prepare import PreparePool
from service.web.schemas import ModelRef


@dataclass
class ServiceState:
    """Everything the routes need, owned by one app instance (no module-level singletons)."""

    settings: Settings
    metrics: Metrics
    model: LoadedModel | None = None
    predictor: Predictor | None = None
    preparer: PreparePool | None = None
    batcher: MicroBatcher | None = None
    explainer: MicroBatcher | None = None  # the explain queue (None: the model has no explain signature)
    ready: bool = False
    shutting_down: bool = False
    load_error: str | None = None
    websocket_connections: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def model_ref(self) -> ModelRef:
        assert self.model is not None
        return ModelRef(name=self.model.metadata.name, version=self.model.metadata.version)


def get_state(connection: HTTPConnection) -> ServiceState:
    """The app's ``ServiceState`` for a request or a WebSocket (``create_app`` keeps it in ``app.state.service``)."""
    state: ServiceState = connection.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
