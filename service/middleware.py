"""The one ASGI middleware every request passes: request id, metrics, access log,
and every exception turned into its problem response.

* ``X-Request-ID``: taken from the request when it is a sane token, else
  made up; set on the response and on every log line of the request.
* Latency: time to the response headers, by route template, so streams do
  not distort the histogram.
* An exception that escapes the app becomes a ``500`` problem response that
  still carries the request id.
* Secure headers on every response (:data:`SECURITY_HEADERS`; HSTS too when
  the request came over TLS), and on ``/api/`` responses that set no
  ``Cache-Control``: ``no-store``, or ``private, no-cache`` when they carry an
  ``ETag`` (they are revalidated, never stored by a shared cache). They are
  precomputed tuples appended to the response's headers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .ids import new_request_id
from .logs import log_event, request_id_var
from .metrics import Metrics
from .problems import Problem, problem_response, response_for
from .routing import ROUTE_KEY

__all__ = ["HSTS", "SECURITY_HEADERS", "RequestMiddleware"]

logger = logging.getLogger("aos.http")

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")

#: on every response (docs/operations.md, "TLS and secure headers")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
#: on every response to a request that came over TLS
HSTS = (b"strict-transport-security", b"max-age=31536000")
_TLS_HEADERS = (*SECURITY_HEADERS, HSTS)
_NO_STORE = (b"cache-control", b"no-store")
_REVALIDATE = (b"cache-control", b"private, no-cache")


def _default_cache_control(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
    """The ``Cache-Control`` an ``/api/`` response gets when it sets none itself."""
    etag = False
    for name, _ in headers:
        if name == b"cache-control":
            return None
        if name == b"etag":
            etag = True
    return _REVALIDATE if etag else _NO_STORE


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _REQUEST_ID_RE.fullmatch(value):
                    request_id = value.decode("ascii")
                break
        if request_id is None:
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        header = (b"x-request-id", request_id.encode("ascii"))
        secure = _TLS_HEADERS if scope.get("scheme") == "https" else SECURITY_HEADERS
        api = scope["path"].startswith("/api/")

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.get("headers", ())
                cache = _default_cache_control(headers) if api else None
                if cache is None:
                    message["headers"] = [*headers, header, *secure]
                else:
                    message["headers"] = [*headers, header, *secure, cache]
                self.metrics.request_duration_of(
                    scope["method"], scope.get(ROUTE_KEY, "unmatched"), str(status)
                ).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if response_started:
                logger.error("error after the response started", exc_info=exc)
                raise
            response = response_for(exc, scope)
            if response is None:
                logger.error("unhandled error", exc_info=exc)
                response = problem_response(
                    Problem("internal-error", "an unexpected error occurred")
                )
            exc.__traceback__ = None  # do not keep frames alive through a reused exception
            await response(scope, receive, send_with_id)
        finally:
            if self.access_log:
                log_event(
                    logger,
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=scope.get(ROUTE_KEY),
                    status=status,
                    durationMs=round((time.perf_counter() - started) * 1000, 3),
                )
            request_id_var.reset(token)
