"""Bearer authentication and per-namespace authorisation.

Three kinds of credential:

* the root admin token (``AOS_ADMIN_TOKEN``): every action in every namespace;
* namespace keys, ``aos.<namespace>.<keyId>.<secret>``, with one role each,
  an optional expiry, revocable. Only the SHA-256 of the secret is stored
  (the secret has 256 random bits, so a slow hash adds nothing); the
  namespace and key id in the token say which row to compare against, so a
  lookup is one keyed read;
* subscriber tokens (``service/tokens.py``): short-lived JWTs, read-only,
  for one namespace and optionally one job. Keys are accepted only in the
  ``Authorization`` header; tokens also as ``?access_token=`` on ``GET``
  (``EventSource`` cannot send headers).

Roles and what they may do in their namespace:

========== ====== ======== ======== ==========
action     admin  producer consumer subscriber
========== ====== ======== ======== ==========
read         ✓       ✓        ✓         ✓
inspect      ✓       ✓        ✓
cancel       ✓       ✓        ✓
write        ✓       ✓
admin        ✓
========== ====== ======== ======== ==========

A credential never acts outside its namespace (nor a job-scoped token
outside its job): that is ``403`` before anything is looked up, so it learns
nothing about another namespace's jobs. Refused credentials of a namespace
are written to its audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from storage_adapters import KeyRecord, StorageAdapter

from . import tokens
from .clock import now_us
from .ids import new_key_id, valid_job_id, valid_key_id, valid_namespace
from .problems import Problem

if TYPE_CHECKING:
    from .audit import AuditLog
    from .namespaces import NamespaceDirectory

__all__ = ["Action", "Authenticator", "Principal", "Role", "issue_key", "parse_key"]

_KEY_PREFIX = "aos."
_CACHE_SIZE = 10_000


class Role(StrEnum):
    ADMIN = "admin"
    PRODUCER = "producer"
    CONSUMER = "consumer"
    #: a subscriber token (never a key's role)
    SUBSCRIBER = "subscriber"


#: the roles a key may have
KEY_ROLES = (Role.ADMIN, Role.PRODUCER, Role.CONSUMER)


class Action(StrEnum):
    READ = "read"
    #: read webhook deliveries (their URLs and payloads): not for browsers
    INSPECT = "inspect"
    CANCEL = "cancel"
    WRITE = "write"
    ADMIN = "admin"


_ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.PRODUCER: frozenset({Action.READ, Action.INSPECT, Action.CANCEL, Action.WRITE}),
    Role.CONSUMER: frozenset({Action.READ, Action.INSPECT, Action.CANCEL}),
    Role.SUBSCRIBER: frozenset({Action.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the root admin, a key of one namespace, or a token."""

    role: Role
    namespace: str | None  # None: the root admin, every namespace
    key_id: str | None = None
    #: a subscriber token scoped to one job
    job_id: str | None = None
    #: a subscriber token's ``sub`` claim
    subject: str | None = None
    #: when the credential stops working (µs; None: never) — a stream opened
    #: with it ends then
    expires_at: int | None = field(default=None, compare=False)

    @property
    def is_root(self) -> bool:
        return self.namespace is None

    @property
    def actor(self) -> str:
        """Who, as the audit log names it."""
        if self.namespace is None:
            return "root"
        if self.role is Role.SUBSCRIBER:
            return f"token:{self.subject or '-'}"
        return f"key:{self.key_id}"

    @property
    def credential(self) -> str | None:
        """The rate-limit identity (``None``: the root admin, never limited)."""
        if self.namespace is None:
            return None
        if self.role is Role.SUBSCRIBER:
            return f"token:{self.subject or '-'}:{self.job_id or '*'}"
        return f"key:{self.key_id}"

    def authorize(self, namespace: str, action: Action, job_id: str | None = None) -> None:
        """Raise a 403 problem unless this principal may do ``action`` in
        ``namespace`` (on job ``job_id``; ``None``: on the namespace as a whole)."""
        if self.namespace is not None and self.namespace != namespace:
            raise Problem("forbidden", "this credential belongs to another namespace")
        if action not in _ALLOWED[self.role]:
            raise Problem("forbidden", f"a {self.role.value} credential cannot {action.value} here")
        if self.job_id is not None and job_id != self.job_id:
            raise Problem("forbidden", "this token is scoped to another job")


ROOT = Principal(Role.ADMIN, None)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str, str] | None:
    """``(namespace, key_id, secret)`` of a well-formed key, else ``None``."""
    if not token.startswith(_KEY_PREFIX):
        return None
    parts = token[len(_KEY_PREFIX) :].rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        return None
    namespace, key_id, secret = parts
    if not valid_namespace(namespace) or not valid_key_id(key_id) or len(secret) > 128:
        return None
    return namespace, key_id, secret


def issue_key(
    namespace: str,
    role: Role,
    *,
    name: str | None = None,
    expires_at: int | None = None,
    now: int | None = None,
) -> tuple[KeyRecord, str]:
    """A new key record and the token to show once."""
    key_id = new_key_id()
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(
        namespace,
        key_id,
        role.value,
        _hash(secret),
        now if now is not None else now_us(),
        name=name,
        expires_at=expires_at,
    )
    return record, f"{_KEY_PREFIX}{namespace}.{key_id}.{secret}"


class Authenticator:
    def __init__(
        self,
        store: StorageAdapter,
        admin_token: str | None,
        cache_seconds: float,
        *,
        namespaces: NamespaceDirectory | None = None,
        audit: AuditLog | None = None,
        last_used_interval: float = 60.0,
        max_token_lifetime: float = 86_400.0,
        token_leeway: float = tokens.LEEWAY,
    ) -> None:
        self.store = store
        self.namespaces = namespaces
        self.audit = audit
        # compared as digests: equal lengths, so the comparison leaks nothing
        self._admin_digest = _hash(admin_token).encode() if admin_token else None
        self._cache_seconds = cache_seconds
        self._last_used_interval = int(last_used_interval * 1_000_000)
        self._max_token_lifetime = max_token_lifetime
        self._token_leeway = token_leeway
        # token digest -> (principal, trusted until (monotonic), expires_at (µs) or None)
        self._cache: OrderedDict[str, tuple[Principal, float, int | None]] = OrderedDict()
        # (namespace, key id) -> when lastUsedAt was last written (µs)
        self._used: dict[tuple[str, str], int] = {}
        self._touches: set[asyncio.Task[None]] = set()

    async def authenticate(self, conn: HTTPConnection) -> Principal:
        header = conn.headers.get("authorization")
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        else:
            token = conn.query_params.get("access_token") or ""
            if not token:
                raise _unauthorized("send Authorization: Bearer <key>")
            if (
                conn.scope.get("method") not in ("GET", "HEAD")
                or token.startswith(_KEY_PREFIX)
                or token.count(".") != 2
            ):
                # URLs end up in logs and histories: only short-lived tokens go there
                raise _unauthorized(
                    "?access_token= takes a subscriber token on GET; send keys and the "
                    "admin token in the Authorization header"
                )
        digest = _hash(token)
        admin = self._admin_digest
        if header and admin is not None and hmac.compare_digest(digest.encode(), admin):
            return ROOT
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            principal, _, expires_at = cached
            if expires_at is None or expires_at > now_us():
                self._cache.move_to_end(digest)
                if principal.key_id is not None and principal.role is not Role.SUBSCRIBER:
                    self._touch(principal.namespace or "", principal.key_id, None)
                return principal
            del self._cache[digest]
        if token.startswith(_KEY_PREFIX):
            principal, expires_at = await self._key_principal(token)
        else:
            principal, expires_at = await self._token_principal(token)
        self._cache[digest] = (principal, time.monotonic() + self._cache_seconds, expires_at)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def forget(self, namespace: str, key_id: str) -> None:
        """Stop trusting a key this node has cached (it was revoked or changed)."""
        stale = [
            digest
            for digest, (p, _, _) in self._cache.items()
            if p.namespace == namespace and p.key_id == key_id
        ]
        for digest in stale:
            del self._cache[digest]

    def forget_tokens(self, namespace: str) -> None:
        """Stop trusting the subscriber tokens of a namespace this node has
        cached (its subscriber keys changed)."""
        stale = [
            digest
            for digest, (p, _, _) in self._cache.items()
            if p.namespace == namespace and p.role is Role.SUBSCRIBER
        ]
        for digest in stale:
            del self._cache[digest]

    def refused(self, principal: Principal, namespace: str, action: str, detail: str) -> None:
        """Audit a credential used where it may not act (a ``403``)."""
        if self.audit is not None and principal.namespace is not None:
            self.audit.failure(
                principal.namespace,
                "auth.forbidden",
                principal.actor,
                detail,
                requestedNamespace=namespace,
                attempted=action,
            )

    async def _key_principal(self, token: str) -> tuple[Principal, int | None]:
        parsed = parse_key(token)
        if parsed is None:
            raise _unauthorized("the key is not valid")
        namespace, key_id, secret = parsed
        record = await self.store.get_key(namespace, key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, _hash(secret)):
            if self.namespaces is not None and await self.namespaces.get(namespace) is not None:
                # (a made-up namespace gets no audit log)
                self._failed(namespace, f"key:{key_id}", "unknown key or wrong secret")
            raise _unauthorized("the key is not valid")
        now = now_us()
        state = record.state(now)
        if state != "active":
            self._failed(namespace, f"key:{key_id}", f"{state} key")
            raise _unauthorized(f"the key is {state}")
        self._touch(namespace, key_id, record.last_used_at)
        principal = Principal(Role(record.role), namespace, key_id, expires_at=record.expires_at)
        return principal, record.expires_at

    async def _token_principal(self, token: str) -> tuple[Principal, int | None]:
        try:
            namespace, kid = tokens.unverified_namespace(token)
        except tokens.TokenError as exc:
            raise _unauthorized(str(exc)) from None
        if namespace is None or not valid_namespace(namespace) or self.namespaces is None:
            raise _unauthorized("the credential is neither a key nor a subscriber token")
        record = await self.namespaces.get(namespace)
        if record is not None:
            record = self.namespaces.reveal(record)  # HS256 secrets may be stored sealed
        keys = tokens.token_keys(record.config) if record is not None else {}
        try:
            claims = tokens.verify(
                token, keys, kid, int(time.time()), self._max_token_lifetime, self._token_leeway
            )
        except tokens.TokenError as exc:
            if record is not None:
                self._failed(namespace, f"token:{(kid or '-')[:64]}", str(exc))
            raise _unauthorized(str(exc)) from None
        job_id = claims.get("job")
        if job_id is not None and (not isinstance(job_id, str) or not valid_job_id(job_id)):
            raise _unauthorized("the token's job claim is not a job id")
        minted_by = claims.get("mk")
        if minted_by is not None:
            # minted by the service for a key: no longer than the key works
            key = (
                await self.store.get_key(namespace, minted_by)
                if isinstance(minted_by, str) and valid_key_id(minted_by)
                else None
            )
            if key is None or key.state(now_us()) != "active":
                raise _unauthorized("the key that minted this token is revoked or expired")
        subject = claims.get("sub")
        # accepted until exp plus the leeway: that is when it stops working
        expires_at = int((claims["exp"] + self._token_leeway) * 1_000_000)
        principal = Principal(
            Role.SUBSCRIBER,
            namespace,
            # forget(namespace, key) drops the tokens the key minted too
            key_id=minted_by,
            job_id=job_id,
            subject=str(subject)[:128] if subject is not None else None,
            expires_at=expires_at,
        )
        return principal, expires_at

    def _failed(self, namespace: str, actor: str, reason: str) -> None:
        if self.audit is not None:
            self.audit.failure(namespace, "auth.failure", actor, reason)

    def _touch(self, namespace: str, key_id: str, stored: int | None) -> None:
        """Write the key's ``lastUsedAt`` in the background, at most once an interval."""
        now = now_us()
        ident = (namespace, key_id)
        last = self._used.get(ident, stored or 0)
        if now - last < self._last_used_interval:
            return
        self._used[ident] = now
        if len(self._used) > _CACHE_SIZE:
            self._used.clear()
        task = asyncio.get_running_loop().create_task(self._write_used(namespace, key_id, now))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _write_used(self, namespace: str, key_id: str, at: int) -> None:
        try:
            await self.store.update_key(namespace, key_id, {"last_used_at": at})
        except Exception:  # best effort: the next use tries again
            self._used.pop((namespace, key_id), None)

    async def close(self) -> None:
        for task in list(self._touches):
            await asyncio.gather(task, return_exceptions=True)


def _unauthorized(detail: str) -> Problem:
    return Problem("unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="aos"'})
