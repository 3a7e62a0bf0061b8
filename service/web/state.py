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
from service.pipeline import PixelBudget, Predictor
from service.prepare import PreparePool
from service.registry import ModelRegistry, ModelVersion
from service.web.schemas import ModelRef


@dataclass
class ServiceState:
    """Everything the routes need, owned by one app instance (no module-level singletons)."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry | None = None  # the model versions (service/registry.py)
    preparer: PreparePool | None = None
    pixels: PixelBudget | None = None  # decoded bytes in flight, shared by every version (service/pipeline.py)
    ready: bool = False
    shutting_down: bool = False
    load_error: str | None = None
    websocket_connections: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    # The default version's parts (the highest ready version: what answers requests that name none).

    @property
    def model(self) -> LoadedModel | None:
        default = self.registry.default if self.registry is not None else None
        return default.model if default is not None else None

    @property
    def predictor(self) -> Predictor | None:
        default = self.registry.default if self.registry is not None else None
        return default.predictor if default is not None and default.serving is not None else None

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.predictor.batcher if self.predictor is not None else None

    @property
    def explainer(self) -> MicroBatcher | None:  # the explain queue (None: the model has no explain signature)
        return self.predictor.explainer if self.predictor is not None else None

    @property
    def model_ref(self) -> ModelRef:
        assert self.registry is not None and self.registry.default is not None
        return version_ref(self.registry.default)


def version_ref(entry: ModelVersion) -> ModelRef:
    """The model name and version a response names: the version that answered (a version folder's name)."""
    return ModelRef(name=entry.name, version=entry.version)


def get_state(connection: HTTPConnection) -> ServiceState:
    """The app's ``ServiceState`` for a request or a WebSocket (``create_app`` keeps it in ``app.state.service``)."""
    state: ServiceState = connection.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
