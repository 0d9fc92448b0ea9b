"""Namespaces: their configuration, read through a short-lived cache, and
their webhook signing secrets and data keys.

A namespace's configuration is what an admin ``PUT``s (default retention,
default webhook URL, webhook retry schedule) plus its signing secrets, which
the service keeps: one is made when the namespace is created, and a rotation
adds a new one while the previous ones keep signing for a grace period.

With encryption at rest on (:mod:`service.crypto`), the configuration also
holds the namespace's data keys (``dataKeys``, wrapped, newest first; never
shown, never dropped), and its secrets are stored sealed
(``enc:v1:<data key id>:…``). Records read from the store and the cache are
as stored; :meth:`NamespaceDirectory.reveal` opens the secrets of one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from storage_adapters import NamespaceRecord, StorageAdapter
from webhooks import DEFAULT_SCHEDULE, RetryPolicy, new_secret
from webhooks.drainer import NamespaceHooks

from .clock import now_us
from .crypto import (
    DataKey,
    DataKeys,
    EncryptionKeyMissing,
    open_secret,
    seal_secret,
    secret_key_id,
)

__all__ = [
    "NamespaceDirectory",
    "RewrapReport",
    "active_secrets",
    "merged_config",
    "rewrap_namespaces",
    "rotated_config",
]

#: namespaces whose current data key is known to be recorded, at most
_RECORDED = 100_000


def _secret(now: int, value: str | None = None) -> dict[str, Any]:
    return {"secret": value or new_secret(), "createdAt": now, "expiresAt": None}


def active_secrets(config: Mapping[str, Any], now: int) -> list[str]:
    """The secrets that sign now, newest first (as the configuration holds them)."""
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
    """A ``PUT``'s settings with the namespace's secrets (kept, replaced by
    ``explicit_secret``, or made for a new namespace) and its data keys."""
    secrets = list(existing.config.get("webhookSecrets") or ()) if existing else []
    if explicit_secret is not None:
        secrets = [_secret(now, explicit_secret)]
    elif not active_secrets({"webhookSecrets": secrets}, now):
        secrets = [_secret(now)]
    merged = {**settings, "webhookSecrets": secrets}
    data_keys = existing.config.get("dataKeys") if existing else None
    if data_keys:
        merged["dataKeys"] = list(data_keys)
    return merged


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


def _data_keys(config: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((config or {}).get("dataKeys") or ())


def _union(
    first: Iterable[Mapping[str, Any]], second: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The entries of ``first``, then those of ``second`` with other ids."""
    out = [dict(e) for e in first]
    ids = {e["id"] for e in out}
    out.extend(dict(e) for e in second if e["id"] not in ids)
    return out


class NamespaceDirectory:
    """Reads namespaces from the store, remembering found ones for ``ttl`` seconds.

    A change made through this node is seen at once; one made through
    another node within ``ttl``. ``keys``: the data keys, when encryption at
    rest is on.
    """

    def __init__(self, store: StorageAdapter, ttl: float, keys: DataKeys | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.keys = keys
        self._cache: dict[str, tuple[NamespaceRecord, float]] = {}
        #: (namespace, data key id) known to be in the namespace's configuration
        self._recorded: set[tuple[str, str]] = set()

    async def get(self, name: str) -> NamespaceRecord | None:
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        record = await self.store.get_namespace(name)
        if record is not None:
            self._remember(record)
        return record

    async def put(self, record: NamespaceRecord) -> NamespaceRecord:
        """Store a namespace's configuration, and return it as stored.

        With encryption on, its secrets are stored sealed, and it keeps every
        data key it had: those of ``record`` and those of the stored row,
        which a concurrent writer may have added since ``record`` was read.
        """
        if self.keys is None:
            for entry in _secret_entries(record.config):
                key_id = secret_key_id(entry["secret"])
                if key_id is not None:  # refused before anything is written
                    raise _no_keys(record.name, key_id)
        else:
            stored = await self.store.get_namespace(record.name)
            config = self._sealed(
                record.name,
                {
                    **record.config,
                    "dataKeys": _union(
                        _data_keys(record.config), _data_keys(stored.config if stored else None)
                    ),
                },
            )
            record = NamespaceRecord(record.name, config, record.created_at, record.updated_at)
        await self.store.put_namespace(record)
        self._remember(record)
        return record

    def reveal(self, record: NamespaceRecord) -> NamespaceRecord:
        """``record`` with its secrets (webhook signing secrets, HS256 subscriber
        keys) in clear, for the admin's view, for signing and for checking
        tokens; :class:`EncryptionKeyMissing` when a key is not here."""
        if not any(secret_key_id(e["secret"]) for e in _secret_entries(record.config)):
            return record
        config = dict(record.config)
        for field in _SECRET_FIELDS:
            if config.get(field):
                config[field] = [
                    {**e, "secret": self._open_secret(record, e["secret"])}
                    if "secret" in e and secret_key_id(e["secret"])
                    else e
                    for e in config[field]
                ]
        return NamespaceRecord(record.name, config, record.created_at, record.updated_at)

    async def hooks(self, name: str) -> NamespaceHooks:
        """Signing secrets and retry policy of a namespace, for the drainer."""
        now = now_us()
        record = await self.get(name)
        if record is None:
            return NamespaceHooks((), RetryPolicy())
        if not active_secrets(record.config, now):
            # A namespace from before secrets existed, or whose secrets all
            # expired: give it one rather than send unsigned webhooks.
            config = merged_config(dict(record.config), record, None, now)
            record = await self.put(NamespaceRecord(record.name, config, record.created_at, now))
        secrets = active_secrets(self.reveal(record).config, now)
        schedule = record.config.get("webhookRetrySchedule") or DEFAULT_SCHEDULE
        return NamespaceHooks(tuple(secrets), RetryPolicy(tuple(schedule)))

    # -- data keys --------------------------------------------------------------

    async def chunk_key(self, name: str) -> DataKey | None:
        """The data key to seal new output of ``name`` with (``None``:
        encryption is off), recorded in its configuration first."""
        if self.keys is None:
            return None
        key = self.keys.current(name)
        if (name, key.id) in self._recorded:
            return key
        record = await self.get(name)
        if record is not None and all(e["id"] != key.id for e in _data_keys(record.config)):
            record = await self.store.get_namespace(name)  # the cache may be behind
            if record is not None and all(e["id"] != key.id for e in _data_keys(record.config)):
                record = await self.put(record)
        if record is not None:
            if len(self._recorded) >= _RECORDED:
                self._recorded.clear()
            self._recorded.add((name, key.id))
        return key

    def cached_key(self, name: str, key_id: str) -> DataKey:
        """Data key ``key_id`` of ``name`` without reading the store."""
        if self.keys is None:
            raise _no_keys(name, key_id)
        cached = self._cache.get(name)
        return self.keys.resolve(name, key_id, _data_keys(cached[0].config if cached else None))

    async def data_key(self, name: str, key_id: str) -> DataKey:
        """Data key ``key_id`` of ``name``, to open what it sealed."""
        if self.keys is None:
            raise _no_keys(name, key_id)
        key = self.keys.cached(name, key_id)
        if key is not None:
            return key
        record = await self.get(name)
        try:
            return self.keys.resolve(name, key_id, _data_keys(record.config if record else None))
        except EncryptionKeyMissing:
            record = await self.store.get_namespace(name)  # made since the cached read?
            return self.keys.resolve(name, key_id, _data_keys(record.config if record else None))

    def _sealed(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the current data key recorded and its secrets sealed."""
        assert self.keys is not None
        key = self.keys.current(name)
        entries = config["dataKeys"]
        if all(e["id"] != key.id for e in entries):
            entries.insert(0, self.keys.wrap(name, key, now_us()))
        for field in _SECRET_FIELDS:
            if config.get(field):
                config[field] = [
                    {**e, "secret": seal_secret(key, name, e["secret"])}
                    if "secret" in e and not secret_key_id(e["secret"])
                    else e
                    for e in config[field]
                ]
        return config

    def _open_secret(self, record: NamespaceRecord, value: str) -> str:
        key_id = secret_key_id(value)
        assert key_id is not None
        if self.keys is None:
            raise _no_keys(record.name, key_id)
        key = self.keys.resolve(record.name, key_id, _data_keys(record.config))
        return open_secret(key, record.name, value)

    def _remember(self, record: NamespaceRecord) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[record.name] = (record, time.monotonic() + self.ttl)


#: the configuration fields whose entries may hold a ``secret`` to seal
_SECRET_FIELDS = ("webhookSecrets", "subscriberKeys")


def _secret_entries(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [e for field in _SECRET_FIELDS for e in config.get(field) or () if "secret" in e]


def _no_keys(name: str, key_id: str) -> EncryptionKeyMissing:
    return EncryptionKeyMissing(
        f"namespace {name!r} has data encrypted with data key {key_id!r}, and this node has "
        "no master keys (set AOS_MASTER_KEYS or AOS_MASTER_KEY_FILE)"
    )


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """What :func:`rewrap_namespaces` did."""

    primary: str
    namespaces: int
    #: namespaces whose configuration was written
    updated: int
    #: data keys wrapped again with the primary
    rewrapped: int
    #: webhook secrets stored in clear before, sealed now
    sealed_secrets: int
    #: namespaces whose data keys no master key here unwraps (left as they were)
    failed: tuple[str, ...]


async def rewrap_namespaces(store: StorageAdapter, keys: DataKeys, page: int = 100) -> RewrapReport:
    """Wrap every namespace's data keys with the primary master key (and seal
    secrets still stored in clear), so the other master keys can be retired.

    Each namespace is read again right before it is written, and its data keys
    are merged with those stored then, so a key made meanwhile is kept.
    """
    directory = NamespaceDirectory(store, ttl=0, keys=keys)
    counts = {"namespaces": 0, "updated": 0, "rewrapped": 0, "sealed": 0}
    failed: list[str] = []
    after: str | None = None
    while True:
        batch = await store.list_namespaces(after, page)
        for listed in batch:
            counts["namespaces"] += 1
            record = await store.get_namespace(listed.name)
            if record is None:
                continue  # deleted meanwhile
            try:
                entries, rewrapped = keys.rewrap(record.name, _data_keys(record.config))
            except EncryptionKeyMissing:
                failed.append(record.name)
                continue
            plain = sum(
                1
                for e in record.config.get("webhookSecrets") or ()
                if secret_key_id(e["secret"]) is None
            )
            current = keys.current(record.name).id
            if not rewrapped and not plain and any(e["id"] == current for e in entries):
                continue
            await directory.put(
                NamespaceRecord(
                    record.name,
                    {**record.config, "dataKeys": entries},
                    record.created_at,
                    record.updated_at,
                )
            )
            counts["updated"] += 1
            counts["rewrapped"] += rewrapped
            counts["sealed"] += plain
        if len(batch) < page:
            break
        after = batch[-1].name
    return RewrapReport(
        keys.masters.primary.id,
        counts["namespaces"],
        counts["updated"],
        counts["rewrapped"],
        counts["sealed"],
        tuple(failed),
    )
