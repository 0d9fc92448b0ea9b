"""Namespaces: their configuration, read through a short-lived cache, and
their webhook signing secrets.

A namespace's configuration is what an admin ``PUT``s (default retention,
default webhook URL, webhook retry schedule) plus its signing secrets, which
the service keeps: one is made when the namespace is created, and a rotation
adds a new one while the previous ones keep signing for a grace period.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from storage_adapters import NamespaceRecord, StorageAdapter
from webhooks import DEFAULT_SCHEDULE, RetryPolicy, new_secret
from webhooks.drainer import NamespaceHooks

from .clock import now_us

__all__ = ["NamespaceDirectory", "active_secrets", "merged_config", "rotated_config"]


def _secret(now: int, value: str | None = None) -> dict[str, Any]:
    return {"secret": value or new_secret(), "createdAt": now, "expiresAt": None}


def active_secrets(config: Mapping[str, Any], now: int) -> list[str]:
    """The secrets that sign now, newest first."""
    return [
        entry["secret"]
        for entry in config.get("webhookSecrets") or ()
        if entry["expiresAt"] is None or entry["expiresAt"] > now
    ]


def merged_config(
    settings: dict[str, Any],
    existing: NamespaceRecord | None,
    explicit_secret: str | None,
    now: int,
) -> dict[str, Any]:
    """A ``PUT``'s settings with the namespace's secrets: kept, replaced by
    ``explicit_secret``, or made for a new namespace."""
    secrets = list(existing.config.get("webhookSecrets") or ()) if existing else []
    if explicit_secret is not None:
        secrets = [_secret(now, explicit_secret)]
    elif not active_secrets({"webhookSecrets": secrets}, now):
        secrets = [_secret(now)]
    return {**settings, "webhookSecrets": secrets}


def rotated_config(config: Mapping[str, Any], now: int, grace: int) -> dict[str, Any]:
    """A new secret first; the ones still active sign for ``grace`` µs more."""
    kept = []
    for entry in config.get("webhookSecrets") or ():
        expires = entry["expiresAt"]
        if expires is not None and expires <= now:
            continue  # long gone
        until = now + grace if expires is None else min(expires, now + grace)
        kept.append({**entry, "expiresAt": until})
    return {**config, "webhookSecrets": [_secret(now), *kept]}


class NamespaceDirectory:
    """Reads namespaces from the store, remembering found ones for ``ttl`` seconds.

    A change made through this node is seen at once; one made through
    another node within ``ttl``.
    """

    def __init__(self, store: StorageAdapter, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[NamespaceRecord, float]] = {}

    async def get(self, name: str) -> NamespaceRecord | None:
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        record = await self.store.get_namespace(name)
        if record is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[name] = (record, time.monotonic() + self.ttl)
        return record

    async def put(self, record: NamespaceRecord) -> None:
        await self.store.put_namespace(record)
        self._cache[record.name] = (record, time.monotonic() + self.ttl)

    async def hooks(self, name: str) -> NamespaceHooks:
        """Signing secrets and retry policy of a namespace, for the drainer."""
        now = now_us()
        record = await self.get(name)
        if record is None:
            return NamespaceHooks((), RetryPolicy())
        secrets = active_secrets(record.config, now)
        if not secrets:
            # A namespace from before secrets existed, or whose secrets all
            # expired: give it one rather than send unsigned webhooks.
            config = merged_config(dict(record.config), record, None, now)
            record = NamespaceRecord(record.name, config, record.created_at, now)
            await self.put(record)
            secrets = active_secrets(config, now)
        schedule = record.config.get("webhookRetrySchedule") or DEFAULT_SCHEDULE
        return NamespaceHooks(tuple(secrets), RetryPolicy(tuple(schedule)))
