"""The uvicorn configuration the service runs under (``python -m service`` and the tests' in-process servers)."""

from __future__ import annotations

import math
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.logs import install_redaction

#: Largest request line + headers accepted (uvicorn's h11 limit); larger requests get a 400 from the parser.
MAX_HEADER_BYTES = 16 * 1024


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration for ``app`` under ``settings``; ``overrides`` replace single options.

    ``ws_max_size`` equals the frame limit so an oversize WebSocket message is refused by the protocol layer with
    close code 1009 before it is buffered whole; graceful shutdown waits for requests in flight up to their deadline,
    ``request_deadline_s`` + 1 s (every request is answered, or 504 at its deadline, before the server gives up on it;
    the whole shutdown's worst case is in docs/reliability.md).
    The HTTP parser is h11, which refuses a request line plus headers over ``h11_max_incomplete_event_size``
    (16 KiB) with a 400; httptools, uvicorn's other parser, buffers headers of any size (measured: 1 MB of
    headers and 20,000 header lines were accepted). Request parsing is a small part of a request's cost here.
    """
    install_redaction()  # uvicorn logs WebSocket paths with their query string (?api_key=...)
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws_max_size=settings.ws_max_frame_bytes,
        timeout_graceful_shutdown=math.ceil(settings.request_deadline_s) + 1,
        server_header=False,
        lifespan="on",
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)
