"""HTTP handlers of the v1 API and the operational endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from sharding import AUTH_HEADER, Membership
from sharding.membership import NODE_HEADER, NODE_URL_HEADER
from storage_adapters import (
    NamespaceRecord,
    StorageAdapter,
)
from webhooks.drainer import Drainer

from . import validation
from .auth import Action, Authenticator, Principal, issue_key
from .clock import now_us, render_timestamp
from .cluster import route_to_owner
from .hub import Hub
from .ids import valid_job_id, valid_namespace
from .jobs import JobService
from .metrics import Metrics
from .namespaces import NamespaceDirectory, merged_config
from .problems import Problem
from .settings import Settings
from .sse import EventStream
from .streams import StreamPlan, job_stream, wait_for_change
from .views import (
    etag_matches,
    job_etag,
    job_view,
    namespace_view,
    status_etag,
    status_view,
)

__all__ = [
    "AppState",
    "JSONResponse",
    "job_call",
    "job_location",
    "namespace_call",
    "state_of",
]

_MAX_WAIT = 60.0


@dataclass(slots=True)
class AppState:
    """Everything the handlers use, made in the app factory and opened by the lifespan."""

    settings: Settings
    store: StorageAdapter
    hub: Hub
    jobs: JobService
    auth: Authenticator
    namespaces: NamespaceDirectory
    metrics: Metrics
    openapi: dict[str, Any]
    #: this node's view of the cluster (a ring of one when it runs alone)
    membership: Membership
    #: the webhook drainer of this node (None when AOS_WEBHOOKS is off)
    drainer: Drainer | None = None

    def recheck(self, namespace: str) -> float | None:
        """How often a live consumer of ``namespace`` here must re-read the store
        (``None``: never — this node owns it and every node agrees on the ring)."""
        membership = self.membership
        if not membership.clustered or (membership.owns(namespace) and membership.settled()):
            return None
        return self.settings.cluster_recheck


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.aos
    return state


# -- namespace and job resolution ---------------------------------------------------


def resolve_namespace(
    request: Request, principal: Principal, body_namespace: str | None = None
) -> str:
    """The namespace of a call: path, ``X-Namespace``, ``?namespace=``, body, the key's own."""
    sources = (
        ("path", request.path_params.get("namespace")),
        ("X-Namespace header", request.headers.get("x-namespace")),
        ("namespace parameter", request.query_params.get("namespace")),
        ("body", body_namespace),
    )
    source, namespace = next(((s, n) for s, n in sources if n), ("key", principal.namespace))
    if namespace is None:
        raise Problem(
            "bad-request",
            "no namespace: use /api/v1/namespaces/{ns}/..., the X-Namespace header, "
            "?namespace=, or a key scoped to one namespace",
        )
    if not valid_namespace(namespace):
        raise Problem("bad-request", f"the namespace from the {source} is not a valid name")
    if body_namespace is not None and body_namespace != namespace:
        raise Problem(
            "validation-failed",
            f"the body names namespace {body_namespace!r} but the {source} names {namespace!r}",
            errors=[{"pointer": "/namespace", "detail": "differs from the request's namespace"}],
        )
    return namespace


async def job_call(request: Request, action: Action) -> tuple[AppState, str, str]:
    """Authenticate and authorise a job-scoped call: ``(state, namespace, job id)``."""
    state = state_of(request)
    principal = await state.auth.authenticate(request)
    namespace = resolve_namespace(request, principal)
    principal.authorize(namespace, action)
    job_id: str = request.path_params["job_id"]
    if not valid_job_id(job_id):
        raise Problem("bad-request", "the job id is not valid: ^[a-z0-9][a-z0-9._-]{0,127}$")
    route_to_owner(request, state.membership, namespace)
    return state, namespace, job_id


def job_location(namespace: str, job_id: str) -> str:
    return f"/api/v1/namespaces/{namespace}/jobs/{job_id}"


# -- jobs ---------------------------------------------------------------------------


async def create_job(request: Request) -> Response:
    state = state_of(request)
    principal = await state.auth.authenticate(request)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    raw_namespace = body.get("namespace")
    if raw_namespace is not None and not isinstance(raw_namespace, str):
        raw_namespace = None  # reported by parse_new_job
    namespace = resolve_namespace(request, principal, raw_namespace)
    principal.authorize(namespace, Action.WRITE)
    route_to_owner(request, state.membership, namespace)
    _, new_job = validation.parse_new_job(body, state.settings)
    record = await state.namespaces.get(namespace)
    if record is None:
        raise Problem(
            "namespace-not-found",
            f"namespace {namespace!r} does not exist; create it with "
            f"PUT /api/v1/namespaces/{namespace}",
        )
    job, created = await state.jobs.create(record, new_job)
    headers = {"Location": job_location(namespace, job.job_id), "ETag": job_etag(job)}
    return JSONResponse(job_view(job), status_code=201 if created else 200, headers=headers)


async def list_jobs(request: Request) -> Response:
    state = state_of(request)
    principal = await state.auth.authenticate(request)
    namespace = resolve_namespace(request, principal)
    principal.authorize(namespace, Action.READ)
    route_to_owner(request, state.membership, namespace)
    query = validation.parse_list_query(request.query_params, alive_at=now_us())
    # One row more than asked tells whether there is a next page.
    page = await state.jobs.list(namespace, dataclasses.replace(query, limit=query.limit + 1))
    items, more = page[: query.limit], len(page) > query.limit
    next_cursor = None
    if more:
        last = items[-1]
        next_cursor = validation.Cursor.encode(last.created_at, last.job_id, query.descending)
    return JSONResponse({"items": [job_view(j) for j in items], "nextCursor": next_cursor})


async def get_job(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.READ)
    job = await state.jobs.get(namespace, job_id)
    etag = job_etag(job)
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    return JSONResponse(job_view(job), headers={"ETag": etag})


async def delete_job(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.WRITE)
    await state.jobs.delete(namespace, job_id)
    return Response(status_code=204)


def _parse_wait(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= _MAX_WAIT:
        raise Problem("bad-request", f"?wait must be a number of seconds from 0 to {_MAX_WAIT:g}")
    return wait


async def get_status(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.READ)
    wait = _parse_wait(request)
    job = await state.jobs.get(namespace, job_id)
    if_none_match = request.headers.get("if-none-match")
    if wait > 0 and if_none_match and etag_matches(if_none_match, status_etag(job)):
        job = await wait_for_change(
            state.jobs, state.hub, state.metrics, job, if_none_match, wait, state.recheck
        )
    etag = status_etag(job)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(status_view(job), headers=headers)


async def patch_status(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.WRITE)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    patch = validation.parse_status_patch(body)
    job = await state.jobs.update_status(namespace, job_id, patch)
    return JSONResponse(status_view(job), headers={"ETag": status_etag(job)})


async def cancel_job(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.CANCEL)
    job = await state.jobs.cancel(namespace, job_id)
    return JSONResponse(job_view(job), headers={"ETag": job_etag(job)})


# -- streaming ----------------------------------------------------------------------


def _stream_cursor(request: Request) -> int | None:
    for name, raw in (
        ("Last-Event-ID", request.headers.get("last-event-id")),
        ("lastEventId", request.query_params.get("lastEventId")),
    ):
        if raw is not None and raw.strip() != "":
            if not raw.strip().isdigit():
                raise Problem("bad-request", f"{name} must be a non-negative integer (a seq)")
            return int(raw)
    return None


async def stream_job(request: Request) -> Response | EventStream:
    state, namespace, job_id = await job_call(request, Action.READ)
    cursor = _stream_cursor(request)
    start = request.query_params.get("from")
    if start not in (None, "", "latest", "beginning"):
        raise Problem("bad-request", "?from must be 'latest' or 'beginning'")
    job = await state.jobs.get(namespace, job_id)
    if cursor is None:
        cursor = job.last_seq if start == "latest" else 0
    if job.terminal and cursor == job.last_seq:
        # Nothing left to send, ever: 204 also tells EventSource to stop reconnecting.
        return Response(status_code=204)
    plan = StreamPlan(cursor)
    if cursor > job.last_seq:
        plan = StreamPlan(0, "cursor-ahead")
    settings = state.settings
    return EventStream(
        job_stream(state.jobs, state.hub, state.metrics, job, plan, state.recheck),
        ping=settings.sse_heartbeat,
        send_timeout=settings.sse_send_timeout,
    )


# -- namespaces and keys ------------------------------------------------------------


async def namespace_call(request: Request, action: Action) -> tuple[AppState, str]:
    """Authenticate and authorise a call on ``/api/v1/namespaces/{namespace}/…``."""
    state = state_of(request)
    principal = await state.auth.authenticate(request)
    namespace: str = request.path_params["namespace"]
    if not valid_namespace(namespace):
        raise Problem("bad-request", "namespace names match ^[a-z0-9][a-z0-9._-]{0,62}$")
    principal.authorize(namespace, action)
    route_to_owner(request, state.membership, namespace)
    return state, namespace


async def _admin_call(request: Request) -> tuple[AppState, str]:
    return await namespace_call(request, Action.ADMIN)


async def put_namespace(request: Request) -> Response:
    state, name = await _admin_call(request)
    body = await validation.read_json(request, state.settings.max_body_bytes, allow_empty=True)
    settings, secret = validation.parse_namespace_config(body)
    existing = await state.store.get_namespace(name)
    now = now_us()
    config = merged_config(settings, existing, secret, now)
    record = NamespaceRecord(name, config, existing.created_at if existing else now, now)
    await state.namespaces.put(record)
    return JSONResponse(namespace_view(record), status_code=200 if existing else 201)


async def get_namespace(request: Request) -> Response:
    state, name = await _admin_call(request)
    record = await state.store.get_namespace(name)
    if record is None:
        raise Problem("namespace-not-found", f"namespace {name!r} does not exist")
    return JSONResponse(namespace_view(record))


async def create_key(request: Request) -> Response:
    state, name = await _admin_call(request)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    role = validation.parse_key_request(body)
    if await state.namespaces.get(name) is None:
        raise Problem(
            "namespace-not-found",
            f"namespace {name!r} does not exist; create it with PUT /api/v1/namespaces/{name}",
        )
    record, token = issue_key(name, role)
    await state.store.create_key(record)
    return JSONResponse(
        {
            "keyId": record.key_id,
            "key": token,
            "namespace": name,
            "role": role.value,
            "createdAt": render_timestamp(record.created_at),
        },
        status_code=201,
    )


# -- operations ---------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = state_of(request)
    try:
        async with asyncio.timeout(2):
            await state.store.ping()
    except Exception as exc:  # every failure means "not ready"
        raise Problem("store-unavailable", f"the store does not answer: {exc}") from None
    return JSONResponse(
        {
            "status": "ready",
            "store": state.store.url.scheme,
            "cluster": state.membership.summary(),
        }
    )


async def cluster_ping(request: Request) -> Response:
    """A peer's health check (``GET /internal/v1/cluster/ping``); with the
    cluster secret, the caller may announce itself and learns the members."""
    membership = state_of(request).membership
    trusted = membership.secret is not None and membership.authorized(
        request.headers.get(AUTH_HEADER)
    )
    if membership.secret is not None and not trusted:
        raise Problem("forbidden", "this route is for the members of the cluster")
    node_id, url = request.headers.get(NODE_HEADER), request.headers.get(NODE_URL_HEADER)
    if trusted and node_id and url:
        membership.announced(node_id, url.rstrip("/"))
    return JSONResponse(membership.ping_answer(trusted))


async def cluster_view(request: Request) -> Response:
    """``GET /api/v1/cluster``: this node's view of the cluster (root admin only)."""
    state = state_of(request)
    principal = await state.auth.authenticate(request)
    if not principal.is_root:
        raise Problem("forbidden", "the cluster view needs the root admin token")
    return JSONResponse(state.membership.view())


async def metrics(request: Request) -> Response:
    registry = state_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(state_of(request).openapi)
