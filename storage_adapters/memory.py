"""``memory://``: everything in process memory, for tests and experiments.

Job rows go through the same document codec as the durable stores, so the
in-memory store cannot drift from them; every call yields to the event loop
once, so races in the layers above show up here as they would on a network
store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

from .base import Capability, StorageAdapter
from .errors import AlreadyExists, NotFound, RevisionConflict
from .records import (
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    dumps,
    job_from_doc,
    job_to_doc,
    loads,
)

__all__ = ["MemoryAdapter"]

_JobKey = tuple[str, str]


class MemoryAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.TRANSACTIONS, Capability.EPHEMERAL}
    )

    async def _open(self) -> None:
        self._namespaces: dict[str, NamespaceRecord] = {}
        self._keys: dict[tuple[str, str], KeyRecord] = {}
        self._jobs: dict[_JobKey, bytes] = {}
        self._logs: dict[_JobKey, list[EventRecord]] = {}
        # (namespace, job, version) -> seq of each chunk, by index
        self._chunks: dict[tuple[str, str, int], list[int]] = {}

    async def _close(self) -> None:
        pass

    async def _migrate(self, apply: bool) -> list[int]:
        return []

    async def _ping(self) -> None:
        await asyncio.sleep(0)

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await asyncio.sleep(0)
        self._namespaces[namespace.name] = namespace

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        await asyncio.sleep(0)
        return self._namespaces.get(name)

    async def _create_key(self, key: KeyRecord) -> None:
        await asyncio.sleep(0)
        ident = (key.namespace, key.key_id)
        if ident in self._keys:
            raise AlreadyExists(f"key {key.key_id} exists")
        self._keys[ident] = key

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        await asyncio.sleep(0)
        return self._keys.get((namespace, key_id))

    async def _create_job(self, job: JobRecord, events: Sequence[EventRecord]) -> None:
        await asyncio.sleep(0)
        ident = (job.namespace, job.job_id)
        if ident in self._jobs:
            raise AlreadyExists(f"job {job.job_id} exists")
        self._logs[ident] = []
        self._append(ident, events)
        self._jobs[ident] = dumps(job_to_doc(job))

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        await asyncio.sleep(0)
        raw = self._jobs.get((namespace, job_id))
        return job_from_doc(loads(raw)) if raw is not None else None

    async def _update_job(
        self, job: JobRecord, events: Sequence[EventRecord], expected_revision: int
    ) -> None:
        await asyncio.sleep(0)
        ident = (job.namespace, job.job_id)
        self._check_revision(ident, expected_revision, job.created_at)
        self._append(ident, events)
        self._jobs[ident] = dumps(job_to_doc(job))

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        await asyncio.sleep(0)
        ident = (namespace, job_id)
        self._check_revision(ident, expected_revision)
        del self._jobs[ident]
        del self._logs[ident]
        for key in [k for k in self._chunks if k[:2] == ident]:
            del self._chunks[key]

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        await asyncio.sleep(0)
        log = self._logs.get((namespace, job_id), [])
        start = max(after_seq, 0)
        return log[start : start + limit]

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        await asyncio.sleep(0)
        seqs = self._chunks.get((namespace, job_id, version), [])
        log = self._logs[(namespace, job_id)] if seqs else []
        start = max(after_index + 1, 0)
        return [log[seq - 1] for seq in seqs[start : start + limit]]

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        await asyncio.sleep(0)
        seqs = self._chunks.get((namespace, job_id, version), [])
        if 0 <= index < len(seqs):
            return self._logs[(namespace, job_id)][seqs[index] - 1]
        return None

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        await asyncio.sleep(0)
        jobs = [
            job
            for (ns, _), raw in self._jobs.items()
            if ns == namespace and query.matches(job := job_from_doc(loads(raw)))
        ]
        jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=query.descending)
        return jobs[: query.limit]

    def _check_revision(
        self, ident: _JobKey, expected_revision: int, created_at: int | None = None
    ) -> None:
        raw = self._jobs.get(ident)
        if raw is None:
            raise NotFound(f"job {ident[1]} does not exist")
        stored = loads(raw)
        same_job = created_at is None or stored["createdAt"] == created_at
        if stored["revision"] != expected_revision or not same_job:
            raise RevisionConflict(f"job {ident[1]} moved past revision {expected_revision}")

    def _append(self, ident: _JobKey, events: Sequence[EventRecord]) -> None:
        """Check the whole batch, then apply it: a write is all or nothing."""
        log = self._logs[ident]
        if events[0].seq != len(log) + 1:
            raise RevisionConflict(f"log of job {ident[1]} is at seq {len(log)}")
        next_index: dict[int, int] = {}
        for event in events:
            if event.kind is EventKind.CHUNK:
                expected = next_index.get(event.version)
                if expected is None:
                    expected = len(self._chunks.get((*ident, event.version), []))
                if event.index != expected:
                    raise ValueError(f"chunk index {event.index}, expected {expected}")
                next_index[event.version] = expected + 1
        for event in events:
            log.append(event)
            if event.kind is EventKind.CHUNK:
                self._chunks.setdefault((*ident, event.version), []).append(event.seq)
