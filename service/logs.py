"""Structured logs: one JSON object per line on stderr.

Every record carries ``ts``, ``level``, ``logger``, ``event`` and, inside a
request, ``requestId``. Domain events (``job.created``, ``job.started``,
``job.completed``, ``job.failed``, ``job.cancelled``, ``job.deleted``) and the
access log (``http.request``) add their own fields. Secrets never reach a log
call.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging", "log_event", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("aos_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["requestId"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_logging(level: str) -> dict[str, Any]:
    """Route every logger (uvicorn's included) through the JSON formatter.

    Returns the dictConfig to hand to uvicorn so it does not install its own.
    """
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            # the service writes its own access log (http.request)
            "uvicorn.access": {"level": "WARNING", "propagate": False},
        },
    }
    logging.config.dictConfig(config)
    return config
