"""HTTP handlers for webhooks: delivery logs, replays, endpoints and secrets."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from storage_adapters import (
    DeliveryQuery,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    NamespaceRecord,
)

from . import validation
from .api import AppState, JSONResponse, audit, job_call, namespace_call
from .auth import Action
from .clock import now_us, parse_timestamp, render_timestamp
from .namespaces import rotated_config
from .problems import Problem
from .views import namespace_view

__all__ = [
    "enable_endpoint",
    "list_endpoints",
    "list_job_deliveries",
    "list_namespace_deliveries",
    "replay_deliveries",
    "retry_delivery",
    "rotate_secret",
]

_REPLAY_LIMIT = 100_000  # deliveries one bulk replay requeues at most
_DELIVERY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # "msg_" and a ULID, leniently


def delivery_view(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "deliveryId": d.delivery_id,
        "jobId": d.job_id,
        "eventType": d.event_type,
        "url": d.url,
        "state": d.state.value,
        "attempts": d.attempts,
        "nextAttemptAt": render_timestamp(d.next_attempt_at)
        if d.state is DeliveryState.PENDING
        else None,
        "createdAt": render_timestamp(d.created_at),
        "updatedAt": render_timestamp(d.updated_at),
        "lastStatus": d.last_status,
        "lastError": d.last_error,
        "log": [
            {
                "at": render_timestamp(a.at),
                "status": a.status,
                "latencyMs": a.latency_ms,
                "error": a.error,
                "response": a.response,
            }
            for a in d.log
        ],
        "payload": orjson.loads(d.payload),
    }


def _encode_cursor(d: DeliveryRecord) -> str:
    raw = orjson.dumps([d.created_at, d.delivery_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, str]:
    try:
        created_at, delivery_id = orjson.loads(
            base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        )
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise Problem("bad-request", "cursor is not one this service issued") from None
    if (
        not validation.is_int64(created_at)
        or not isinstance(delivery_id, str)
        or not _DELIVERY_ID_RE.fullmatch(delivery_id)
    ):
        raise Problem("bad-request", "cursor is not one this service issued")
    return created_at, delivery_id


def _page_query(request: Request, **filters: Any) -> DeliveryQuery:
    raw_limit = request.query_params.get("limit", "50")
    if not validation.is_count(raw_limit) or not 1 <= int(raw_limit) <= 1000:
        raise Problem("bad-request", "?limit must be an integer from 1 to 1000")
    cursor = request.query_params.get("cursor")
    return DeliveryQuery(
        limit=int(raw_limit) + 1,
        after=_decode_cursor(cursor) if cursor else None,
        **filters,
    )


async def _page(state: AppState, namespace: str, query: DeliveryQuery) -> Response:
    rows = await state.store.list_deliveries(namespace, query)
    limit = query.limit - 1
    items, more = rows[:limit], len(rows) > limit
    return JSONResponse(
        {
            "items": [delivery_view(d) for d in items],
            "nextCursor": _encode_cursor(items[-1]) if more else None,
        }
    )


async def list_job_deliveries(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.INSPECT)
    await state.jobs.get(namespace, job_id)  # 404 for a job that is not there
    return await _page(state, namespace, _page_query(request, job_id=job_id))


async def retry_delivery(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.WRITE)
    delivery_id: str = request.path_params["delivery_id"]
    # An id no delivery has (NUL, non-ASCII) is not even asked of the store: some refuse it.
    known = _DELIVERY_ID_RE.fullmatch(delivery_id) is not None
    delivery = await state.store.get_delivery(namespace, delivery_id) if known else None
    if delivery is None or delivery.job_id != job_id:
        raise Problem("not-found", f"job {job_id!r} has no delivery {delivery_id!r}")
    if await state.store.requeue_deliveries(namespace, [delivery_id], now_us()) == 0:
        raise Problem("conflict", "the delivery is being attempted right now; retry shortly")
    if state.drainer is not None:
        state.drainer.wake()
    replayed = await state.store.get_delivery(namespace, delivery_id)
    assert replayed is not None
    audit(request, namespace, "delivery.retry", job_id, deliveryId=delivery_id)
    return JSONResponse(delivery_view(replayed), status_code=202)


def _state_param(request: Request) -> DeliveryState | None:
    raw = request.query_params.get("state")
    if not raw:
        return None
    try:
        return DeliveryState(raw)
    except ValueError:
        raise Problem("bad-request", "?state must be pending, succeeded or dead") from None


def _since_param(raw: str | None, name: str) -> int | None:
    if not raw:
        return None
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise Problem("bad-request", f"{name}: {exc}") from None


async def list_namespace_deliveries(request: Request) -> Response:
    state, namespace = await namespace_call(request, Action.INSPECT)
    query = _page_query(
        request,
        state=_state_param(request),
        created_since=_since_param(request.query_params.get("since"), "?since"),
    )
    return await _page(state, namespace, query)


async def replay_deliveries(request: Request) -> Response:
    """Requeue the dead deliveries of a namespace created since a time."""
    state, namespace = await namespace_call(request, Action.WRITE)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    unknown = set(body) - {"since"}
    if unknown or not isinstance(body.get("since"), str):
        raise Problem(
            "validation-failed",
            'send {"since": "<RFC 3339 time>"}',
            errors=[{"pointer": "/since", "detail": "an RFC 3339 timestamp is required"}]
            + [{"pointer": f"/{name}", "detail": "unknown field"} for name in sorted(unknown)],
        )
    try:
        since = parse_timestamp(body["since"])
    except ValueError as exc:
        raise Problem(
            "validation-failed", str(exc), errors=[{"pointer": "/since", "detail": str(exc)}]
        ) from None
    query = DeliveryQuery(limit=500, state=DeliveryState.DEAD, created_since=since)
    requeued = 0
    more = True
    while requeued < _REPLAY_LIMIT:
        page = await state.store.list_deliveries(namespace, query)
        if not page:
            more = False
            break
        requeued += await state.store.requeue_deliveries(
            namespace, [d.delivery_id for d in page], now_us()
        )
        if len(page) < query.limit:
            more = False
            break
        last = page[-1]
        query = DeliveryQuery(
            limit=500,
            state=DeliveryState.DEAD,
            created_since=since,
            after=(last.created_at, last.delivery_id),
        )
    if state.drainer is not None and requeued:
        state.drainer.wake()
    audit(request, namespace, "delivery.replay", None, since=body["since"], requeued=requeued)
    return JSONResponse({"requeued": requeued, "more": more}, status_code=202)


async def rotate_secret(request: Request) -> Response:
    state, name = await namespace_call(request, Action.ADMIN)
    body = await validation.read_json(request, state.settings.max_body_bytes, allow_empty=True)
    grace = validation.parse_grace_period(body, default=state.settings.webhook_secret_grace)
    record = await state.store.get_namespace(name)
    if record is None:
        raise Problem("namespace-not-found", f"namespace {name!r} does not exist")
    now = now_us()
    config = rotated_config(record.config, now, int(grace * 1_000_000))
    updated = NamespaceRecord(name, config, record.created_at, now)
    updated = await state.namespaces.put(updated)
    audit(request, name, "webhook.secret.rotate", name, graceSeconds=grace)
    return JSONResponse(namespace_view(state.namespaces.reveal(updated)), status_code=201)


def _endpoint_view(e: EndpointRecord) -> dict[str, Any]:
    return {
        "url": e.url,
        "disabled": e.disabled_at is not None,
        "disabledAt": render_timestamp(e.disabled_at),
        "reason": e.reason,
    }


async def list_endpoints(request: Request) -> Response:
    state, name = await namespace_call(request, Action.ADMIN)
    endpoints = await state.store.list_endpoints(name)
    return JSONResponse({"items": [_endpoint_view(e) for e in endpoints]})


async def enable_endpoint(request: Request) -> Response:
    state, name = await namespace_call(request, Action.ADMIN)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    url = body.get("url")
    if (
        set(body) - {"url"}
        or not isinstance(url, str)
        or not 0 < len(url) <= validation.MAX_URL_LENGTH
        or not url.isprintable()  # no NUL nor control characters, which stores refuse
    ):
        raise Problem(
            "validation-failed",
            'send {"url": "<the endpoint\'s URL>"}',
            errors=[{"pointer": "/url", "detail": "required"}],
        )
    endpoint = EndpointRecord(name, url)
    await state.store.put_endpoint(endpoint)
    if state.drainer is not None:
        state.drainer.endpoint_changed(name, url)
    audit(request, name, "webhook.endpoint.enable", url)
    return JSONResponse(_endpoint_view(endpoint))
