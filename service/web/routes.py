"""HTTP and WebSocket routes. Thin: parse the request, call the pipeline, map the result (docs/api.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import Response

from service.errors import (
    BatchImageError,
    MissingFieldError,
    NotReadyError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)
from service.metrics import CONTENT_TYPE_LATEST
from service.pipeline import Options
from service.registry import ModelVersion
from service.web.guards import check_api_key, ready_predictor, serving
from service.web.schemas import (
    BatchPrediction,
    ErrorBody,
    Health,
    InputInfo,
    ModelList,
    Prediction,
    Readiness,
    VersionInfo,
)
from service.web.state import ServiceState, StateDep, version_ref
from service.web.stream import StreamSession
from service.web.uploads import media_type, read_files, read_image

__all__ = ["router"]

router = APIRouter()


async def require_api_key(request: Request, state: StateDep) -> None:
    check_api_key(state.settings.api_keys, request.headers.get("authorization"))


AuthDep = Depends(require_api_key)


_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/jpeg": _IMAGE_BODY,
            "image/png": _IMAGE_BODY,
            "image/webp": _IMAGE_BODY,
            "image/*": _IMAGE_BODY,
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}

DetectQuery = Annotated[bool, Query(description="Find faces (true) or treat the whole image as one face (false).")]
MaxFacesQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=1000,
        description="Return at most this many faces per image (capped at the server's max_faces setting).",
    ),
]


ExplainQuery = Annotated[
    bool,
    Query(
        description="Add a Grad-CAM map (`explanation`) to each face, at most the server's explain_max_faces per "
        "request. 409 explanations_unavailable when the model's export has no explain signature.",
    ),
]
ExplainClassQuery = Annotated[
    str | None,
    Query(
        max_length=200,
        description="With explain=true: the label every map explains (one of the model's labels); default: each "
        "face's most probable label.",
    ),
]
VersionQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        description="The model version to answer (one that GET /v1/models lists as ready); default: the highest "
        "ready version. 404 version_not_found when it is not loaded, 409 version_not_ready when it is loading, "
        "unloading or failed.",
    ),
]
#: The answers only the predict routes give.
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "version_not_found: ?version= names a version that is not loaded"},
    409: {
        "model": ErrorBody,
        "description": "explanations_unavailable: explain=true, but the model cannot explain; version_not_ready: "
        "?version= names a version that is loading, unloading or failed",
    },
}


def _options(
    state: ServiceState, detect: bool, max_faces: int | None, explain: bool = False, explain_class: str | None = None
) -> Options:
    limit = state.settings.max_faces
    return Options(
        detect=detect, max_faces=min(max_faces or limit, limit), explain=explain, explain_class=explain_class
    )


# --- routes ----------------------------------------------------------------------------------------------------


@router.post(
    "/predict",
    response_model=Prediction,
    response_model_exclude_none=True,
    responses=_PREDICT_RESPONSES,
    dependencies=[AuthDep],
    openapi_extra=_PREDICT_BODY,
    summary="Find the faces in one image and classify their expressions",
)
async def predict(
    request: Request,
    state: StateDep,
    detect: DetectQuery = True,
    max_faces: MaxFacesQuery = None,
    explain: ExplainQuery = False,
    explain_class: ExplainClassQuery = None,
    version: VersionQuery = None,
) -> Prediction:
    predictor = ready_predictor(state, version)
    options = _options(state, detect, max_faces, explain, explain_class)
    predictor.check_options(options)  # before reading the body
    data = await read_image(request, state.settings.max_upload_bytes, state.settings.body_timeout_s)
    with serving(state, version) as entry:  # held until answered: the version does not unload meanwhile
        result = await entry.predictor.predict(data, options)
    request.scope["fer.faces"] = len(result.faces)
    return Prediction.from_result(version_ref(entry), result)


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    response_model_exclude_none=True,
    responses=_PREDICT_RESPONSES,
    dependencies=[AuthDep],
    openapi_extra=_BATCH_BODY,
    summary="Several images in one multipart request; one result per image, in order",
)
async def predict_batch(
    request: Request,
    state: StateDep,
    detect: DetectQuery = True,
    max_faces: MaxFacesQuery = None,
    explain: ExplainQuery = False,
    explain_class: ExplainClassQuery = None,
    version: VersionQuery = None,
) -> BatchPrediction:
    predictor = ready_predictor(state, version)
    options = _options(state, detect, max_faces, explain, explain_class)
    predictor.check_options(options)  # before reading the body
    settings = state.settings
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError("send multipart/form-data with one or more 'files' parts")
    files = await read_files(
        request,
        file_limit=settings.max_upload_bytes,
        max_files=settings.max_batch_images,
        timeout_s=settings.body_timeout_s,
    )
    if not files:
        raise MissingFieldError("the multipart body has no file parts (use the field name 'files')")
    if len(files) > settings.max_batch_images:
        raise TooManyImagesError(f"{len(files)} images in one request; the limit is {settings.max_batch_images}")
    try:
        with serving(state, version) as entry:  # held until answered: the version does not unload meanwhile
            results = await entry.predictor.predict_many([data for _, data in files], options)
    except BatchImageError as exc:  # same status and code as the image's own error; the message names the file
        raise exc.named(files[exc.index][0]) from None
    request.scope["fer.faces"] = sum(len(r.faces) for r in results)
    ref = version_ref(entry)
    return BatchPrediction(results=[Prediction.from_result(ref, r) for r in results])


@router.get("/healthz", response_model=Health, summary="The process is alive (never touches the model)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The model is loaded and warmed up (503 before)",
    responses={503: {"model": ErrorBody}},
)
async def readyz(state: StateDep) -> Readiness:
    ready_predictor(state)
    return Readiness(status="ready", model=state.model_ref)


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[AuthDep],
    summary="The model versions: loaded and ready, loading, unloading (draining) or failed, with their metadata",
    responses={503: {"model": ErrorBody}},
)
async def models(state: StateDep) -> ModelList:
    registry = state.registry
    if registry is None:
        raise NotReadyError("the model is still loading")
    default = registry.default
    entries = sorted(registry.versions.values(), key=lambda v: v.sort_key, reverse=True)
    return ModelList(
        name=registry.name,
        version_policy=str(registry.policy),
        default_version=default.version if default is not None else None,
        versions=[_version_info(entry, entry is default, state.settings.precision) for entry in entries],
    )


def _version_info(entry: ModelVersion, default: bool, precision: str) -> VersionInfo:
    info = VersionInfo(
        version=entry.version,
        state=entry.state.value,
        default=default,
        reason=entry.reason,
        load_seconds=None if entry.load_seconds is None else round(entry.load_seconds, 3),
        in_flight=entry.in_flight,
    )
    model = entry.model
    if model is None:
        return info
    meta = model.metadata
    evaluation = (meta.model_extra or {}).get("evaluation")
    return info.model_copy(
        update={
            "labels": list(meta.labels),
            "input": InputInfo(
                height=meta.input.height,
                width=meta.input.width,
                channels=meta.input.channels,
                color_mode=meta.input.color_mode,
            ),
            "evaluation": evaluation if isinstance(evaluation, dict) else None,
            "runtime": getattr(model.runtime, "name", None),
            # what the runtime computes in (--precision auto resolved on this CPU), and what was asked for
            "precision": getattr(model.runtime, "precision", None) or precision,
            "precision_setting": precision,
            "explanations": model.can_explain,
            "explanations_runtime": getattr(model.runtime, "explains_with", None)
            or (getattr(model.runtime, "name", None) if model.can_explain else None),
            "metadata_version": meta.version,
        }
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.websocket("/ws/stream")
async def stream(websocket: WebSocket, state: StateDep) -> None:
    """Webcam stream: binary frames in, JSON results out, latest frame wins (docs/api.md)."""
    await StreamSession(websocket, state).run()
