"""Reading uploads: the raw or multipart body of ``/predict`` and the file parts of ``/predict/batch``, with size
limits enforced while the body arrives and a time limit for the whole body (slow-loris uploads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.config import MULTIPART_OVERHEAD_BYTES
from service.errors import (
    ClientClosedError,
    InsufficientStorageError,
    MissingFieldError,
    PayloadTooLargeError,
    RequestTimeoutError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)

__all__ = ["MULTIPART_OVERHEAD_BYTES", "media_type", "read_body", "read_files", "read_image"]


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ("" when there is none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes, and (408) when it has
    not arrived within ``timeout_s`` seconds: a slow-loris upload must not hold a request forever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is {int(declared)} bytes; the limit is {limit} bytes")
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
    except ClientDisconnect:
        raise ClientClosedError(f"the client closed the connection after {size} bytes of the body") from None
    return b"".join(chunks)


async def _single(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _parse_multipart(
    request: Request, body: bytes, *, max_files: int, max_fields: int, file_limit: int
) -> FormData:
    """Parse a multipart body that is already in memory. Its parts stay in memory too: a part may hold up to
    ``file_limit`` bytes before Starlette would spill it to a temporary file, and the body was refused above
    ``file_limit`` x ``max_files``, so nothing is ever written to disk (a 64 MiB /tmp could not hold a batch of
    phone photos). An OSError anyway (memory or disk) is a 507 with a code, never a 500."""
    parser = MultiPartParser(request.headers, _single(body), max_files=max_files, max_fields=max_fields)
    parser.spool_max_size = file_limit + 1  # an instance attribute: Starlette's class default (1 MiB) is unchanged
    try:
        return await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyImagesError(f"more than {max_files} files in one request; the limit is {max_files}") from None
        raise MissingFieldError(f"the multipart body cannot be parsed: {exc.message}") from None
    except OSError as exc:
        raise InsufficientStorageError(
            f"the multipart body could not be stored ({type(exc).__name__}); retry shortly"
        ) from None


async def read_files(request: Request, *, file_limit: int, max_files: int, timeout_s: float) -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of every file part of a multipart body, in order. The body may hold ``max_files``
    files of ``file_limit`` bytes plus their framing; the caller checks how many files there were."""
    body = await read_body(request, file_limit * max_files + MULTIPART_OVERHEAD_BYTES, timeout_s)
    form = await _parse_multipart(request, body, max_files=max_files, max_fields=1000, file_limit=file_limit)
    files = []
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if len(data) > file_limit:
                    raise PayloadTooLargeError(
                        f"'{value.filename}' is {len(data)} bytes; the limit is {file_limit} bytes"
                    )
                files.append((value.filename or "", data))
    finally:
        await form.close()
    return files


async def read_image(request: Request, limit: int, timeout_s: float) -> bytes:
    """The image of a /predict request: multipart field ``file``, or the raw body with an ``image/*`` type."""
    kind = media_type(request)
    if kind.startswith("image/"):
        return await read_body(request, limit, timeout_s)
    if kind == "multipart/form-data":
        body = await read_body(request, limit + MULTIPART_OVERHEAD_BYTES, timeout_s)
        form = await _parse_multipart(request, body, max_files=16, max_fields=16, file_limit=limit)
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
    shown = kind or "none"
    raise UnsupportedMediaTypeError(
        f"Content-Type is {shown}; send multipart/form-data with a 'file' field or "
        "the raw image with an image/* Content-Type"
    )
