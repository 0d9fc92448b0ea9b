"""Namespace configurations, read through a short-lived cache."""

from __future__ import annotations

import time

from storage_adapters import NamespaceRecord, StorageAdapter

__all__ = ["NamespaceDirectory"]


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
