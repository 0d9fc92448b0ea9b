"""HTTP handlers of the v1 API and the operational endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from sharding import AUTH_HEADER, Membership
from sharding.membership import NODE_HEADER, NODE_URL_HEADER
from storage_adapters import (
    KeyRecord,
    NamespaceRecord,
    StorageAdapter,
)
from webhooks.drainer import Drainer

from . import tokens, validation
from .audit import AuditLog
from .auth import Action, Authenticator, Principal, Role, issue_key
from .clock import now_us, render_timestamp
from .cluster import route_to_owner
from .hub import Hub
from .ids import valid_job_id, valid_key_id, valid_namespace
from .jobs import JobService
from .limits import Limits, nothing_reserved
from .metrics import Metrics
from .namespaces import NamespaceDirectory, merged_config
from .problems import Problem
from .settings import Settings
from .sse import EventStream
from .streams import StreamPlan, job_stream, wait_for_change
from .views import (
    audit_view,
    etag_matches,
    job_etag,
    job_view,
    key_view,
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
    audit: AuditLog
    limits: Limits
    #: the webhook drainer of this node (None when AOS_WEBHOOKS is off)
    drainer: Drainer | None = None
    #: held while a namespace's token signing key is made
    mint_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

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


_PRINCIPAL = "aos.principal"


async def _principal(request: Request, state: AppState) -> Principal:
    principal = await state.auth.authenticate(request)
    request.scope[_PRINCIPAL] = principal
    return principal


def actor_of(request: Request) -> str:
    """Who made an authenticated request, as the audit log names it."""
    principal: Principal | None = request.scope.get(_PRINCIPAL)
    return principal.actor if principal is not None else "anonymous"


def audit(
    request: Request,
    namespace: str,
    action: str,
    target: str | None = None,
    **detail: Any,
) -> None:
    """Record a successful audited action of this request."""
    state_of(request).audit.record(
        namespace, action, actor_of(request), target=target, detail=detail
    )


def authorize(
    state: AppState, principal: Principal, namespace: str, action: Action, job_id: str | None = None
) -> None:
    """``principal.authorize``, auditing a refusal in the principal's namespace."""
    try:
        principal.authorize(namespace, action, job_id)
    except Problem as problem:
        state.auth.refused(principal, namespace, action.value, problem.detail)
        raise


async def admit(
    request: Request,
    state: AppState,
    principal: Principal,
    namespace: str,
    job_id: str | None = None,
    *,
    status_poll: bool = False,
) -> NamespaceRecord | None:
    """On the owner: take the request's rate-limit tokens (or ``429``); the
    namespace, if it exists."""
    route_to_owner(request, state.membership, namespace)
    record = await state.namespaces.get(namespace)
    config = record.config if record is not None else None
    state.limits.admit(config, namespace, principal.credential, job_id, status_poll=status_poll)
    return record


async def job_call(
    request: Request, action: Action, *, status_poll: bool = False
) -> tuple[AppState, str, str]:
    """Authenticate and authorise a job-scoped call: ``(state, namespace, job id)``."""
    state = state_of(request)
    principal = await _principal(request, state)
    namespace = resolve_namespace(request, principal)
    job_id: str = request.path_params["job_id"]
    if not valid_job_id(job_id):
        raise Problem("bad-request", "the job id is not valid: ^[a-z0-9][a-z0-9._-]{0,127}$")
    authorize(state, principal, namespace, action, job_id)
    await admit(request, state, principal, namespace, job_id, status_poll=status_poll)
    return state, namespace, job_id


def job_location(namespace: str, job_id: str) -> str:
    return f"/api/v1/namespaces/{namespace}/jobs/{job_id}"


# -- jobs ---------------------------------------------------------------------------


async def create_job(request: Request) -> Response:
    state = state_of(request)
    principal = await _principal(request, state)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    raw_namespace = body.get("namespace")
    if raw_namespace is not None and not isinstance(raw_namespace, str):
        raw_namespace = None  # reported by parse_new_job
    namespace = resolve_namespace(request, principal, raw_namespace)
    authorize(state, principal, namespace, Action.WRITE)
    record = await admit(request, state, principal, namespace)
    _, new_job = validation.parse_new_job(body, state.settings)
    if record is None:
        raise Problem(
            "namespace-not-found",
            f"namespace {namespace!r} does not exist; create it with "
            f"PUT /api/v1/namespaces/{namespace}",
        )
    try:
        account = await state.limits.reserve_job(record.config, namespace)
    except Problem:
        # at the quota, a retry of a job that exists still gets its 200
        if new_job.job_id is None or await state.jobs.find(namespace, new_job.job_id) is None:
            raise
        account = nothing_reserved
    try:
        job, created = await state.jobs.create(record, new_job)
    except BaseException:
        account(False)
        raise
    account(created)  # not created: a retry of a job that exists
    if created:
        audit(request, namespace, "job.submit", job.job_id)
    headers = {"Location": job_location(namespace, job.job_id), "ETag": job_etag(job)}
    return JSONResponse(job_view(job), status_code=201 if created else 200, headers=headers)


async def list_jobs(request: Request) -> Response:
    state = state_of(request)
    principal = await _principal(request, state)
    namespace = resolve_namespace(request, principal)
    authorize(state, principal, namespace, Action.READ)
    await admit(request, state, principal, namespace)
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
    job = await state.jobs.get(namespace, job_id)
    await state.jobs.delete(namespace, job_id)
    state.limits.released(namespace, 1, sum(v.stored_size for v in job.versions))
    audit(request, namespace, "job.delete", job_id)
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
    state, namespace, job_id = await job_call(request, Action.READ, status_poll=True)
    wait = _parse_wait(request)
    job = await state.jobs.get(namespace, job_id)
    if_none_match = request.headers.get("if-none-match")
    if wait > 0 and if_none_match and etag_matches(if_none_match, status_etag(job)):
        release = state.limits.hold_stream(await namespace_config(state, namespace), namespace)
        try:
            job = await wait_for_change(
                state.jobs, state.hub, state.metrics, job, if_none_match, wait, state.recheck
            )
        finally:
            release()
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
    audit(request, namespace, "job.cancel", job_id)
    return JSONResponse(job_view(job), headers={"ETag": job_etag(job)})


# -- streaming ----------------------------------------------------------------------


def _stream_cursor(request: Request) -> int | None:
    for name, raw in (
        ("Last-Event-ID", request.headers.get("last-event-id")),
        ("lastEventId", request.query_params.get("lastEventId")),
    ):
        if raw is not None and raw.strip() != "":
            if not validation.is_count(raw.strip()):
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
    release = state.limits.hold_stream(await namespace_config(state, namespace), namespace)
    principal: Principal = request.scope[_PRINCIPAL]
    return EventStream(
        job_stream(state.jobs, state.hub, state.metrics, job, plan, state.recheck),
        ping=settings.sse_heartbeat,
        send_timeout=settings.sse_send_timeout,
        on_close=release,
        # a stream ends when its credential expires (the client reconnects with a new one)
        expires_in=None
        if principal.expires_at is None
        else max(0.0, (principal.expires_at - now_us()) / 1_000_000),
    )


async def namespace_config(state: AppState, namespace: str) -> Mapping[str, Any] | None:
    """A namespace's configuration (``None``: no such namespace), from the cache."""
    record = await state.namespaces.get(namespace)
    return record.config if record is not None else None


# -- namespaces and keys ------------------------------------------------------------


async def namespace_call(request: Request, action: Action) -> tuple[AppState, str]:
    """Authenticate and authorise a call on ``/api/v1/namespaces/{namespace}/…``."""
    state = state_of(request)
    principal = await _principal(request, state)
    namespace: str = request.path_params["namespace"]
    if not valid_namespace(namespace):
        raise Problem("bad-request", "namespace names match ^[a-z0-9][a-z0-9._-]{0,62}$")
    authorize(state, principal, namespace, action)
    await admit(request, state, principal, namespace)
    return state, namespace


async def _admin_call(request: Request) -> tuple[AppState, str]:
    return await namespace_call(request, Action.ADMIN)


async def put_namespace(request: Request) -> Response:
    state, name = await _admin_call(request)
    body = await validation.read_json(request, state.settings.max_body_bytes, allow_empty=True)
    settings, secret = validation.parse_namespace_config(body)
    existing = await state.store.get_namespace(name)
    now = now_us()
    _check_audit_retention(request, state, settings)
    if existing is not None:
        # kept unless the body sets them
        kept = existing.config.get("subscriberKeys") or []
        given = settings.get("subscriberKeys")
        settings["subscriberKeys"] = kept if given is None else _subscriber_keys(given, kept)
        if "auditRetention" not in settings and "auditRetention" in existing.config:
            settings["auditRetention"] = existing.config["auditRetention"]
    elif settings.get("subscriberKeys"):
        settings["subscriberKeys"] = _subscriber_keys(settings["subscriberKeys"], [])
    if settings.get("auditRetention", 0) is None:
        del settings["auditRetention"]  # null: back to AOS_AUDIT_RETENTION
    config = merged_config(settings, existing, secret, now)
    record = NamespaceRecord(name, config, existing.created_at if existing else now, now)
    record = await state.namespaces.put(record)  # as stored: secrets sealed, if encrypted
    state.auth.forget_tokens(name)
    changed = sorted(k for k in body if k != "webhookSecret") + (
        ["webhookSecret"] if secret is not None else []
    )
    audit(
        request, name, "namespace.update" if existing else "namespace.create", name, fields=changed
    )
    return JSONResponse(
        namespace_view(state.namespaces.reveal(record)), status_code=200 if existing else 201
    )


def _subscriber_keys(
    given: list[dict[str, Any]], kept: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ``subscriberKeys`` a ``PUT`` sets: the given ones; the service's own
    key stays only if the body names it (``{"kid": "aos-…"}``), so removing it
    revokes every token it minted."""
    managed = {k["kid"]: k for k in kept if k.get("managed")}
    keys = []
    for entry in given:
        if entry.get("keep"):
            if entry["kid"] not in managed:
                raise Problem(
                    "validation-failed",
                    f"the namespace has no subscriber key {entry['kid']!r} to keep",
                    errors=[{"pointer": "/subscriberKeys", "detail": "unknown service key"}],
                )
            keys.append(managed[entry["kid"]])
        else:
            keys.append(entry)
    return keys


def _check_audit_retention(request: Request, state: AppState, settings: dict[str, Any]) -> None:
    """Only the root admin may keep a namespace's audit entries for less than
    ``AOS_AUDIT_RETENTION`` (a namespace admin must not erase its own tracks)."""
    wanted = settings.get("auditRetention")
    default = state.settings.audit_retention
    shorter = wanted is not None and (default is None or wanted < default)
    principal: Principal | None = request.scope.get(_PRINCIPAL)
    if shorter and principal is not None and not principal.is_root:
        raise Problem(
            "forbidden",
            f"only the root admin may keep audit entries for less than {default} seconds",
        )


async def get_namespace(request: Request) -> Response:
    state, name = await _admin_call(request)
    record = await state.store.get_namespace(name)
    if record is None:
        raise Problem("namespace-not-found", f"namespace {name!r} does not exist")
    return JSONResponse(namespace_view(state.namespaces.reveal(record)))


async def _existing_namespace(state: AppState, name: str) -> NamespaceRecord:
    record = await state.namespaces.get(name)
    if record is None:
        raise Problem(
            "namespace-not-found",
            f"namespace {name!r} does not exist; create it with PUT /api/v1/namespaces/{name}",
        )
    return record


async def _new_key(
    state: AppState,
    name: str,
    role: Role,
    key_name: str | None,
    expires_at: int | None,
    now: int,
) -> Response:
    if len(await state.store.list_keys(name)) >= state.settings.max_keys_per_namespace:
        raise Problem(
            "key-limit",
            f"namespace {name!r} has {state.settings.max_keys_per_namespace} keys, the most "
            "it may; revoke keys it no longer needs (revoked keys count until purged)",
        )
    record, token = issue_key(name, role, name=key_name, expires_at=expires_at, now=now)
    await state.store.create_key(record)
    return JSONResponse({**key_view(record, now), "key": token}, status_code=201)


async def create_key(request: Request) -> Response:
    state, name = await _admin_call(request)
    body = await validation.read_json(request, state.settings.max_body_bytes)
    now = now_us()
    role, key_name, expires_at = validation.parse_key_request(body, now)
    await _existing_namespace(state, name)
    response = await _new_key(state, name, role, key_name, expires_at, now)
    key_id = orjson.loads(response.body)["keyId"]
    audit(request, name, "key.create", key_id, role=role.value, keyName=key_name)
    return response


async def list_keys(request: Request) -> Response:
    state, name = await _admin_call(request)
    now = now_us()
    keys = await state.store.list_keys(name)
    return JSONResponse({"items": [key_view(k, now) for k in keys]})


async def _key_of(request: Request) -> tuple[AppState, str, KeyRecord]:
    state, name = await _admin_call(request)
    key_id: str = request.path_params["key_id"]
    key = await state.store.get_key(name, key_id) if valid_key_id(key_id) else None
    if key is None:
        raise Problem("not-found", f"namespace {name!r} has no key {key_id!r}")
    return state, name, key


async def get_key(request: Request) -> Response:
    _, _, key = await _key_of(request)
    return JSONResponse(key_view(key, now_us()))


async def revoke_key(request: Request) -> Response:
    """``DELETE …/keys/{keyId}``: the key stops working at once on this node,
    within ``AOS_KEY_CACHE`` on the others. Revoking a revoked key is a no-op."""
    state, name, key = await _key_of(request)
    if key.revoked_at is None:
        await state.store.update_key(name, key.key_id, {"revoked_at": now_us()})
        audit(request, name, "key.revoke", key.key_id)
    state.auth.forget(name, key.key_id)
    return Response(status_code=204)


async def rotate_key(request: Request) -> Response:
    """A new key with the same role and name; the old one keeps working for
    ``gracePeriod`` (default an hour), then expires."""
    state, name, old = await _key_of(request)
    body = await validation.read_json(request, state.settings.max_body_bytes, allow_empty=True)
    grace = math.ceil(validation.parse_grace_period(body, default=3600))
    now = now_us()
    if old.state(now) != "active":
        raise Problem("conflict", f"key {old.key_id!r} is {old.state(now)}; create a new key")
    until = now + grace * 1_000_000
    if old.expires_at is not None:
        until = min(until, old.expires_at)
    response = await _new_key(state, name, Role(old.role), old.name, old.expires_at, now)
    await state.store.update_key(name, old.key_id, {"expires_at": until})
    state.auth.forget(name, old.key_id)
    new_id = orjson.loads(response.body)["keyId"]
    audit(request, name, "key.rotate", old.key_id, newKeyId=new_id, graceSeconds=grace)
    return response


async def mint_token(request: Request) -> Response:
    """``POST …/subscriber-tokens``: a short-lived read-only token for a browser."""
    state = state_of(request)
    principal = await _principal(request, state)
    name: str = request.path_params["namespace"]
    if not valid_namespace(name):
        raise Problem("bad-request", "namespace names match ^[a-z0-9][a-z0-9._-]{0,62}$")
    if principal.role is Role.SUBSCRIBER:
        raise Problem("forbidden", "a subscriber token cannot mint tokens")
    authorize(state, principal, name, Action.READ)
    await admit(request, state, principal, name)
    body = await validation.read_json(request, state.settings.max_body_bytes, allow_empty=True)
    settings = state.settings
    job_id, subject, ttl = validation.parse_token_request(
        body, settings.token_ttl, settings.max_token_lifetime
    )
    record = await _existing_namespace(state, name)
    key = tokens.signing_key(state.namespaces.reveal(record).config)
    if key is None:
        # First token of this namespace: make the service's signing key, once
        # (minting runs on the namespace's owner; the lock covers its requests).
        async with state.mint_lock:
            fresh = await state.store.get_namespace(name) or record
            key = tokens.signing_key(state.namespaces.reveal(fresh).config)
            if key is None:
                entries = [*(fresh.config.get("subscriberKeys") or ()), tokens.new_managed_key()]
                stored = await state.namespaces.put(
                    NamespaceRecord(
                        name,
                        {**fresh.config, "subscriberKeys": entries},
                        fresh.created_at,
                        now_us(),
                    )
                )
                key = tokens.signing_key(state.namespaces.reveal(stored).config)
                assert key is not None
    now = int(time.time())
    if principal.expires_at is not None:  # never longer than the key that asks
        ttl = max(1, min(ttl, principal.expires_at // 1_000_000 - now))
    token, expires = tokens.mint(key, name, job_id, subject, now, ttl, principal.key_id)
    return JSONResponse(
        {
            "token": token,
            "tokenType": "Bearer",
            "namespace": name,
            "jobId": job_id,
            "subject": subject,
            "expiresAt": render_timestamp(expires * 1_000_000),
        },
        status_code=201,
    )


async def read_audit(request: Request) -> Response:
    """``GET …/audit``: the namespace's audit log, newest first."""
    state, name = await _admin_call(request)
    query, action = validation.parse_audit_query(request.query_params, now_us())
    await state.audit.flush()
    page = await state.store.list_audit(name, dataclasses.replace(query, limit=query.limit + 1))
    entries, more = page[: query.limit], len(page) > query.limit
    items = [audit_view(e) for e in entries if action is None or e.action.startswith(action)]
    next_cursor = validation.AuditCursor.encode(entries[-1].entry_id) if more else None
    return JSONResponse({"items": items, "nextCursor": next_cursor})


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
