"""HTTP and WebSocket routes. Thin: parse the request, call the pipeline, map the result (docs/api.md)."""

from __future__ import annotations

import asyncio
import copy
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.app import ServiceState
from service.errors import (MissingFieldError, PayloadTooLargeError, RequestTimeoutError, ServiceError,
                            TooManyImagesError, UnsupportedMediaTypeError)
from service.guards import check_api_key, ready_predictor
from service.metrics import CONTENT_TYPE_LATEST
from service.pipeline import Options
from service.schemas import BatchPrediction, ErrorBody, Health, Prediction, Readiness
from service.stream import StreamSession

__all__ = ["router", "ErrorBody"]

router = APIRouter()


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request, state: StateDep) -> None:
    check_api_key(state.settings.api_keys, request.headers.get("authorization"))


AuthDep = Depends(require_api_key)


# --- reading uploads ---------------------------------------------------------------------------------------------

def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes, and (408) when it has
    not arrived within the ``body_timeout_s`` setting: a slow-loris upload must not hold a request forever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is {int(declared)} bytes; the limit is {limit} bytes")
    timeout_s = request.app.state.service.settings.body_timeout_s
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def _single(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def read_files(request: Request, body_limit: int, file_limit: int) -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of every file part of a multipart body, in order."""
    body = await read_body(request, body_limit)
    parser = MultiPartParser(request.headers, _single(body), max_files=10_000, max_fields=1000)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MissingFieldError(f"the multipart body cannot be parsed: {exc.message}") from None
    files = []
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if len(data) > file_limit:
                    raise PayloadTooLargeError(f"'{value.filename}' is {len(data)} bytes; the limit is "
                                               f"{file_limit} bytes")
                files.append((value.filename or "", data))
    finally:
        await form.close()
    return files


async def read_image(request: Request, limit: int) -> bytes:
    """The image of a /predict request: multipart field ``file``, or the raw body with an ``image/*`` type."""
    media_type = _media_type(request)
    if media_type.startswith("image/"):
        return await read_body(request, limit)
    if media_type == "multipart/form-data":
        body = await read_body(request, limit + 64 * 1024)  # room for the multipart framing
        parser = MultiPartParser(request.headers, _single(body), max_files=16, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise MissingFieldError(f"the multipart body cannot be parsed: {exc.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise MissingFieldError("the multipart body has no file field named 'file'")
            data = await upload.read()
        finally:
            await form.close()
        if len(data) > limit:
            raise PayloadTooLargeError(f"the image is {len(data)} bytes; the limit is {limit} bytes")
        return data
    shown = media_type or "none"
    raise UnsupportedMediaTypeError(f"Content-Type is {shown}; send multipart/form-data with a 'file' field or "
                                    "the raw image with an image/* Content-Type")


_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": _IMAGE_BODY, "image/png": _IMAGE_BODY, "image/webp": _IMAGE_BODY, "image/*": _IMAGE_BODY}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}

DetectQuery = Annotated[bool, Query(description="Find faces (true) or treat the whole image as one face (false).")]
MaxFacesQuery = Annotated[int | None, Query(ge=1, le=1000, description="Return at most this many faces per "
                                            "image (capped at the server's max_faces setting).")]


def _options(state: ServiceState, detect: bool, max_faces: int | None) -> Options:
    limit = state.settings.max_faces
    return Options(detect=detect, max_faces=min(max_faces or limit, limit))


# --- routes ----------------------------------------------------------------------------------------------------

@router.post("/predict", response_model=Prediction, dependencies=[AuthDep], openapi_extra=_PREDICT_BODY,
             summary="Find the faces in one image and classify their expressions")
async def predict(request: Request, state: StateDep, detect: DetectQuery = True,
                  max_faces: MaxFacesQuery = None) -> Prediction:
    predictor = ready_predictor(state)
    data = await read_image(request, state.settings.max_upload_bytes)
    result = await predictor.predict(data, _options(state, detect, max_faces))
    request.scope["fer.faces"] = len(result.faces)
    return Prediction.from_result(state.model_ref, result)


@router.post("/predict/batch", response_model=BatchPrediction, dependencies=[AuthDep], openapi_extra=_BATCH_BODY,
             summary="Several images in one multipart request; one result per image, in order")
async def predict_batch(request: Request, state: StateDep, detect: DetectQuery = True,
                        max_faces: MaxFacesQuery = None) -> BatchPrediction:
    predictor = ready_predictor(state)
    settings = state.settings
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError("send multipart/form-data with one or more 'files' parts")
    files = await read_files(request, settings.max_upload_bytes * settings.max_batch_images + 64 * 1024,
                             settings.max_upload_bytes)
    if not files:
        raise MissingFieldError("the multipart body has no file parts (use the field name 'files')")
    if len(files) > settings.max_batch_images:
        raise TooManyImagesError(f"{len(files)} images in one request; the limit is {settings.max_batch_images}")
    try:
        results = await predictor.predict_many([data for _, data in files], _options(state, detect, max_faces))
    except ServiceError as exc:
        index = getattr(exc, "image_index", None)
        if index is None:
            raise
        named = copy.copy(exc)  # same type, status and code; the message says which image
        named.message = f"image {index + 1} ({files[index][0] or 'no name'}): {exc.message}"
        raise named from None
    request.scope["fer.faces"] = sum(len(r.faces) for r in results)
    return BatchPrediction(results=[Prediction.from_result(state.model_ref, r) for r in results])


@router.get("/healthz", response_model=Health, summary="The process is alive (never touches the model)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="The model is loaded and warmed up (503 before)",
            responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep) -> Readiness:
    ready_predictor(state)
    return Readiness(status="ready", model=state.model_ref)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.websocket("/ws/stream")
async def stream(websocket: WebSocket) -> None:
    """Webcam stream: binary frames in, JSON results out, latest frame wins (docs/api.md)."""
    await StreamSession(websocket, websocket.app.state.service).run()
