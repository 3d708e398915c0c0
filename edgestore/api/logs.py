"""Structured logs: every record carries the request id; text or JSON lines."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def submit_in_context(executor: Executor, fn: Callable[..., T], /, *args: Any) -> Future[T]:
    """Run fn on the executor in the caller's context (asyncio.to_thread does this, an
    executor does not): what the engine logs for a request carries its request id."""
    return executor.submit(contextvars.copy_context().run, fn, *args)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TextFormatter(logging.Formatter):
    """One line per record: control characters in what clients can put in a message (a
    percent-decoded path: %0A) are escaped, so no one can start a log line of their own.
    An exception's traceback, appended after, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for key in ("method", "path", "status", "seconds", "bytes_in", "bytes_out", "client"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        f = TextFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        f.converter = time.gmtime
        handler.setFormatter(f)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests
