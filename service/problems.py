"""RFC 9457 problem responses, for every error the API returns.

Each problem has a stable ``type`` URI (``urn:aos:problem:<slug>``, listed in
``docs/api.md``), a ``title`` fixed per type, a ``detail`` about this
occurrence, the ``status`` and the ``requestId``. Validation problems add
``errors``: ``[{"pointer": "/metadata/tags/3", "detail": "..."}]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from storage_adapters import (
    Conflict,
    CorruptData,
    NotFound,
    StoreError,
    StoreUnavailable,
)

from .jobs import JobNotFound
from .lifecycle import InvalidChange
from .logs import log_event, request_id_var

__all__ = ["PROBLEM_TYPES", "Problem", "exception_handlers", "problem_response"]

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
    "job-exists": (409, "Job exists with a different body"),
    "invalid-transition": (409, "Invalid status transition"),
    "chunk-index-conflict": (409, "Chunk index conflict"),
    "job-not-terminal": (409, "Job is not finished"),
    "job-terminal": (409, "Job is finished"),
    "format-conflict": (409, "Chunk format differs from the version's"),
    "version-limit": (409, "Too many versions"),
    "payload-too-large": (413, "Payload too large"),
    "output-too-large": (413, "Output too large for this route"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-failed": (422, "Request is not valid"),
    "store-unavailable": (503, "Store unavailable"),
    "internal-error": (500, "Internal error"),
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


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = _STATUS_SLUGS.get(exc.status_code, "bad-request")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(Problem(slug, detail, headers=exc.headers))


async def _on_store_error(request: Request, exc: Exception) -> Response:
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
        logger.error("corrupt data in the store", exc_info=exc)
    else:
        logger.error("store error", exc_info=exc)
    return problem_response(Problem("internal-error", "the store returned unreadable data"))


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, JobNotFound):
        return problem_response(Problem("job-not-found", str(exc)))
    assert isinstance(exc, InvalidChange)
    return problem_response(Problem(exc.reason, str(exc)))


#: exceptions that reach the app's edge, as problems (anything else: the
#: request middleware answers 500)
exception_handlers: dict[Any, Any] = {
    Problem: _on_problem,
    HTTPException: _on_http_exception,
    StoreError: _on_store_error,
    JobNotFound: _on_domain_error,
    InvalidChange: _on_domain_error,
}
