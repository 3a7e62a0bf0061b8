"""Structured logging: one JSON object per line on stderr (easy to ship to any log store and to grep)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

#: ``LogRecord`` attributes that are not extra fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


#: Query parameters whose values are secrets (the WebSocket's ``?api_key=``, and the usual names for tokens).
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:api[_-]?key|apikey|key|token|access[_-]?token|password|secret)=)[^&;\s\"']*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters replaced by ``[redacted]`` (``/ws?api_key=[redacted]``)."""
    return _SECRET_QUERY.sub(r"\1" + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and string extra fields) with `redact`: uvicorn logs a WebSocket's path with
    its query string, ``?api_key=`` included, wrong keys too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str) and not key.startswith("_"):
                record.__dict__[key] = redact(value)
        return True


#: The loggers that may carry a request's path: uvicorn's (its WebSocket lines) and ours.
REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "service", "service.access")


def install_redaction() -> None:
    """Put one `RedactingFilter` on every logger that may log a path (idempotent). Logger filters see only the
    records logged on that logger itself; `configure_logging` also puts one on the handler, which sees all."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "message": ..., **extra}``; tracebacks only in logs."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """Send every logger (ours, uvicorn's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    install_redaction()
    # TensorFlow's Python logger is chatty at INFO; keep its warnings.
    logging.getLogger("tensorflow").setLevel(max(logging.WARNING, root.level))
