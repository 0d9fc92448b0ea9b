"""``memory://``: everything in process memory, for tests and experiments.

Job rows go through the same document codec as the durable stores, so the
in-memory store cannot drift from them; every call yields to the event loop
once, so races in the layers above show up here as they would on a network
store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

from sharding import shard_of

from .base import Capability, StorageAdapter
from .errors import AlreadyExists, NotFound, RevisionConflict
from .records import (
    AuditQuery,
    AuditRecord,
    DeliveryQuery,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    OutboxStats,
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
        self._audit: dict[str, dict[str, AuditRecord]] = {}
        self._jobs: dict[_JobKey, bytes] = {}
        # entries by seq - 1; a purged entry is None
        self._logs: dict[_JobKey, list[EventRecord | None]] = {}
        # (namespace, job, version) -> seq of each chunk, by index
        self._chunks: dict[tuple[str, str, int], list[int]] = {}
        self._deliveries: dict[tuple[str, str], DeliveryRecord] = {}
        self._endpoints: dict[tuple[str, str], EndpointRecord] = {}

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

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        await asyncio.sleep(0)
        names = sorted(n for n in self._namespaces if after is None or n > after)
        return [self._namespaces[n] for n in names[:limit]]

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        await asyncio.sleep(0)
        return [k for (ns, _), k in sorted(self._keys.items()) if ns == namespace]

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        await asyncio.sleep(0)
        key = self._keys.get((namespace, key_id))
        if key is None:
            return False
        self._keys[(namespace, key_id)] = dataclasses.replace(key, **changes)  # type: ignore[arg-type]
        return True

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        await asyncio.sleep(0)
        for entry in entries:
            self._audit.setdefault(entry.namespace, {})[entry.entry_id] = entry

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        await asyncio.sleep(0)
        log = self._audit.get(namespace, {})
        found = (log[i] for i in sorted(log, reverse=True))
        return list(itertools.islice((e for e in found if query.matches(e)), query.limit))

    async def _purge_audit(self, now: int, limit: int) -> int:
        await asyncio.sleep(0)
        gone = [
            (ns, i)
            for ns, log in self._audit.items()
            for i, e in log.items()
            if e.expires_at <= now
        ][:limit]
        for ns, entry_id in gone:
            del self._audit[ns][entry_id]
        return len(gone)

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        await asyncio.sleep(0)
        ident = (job.namespace, job.job_id)
        if ident in self._jobs:
            raise AlreadyExists(f"job {job.job_id} exists")
        self._check_new_deliveries(deliveries)
        self._logs[ident] = []
        self._append(ident, events)
        self._jobs[ident] = dumps(job_to_doc(job))
        self._queue(deliveries)

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        await asyncio.sleep(0)
        raw = self._jobs.get((namespace, job_id))
        return job_from_doc(loads(raw)) if raw is not None else None

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        await asyncio.sleep(0)
        ident = (job.namespace, job.job_id)
        self._check_revision(ident, expected_revision, job.created_at)
        self._check_new_deliveries(deliveries)
        self._append(ident, events)
        self._jobs[ident] = dumps(job_to_doc(job))
        self._queue(deliveries)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        await asyncio.sleep(0)
        ident = (namespace, job_id)
        self._check_revision(ident, expected_revision)
        del self._jobs[ident]
        del self._logs[ident]
        for key in [k for k in self._chunks if k[:2] == ident]:
            del self._chunks[key]

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        await asyncio.sleep(0)
        expired = [
            job
            for raw in self._jobs.values()
            if (job := job_from_doc(loads(raw))).expires_at is not None
            and job.expires_at <= now
            and (shards is None or shard_of(job.namespace) in shards)
        ]
        expired.sort(key=lambda j: (j.expires_at, j.namespace, j.job_id))
        return expired[:limit]

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        await asyncio.sleep(0)
        ident = (namespace, job_id)
        raw = self._jobs.get(ident)
        if raw is None or loads(raw)["createdAt"] != created_at:
            return True
        log = self._logs[ident]
        gone = [e for e in log if e is not None][:batch]
        budget = batch - len(gone)
        for event in gone:
            log[event.seq - 1] = None
        owned = [k for k, d in self._deliveries.items() if (d.namespace, d.job_id) == ident]
        for delivery_key in owned[: max(budget, 0)]:
            del self._deliveries[delivery_key]
        if any(e is not None for e in log) or len(owned) > max(budget, 0):
            return False
        del self._jobs[ident]
        del self._logs[ident]
        for chunk_key in [k for k in self._chunks if k[:2] == ident]:
            del self._chunks[chunk_key]
        return True

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        await asyncio.sleep(0)
        log = self._logs.get((namespace, job_id), [])
        found = [e for e in log[max(after_seq, 0) :] if e is not None]
        return found[:limit]

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        await asyncio.sleep(0)
        seqs = self._chunks.get((namespace, job_id, version), [])
        log = self._logs[(namespace, job_id)] if seqs else []
        found = [log[seq - 1] for seq in seqs[max(after_index + 1, 0) :]]
        return [e for e in found if e is not None][:limit]

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        await asyncio.sleep(0)
        seqs = self._chunks.get((namespace, job_id, version), [])
        if 0 <= index < len(seqs):
            return self._logs[(namespace, job_id)][seqs[index] - 1]
        return None  # purged entries read as None too

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        await asyncio.sleep(0)
        jobs = [
            job
            for (ns, _), raw in self._jobs.items()
            if ns == namespace and query.matches(job := job_from_doc(loads(raw)))
        ]
        jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=query.descending)
        return jobs[: query.limit]

    def _check_new_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> None:
        for delivery in deliveries:
            if (delivery.namespace, delivery.delivery_id) in self._deliveries:
                raise AlreadyExists(f"delivery {delivery.delivery_id} exists")

    def _queue(self, deliveries: Sequence[DeliveryRecord]) -> None:
        for delivery in deliveries:
            self._deliveries[(delivery.namespace, delivery.delivery_id)] = delivery

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        await asyncio.sleep(0)
        return self._deliveries.get((namespace, delivery_id))

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        await asyncio.sleep(0)
        rows = [
            d for (ns, _), d in self._deliveries.items() if ns == namespace and query.matches(d)
        ]
        rows.sort(key=lambda d: (d.created_at, d.delivery_id), reverse=True)
        return rows[: query.limit]

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        await asyncio.sleep(0)
        due = sorted(
            (
                d
                for d in self._deliveries.values()
                if d.state is DeliveryState.PENDING
                and d.next_attempt_at <= now
                and (d.lease_until is None or d.lease_until <= now)
                and (shards is None or d.shard in shards)
            ),
            key=lambda d: (d.next_attempt_at, d.namespace, d.delivery_id),
        )[:limit]
        claimed = []
        for delivery in due:
            leased = dataclasses.replace(delivery, lease_owner=owner, lease_until=lease_until)
            self._deliveries[(delivery.namespace, delivery.delivery_id)] = leased
            claimed.append(leased)
        return claimed

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        await asyncio.sleep(0)
        results = []
        for delivery in deliveries:
            key = (delivery.namespace, delivery.delivery_id)
            stored = self._deliveries.get(key)
            if stored is None or stored.lease_owner != owner:
                results.append(False)
                continue
            self._deliveries[key] = delivery
            results.append(True)
        return results

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        await asyncio.sleep(0)
        count = 0
        for delivery_id in delivery_ids:
            stored = self._deliveries.get((namespace, delivery_id))
            if stored is None or (stored.lease_until is not None and stored.lease_until > now):
                continue
            self._deliveries[(namespace, delivery_id)] = dataclasses.replace(
                stored,
                state=DeliveryState.PENDING,
                next_attempt_at=now,
                attempts=0,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
            count += 1
        return count

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        await asyncio.sleep(0)
        pending = [
            d.next_attempt_at
            for d in self._deliveries.values()
            if d.state is DeliveryState.PENDING and (shards is None or d.shard in shards)
        ]
        return OutboxStats(len(pending), min(pending, default=None))

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        await asyncio.sleep(0)
        self._endpoints[(endpoint.namespace, endpoint.url)] = endpoint

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        await asyncio.sleep(0)
        return self._endpoints.get((namespace, url))

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        await asyncio.sleep(0)
        return sorted(
            (e for (ns, _), e in self._endpoints.items() if ns == namespace), key=lambda e: e.url
        )

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
        if not events:
            return
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
