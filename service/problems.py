"""RFC 9457 problem responses, for every error the API returns.

Each problem has a stable ``type`` URI (``urn:aos:problem:<slug>``, listed in
``docs/api.md``), a ``title`` fixed per type, a ``detail`` about this
occurrence, the ``status`` and the ``requestId``. Validation problems add
``errors``: ``[{"pointer": "/metadata/tags/3", "detail": "..."}]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from storage_adapters import (
    Conflict,
    CorruptData,
    NotFound,
    StoreError,
    StoreUnavailable,
)

from .crypto import EncryptionKeyMissing
from .jobs import JobNotFound
from .lifecycle import InvalidChange
from .logs import log_event, request_id_var

__all__ = ["PROBLEM_TYPES", "Problem", "problem_response", "response_for"]

logger = logging.getLogger("aos.http")

#: slug -> (status, title)
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad request"),
    "malformed-json": (400, "Request body is not valid JSON"),
    "unauthorized": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "not-found": (404, "Not found"),
    "job-not-found": (404, "Job not found"),
    "namespace-not-found": (404, "Namespace not found"),
    "version-not-found": (404, "Output version not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict with the current state"),
    "key-limit": (409, "Too many keys"),
    "length-required": (411, "Content-Length required"),
    "job-exists": (409, "Job exists with a different body"),
    "invalid-transition": (409, "Invalid status transition"),
    "chunk-index-conflict": (409, "Chunk index conflict"),
    "job-not-terminal": (409, "Job is not finished"),
    "job-terminal": (409, "Job is finished"),
    "format-conflict": (409, "Chunk format differs from the version's"),
    "version-limit": (409, "Too many versions"),
    "version-complete": (409, "Output version is complete"),
    "version-changed": (409, "Output version changed"),
    "version-too-large": (413, "Output version too large"),
    "payload-too-large": (413, "Payload too large"),
    "output-too-large": (413, "Output too large for this route"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "range-not-satisfiable": (416, "Range not satisfiable"),
    "validation-failed": (422, "Request is not valid"),
    "rate-limited": (429, "Rate limit exceeded"),
    "quota-exceeded": (429, "Quota exceeded"),
    "store-unavailable": (503, "Store unavailable"),
    "encryption-key-missing": (503, "Encryption key missing"),
    "owner-failed": (502, "The node that owns the namespace failed"),
    "owner-timeout": (504, "The node that owns the namespace did not answer in time"),
    "internal-error": (500, "Internal error"),
    "data-corrupt": (500, "Stored data failed its integrity check"),
}

_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    503: "store-unavailable",
}


def type_uri(slug: str) -> str:
    return f"urn:aos:problem:{slug}"


class Problem(Exception):
    """Raise to answer with a problem response."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.status, self.title = PROBLEM_TYPES[slug]
        self.detail = detail
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": type_uri(problem.slug),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "requestId": request_id_var.get(),
    }
    if problem.errors:
        body["errors"] = problem.errors
    body.update(problem.extra)
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def _on_problem(exc: Exception, scope: Scope) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


def _on_http_exception(exc: Exception, scope: Scope) -> Response:
    """Routing errors (no route, method not allowed) as problems."""
    assert isinstance(exc, HTTPException)
    slug = _STATUS_SLUGS.get(exc.status_code, "bad-request")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route matches {scope['method']} {scope['path']}"
    elif exc.status_code == 405:
        detail = f"{scope['method']} is not allowed on {scope['path']}"
    return problem_response(Problem(slug, detail, headers=exc.headers))


def _on_store_error(exc: Exception, scope: Scope) -> Response:
    if isinstance(exc, StoreUnavailable):
        log_event(logger, "store.unavailable", logging.WARNING, detail=str(exc))
        return problem_response(
            Problem(
                "store-unavailable",
                "the store did not answer; nothing was written, retry shortly",
                headers={"Retry-After": "1"},
            )
        )
    if isinstance(exc, Conflict):
        return problem_response(Problem("conflict", str(exc)))
    if isinstance(exc, NotFound):
        return problem_response(Problem("not-found", str(exc)))
    if isinstance(exc, CorruptData):
        log_event(logger, "store.corrupt", logging.ERROR, detail=str(exc))
        return problem_response(Problem("data-corrupt", str(exc)))
    logger.error("store error", exc_info=exc)
    return problem_response(Problem("internal-error", "the store returned unreadable data"))


def _on_key_missing(exc: Exception, scope: Scope) -> Response:
    log_event(logger, "encryption.key_missing", logging.ERROR, detail=str(exc))
    return problem_response(Problem("encryption-key-missing", str(exc)))


def _on_job_not_found(exc: Exception, scope: Scope) -> Response:
    return problem_response(Problem("job-not-found", str(exc)))


def _on_invalid_change(exc: Exception, scope: Scope) -> Response:
    assert isinstance(exc, InvalidChange)
    return problem_response(Problem(exc.reason, str(exc)))


_HANDLERS: dict[type[Exception], Callable[[Exception, Scope], Response]] = {
    Problem: _on_problem,
    HTTPException: _on_http_exception,
    StoreError: _on_store_error,
    EncryptionKeyMissing: _on_key_missing,
    JobNotFound: _on_job_not_found,
    InvalidChange: _on_invalid_change,
}


def response_for(exc: Exception, scope: Scope) -> Response | None:
    """The problem response for an exception that reached the app's edge, or
    ``None`` for one no handler knows (a bug: the caller answers 500)."""
    for cls in type(exc).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            return handler(exc, scope)
    return None
