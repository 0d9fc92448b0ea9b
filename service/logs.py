"""Structured logs: one JSON object per line on stderr.

Every record carries ``ts``, ``level``, ``logger``, ``event`` and, inside a
request, ``requestId``. Domain events (``job.created``, ``job.started``,
``job.completed``, ``job.failed``, ``job.cancelled``, ``job.deleted``) and the
access log (``http.request``) add their own fields. Secrets never reach a log
call, and as a second line of defence every formatted line is scrubbed (see
:func:`redact`): API keys, admin tokens, webhook secrets, ``Authorization``
credentials, ``access_token``/``token``/``password``/``secret`` parameters,
URL passwords, and the configured secrets registered with
:func:`register_secrets`, whatever the log call passed.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "log_event",
    "redact",
    "register_secrets",
    "request_id_var",
]

request_id_var: ContextVar[str | None] = ContextVar("aos_request_id", default=None)

MASK = "***"

# Each alternative keeps what identifies the secret (the part before it) and
# masks the secret itself.
_SECRET_RE = re.compile(
    # a namespace key aos.<namespace>.<keyId>.<secret>: the key id stays
    r"(?P<key>\baos\.[a-z0-9][a-z0-9._-]*\.[A-Za-z0-9_-]+\.)[A-Za-z0-9_-]{8,}"
    r"|(?P<admin>\baos_admin_)[A-Za-z0-9_-]+"
    r"|(?P<whsec>\bwhsec_)[A-Za-z0-9+/=]+"
    r"|(?P<scheme>\b(?i:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"
    # query or form parameters, and "name":"value" pairs of a logged document
    r"|(?P<param>\b(?i:access_token|token|password|passwd|secret)=)[^&\s\"'\\]+"
    r'|(?P<field>"(?i:authorization|access_?token|token|password|secret)":")[^"\\]+'
    # the password of a URL: scheme://user:password@host
    r"|(?P<userinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"']*:)[^@\s/\"']*(?=@)"
)

# Cheap tests first: the regular expression runs on a line only when it
# holds a key-like word or one of these (lowercased) substrings.
_KEY_RE = re.compile(r"aos\.[a-z0-9][a-z0-9._-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{8,}")
_TRIGGERS = (
    "bearer",
    "basic ",
    "token",
    "passw",
    "secret",
    "whsec_",
    "aos_admin_",
    "://",
    "authorization",
)

#: configured secrets (admin token, cluster secret, store password) masked wherever they appear
_literals: tuple[str, ...] = ()


def register_secrets(*values: str | None) -> None:
    """Mask these values (at least 8 characters long) in every log line from now on."""
    global _literals
    new = {v for v in values if v and len(v) >= 8}
    _literals = tuple(sorted(new.union(_literals), key=len, reverse=True))


def _mask(match: re.Match[str]) -> str:
    return match.group(match.lastgroup or 0) + MASK


def redact(text: str) -> str:
    """``text`` with every secret it carries masked."""
    for literal in _literals:
        if literal in text:
            text = text.replace(literal, MASK)
    if _KEY_RE.search(text) is None:
        lowered = text.lower()
        for trigger in _TRIGGERS:
            if trigger in lowered:
                break
        else:
            return text
    return _SECRET_RE.sub(_mask, text)


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
        return redact(orjson.dumps(entry, default=str).decode())


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
