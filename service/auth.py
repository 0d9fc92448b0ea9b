"""Bearer authentication and per-namespace authorisation.

Two kinds of credential:

* the root admin token (``AOS_ADMIN_TOKEN``): every action in every namespace;
* namespace keys, ``aos.<namespace>.<keyId>.<secret>``, with one role each.
  Only the SHA-256 of the secret is stored (the secret has 256 random bits,
  so a slow hash adds nothing); the namespace and key id in the token say
  which row to compare against, so a lookup is one keyed read.

Roles and what they may do in their namespace:

========== ====== ======= ========
action     admin  producer consumer
========== ====== ======= ========
read         ✓       ✓        ✓
cancel       ✓       ✓        ✓
write        ✓       ✓
admin        ✓
========== ====== ======= ========

A key never acts outside its namespace: that is ``403`` before anything is
looked up, so it learns nothing about another namespace's jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import HTTPConnection

from storage_adapters import KeyRecord, StorageAdapter

from .clock import now_us
from .ids import new_key_id, valid_namespace
from .problems import Problem

__all__ = ["Action", "Authenticator", "Principal", "Role", "issue_key", "parse_key"]

_KEY_PREFIX = "aos."
_CACHE_SIZE = 10_000


class Role(StrEnum):
    ADMIN = "admin"
    PRODUCER = "producer"
    CONSUMER = "consumer"


class Action(StrEnum):
    READ = "read"
    CANCEL = "cancel"
    WRITE = "write"
    ADMIN = "admin"


_ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.PRODUCER: frozenset({Action.READ, Action.CANCEL, Action.WRITE}),
    Role.CONSUMER: frozenset({Action.READ, Action.CANCEL}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the root admin, or a key of one namespace."""

    role: Role
    namespace: str | None  # None: the root admin, every namespace
    key_id: str | None = None

    @property
    def is_root(self) -> bool:
        return self.namespace is None

    def authorize(self, namespace: str, action: Action) -> None:
        """Raise a 403 problem unless this principal may do ``action`` in ``namespace``."""
        if self.namespace is not None and self.namespace != namespace:
            raise Problem("forbidden", "this key belongs to another namespace")
        if action not in _ALLOWED[self.role]:
            raise Problem("forbidden", f"a {self.role.value} key cannot {action.value} here")


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
    if not valid_namespace(namespace):
        return None
    return namespace, key_id, secret


def issue_key(namespace: str, role: Role) -> tuple[KeyRecord, str]:
    """A new key record and the token to show once."""
    key_id = new_key_id()
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(namespace, key_id, role.value, _hash(secret), now_us())
    return record, f"{_KEY_PREFIX}{namespace}.{key_id}.{secret}"


class Authenticator:
    def __init__(
        self, store: StorageAdapter, admin_token: str | None, cache_seconds: float
    ) -> None:
        self.store = store
        self._admin_token = admin_token.encode() if admin_token else None
        self._cache_seconds = cache_seconds
        # token digest -> (principal, valid until, monotonic)
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def authenticate(self, conn: HTTPConnection) -> Principal:
        header = conn.headers.get("authorization")
        if not header:
            raise _unauthorized("send Authorization: Bearer <key>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        if self._admin_token is not None and hmac.compare_digest(token.encode(), self._admin_token):
            return ROOT
        return await self._key_principal(token)

    async def _key_principal(self, token: str) -> Principal:
        digest = _hash(token)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(digest)
            return cached[0]
        parsed = parse_key(token)
        if parsed is None:
            raise _unauthorized("the key is not valid")
        namespace, key_id, secret = parsed
        record = await self.store.get_key(namespace, key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, _hash(secret)):
            raise _unauthorized("the key is not valid")
        principal = Principal(Role(record.role), namespace, key_id)
        self._cache[digest] = (principal, time.monotonic() + self._cache_seconds)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal


def _unauthorized(detail: str) -> Problem:
    return Problem("unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="aos"'})
