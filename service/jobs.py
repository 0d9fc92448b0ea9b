"""The job service: the state machine applied to the store, then fanned out.

Every change follows one path: read the job, compute the next row and its log
entries (:mod:`service.lifecycle`), write both with a compare-and-set on the
revision, then publish the entries to the hub. The row this node wrote last
stands in for the read (a bounded cache); the compare-and-set makes that safe,
since a row that another node has changed since fails it and is read again. Changes to one job are
serialised on this node by a per-job lock, so local writers never race; a
writer on another node makes the compare-and-set fail, and the change is
computed again from the fresh row. Once the write has started it is shielded
from cancellation, so a client that hangs up never leaves a change written but
unpublished.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from storage_adapters import (
    AlreadyExists,
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    NamespaceRecord,
    NotFound,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
    StoreUnavailable,
)
from storage_adapters.base import shielded

from . import lifecycle
from .clock import now_us
from .hub import Hub, HubEvent, Topic
from .ids import new_job_id
from .logs import log_event
from .metrics import Metrics
from .namespaces import NamespaceDirectory
from .outbox import with_deliveries
from .views import event_frame, terminal_status

__all__ = ["AppendResult", "JobNotFound", "JobService", "NewJob"]

logger = logging.getLogger("aos.jobs")

_MAX_ATTEMPTS = 16
_READ_BATCH = 256


class JobNotFound(Exception):
    def __init__(self, namespace: str, job_id: str) -> None:
        super().__init__(f"job {job_id!r} does not exist in namespace {namespace!r}")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated ``POST /jobs`` body."""

    job_id: str | None
    metadata: dict[str, Any]
    webhook_url: str | None
    ttl: int | None

    def fingerprint(self) -> str:
        """Identifies the request, so a retry with the same body is recognised."""
        body = {"metadata": self.metadata, "webhookUrl": self.webhook_url, "ttl": self.ttl}
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class AppendResult:
    event: EventRecord
    created: bool


class _KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Topic, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Topic) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class JobService:
    def __init__(
        self,
        store: StorageAdapter,
        hub: Hub,
        metrics: Metrics,
        *,
        namespaces: NamespaceDirectory,
        max_versions: int,
        default_retention: int | None,
        output_interval: float = 1.0,
        on_deliveries: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_us,
        recent_jobs: int = 10_000,
    ) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.namespaces = namespaces
        self.output_interval = int(output_interval * 1_000_000)
        self.on_deliveries = on_deliveries
        self.max_versions = max_versions
        self.default_retention = default_retention
        self.clock = clock
        self._locks = _KeyedLocks()
        #: the last row this node wrote, per job (most recent last)
        self._recent: OrderedDict[Topic, JobRecord] = OrderedDict()
        self._recent_size = recent_jobs

    # -- reads ---------------------------------------------------------------

    def _alive(self, job: JobRecord | None) -> JobRecord | None:
        if job is not None and job.expires_at is not None and job.expires_at <= self.clock():
            return None
        return job

    async def get(self, namespace: str, job_id: str) -> JobRecord:
        job = self._alive(await self.store.get_job(namespace, job_id))
        if job is None:
            raise JobNotFound(namespace, job_id)
        return job

    async def find(self, namespace: str, job_id: str) -> JobRecord | None:
        return self._alive(await self.store.get_job(namespace, job_id))

    async def list(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        return await self.store.list_jobs(namespace, query)

    async def events_after(
        self, namespace: str, job_id: str, after_seq: int
    ) -> AsyncIterator[EventRecord]:
        """Every committed entry after ``after_seq``, read from the store in batches."""
        while True:
            batch = await self.store.read_events(namespace, job_id, after_seq, _READ_BATCH)
            for event in batch:
                yield event
            if len(batch) < _READ_BATCH:
                return
            after_seq = batch[-1].seq

    async def output_chunks(self, job: JobRecord, version: int) -> AsyncIterator[EventRecord]:
        """The chunks of ``version`` as the job row saw them, in order.

        Chunks appended after ``job`` was read are left out, so the bytes match
        the version's recorded size.
        """
        record = job.version(version)
        if record is None:
            return
        after = -1
        while after + 1 < record.chunks:
            limit = min(_READ_BATCH, record.chunks - after - 1)
            batch = await self.store.read_chunks(job.namespace, job.job_id, version, after, limit)
            if not batch:
                return
            for chunk in batch:
                yield chunk
            after = batch[-1].index

    # -- writes --------------------------------------------------------------

    async def create(self, namespace: NamespaceRecord, request: NewJob) -> tuple[JobRecord, bool]:
        """Create the job; ``(job, False)`` when the same request created it before.

        Raises :class:`lifecycle.InvalidChange` when the id is taken by a job
        created with a different body.
        """
        job_id = request.job_id or new_job_id()
        fingerprint = request.fingerprint()
        ttl = request.ttl
        if ttl is None:
            retention = namespace.config.get("defaultRetentionPolicy") or {}
            ttl = retention.get("ttl", self.default_retention)
        topic = (namespace.name, job_id)
        async with self._locks.hold(topic):
            for _ in range(_MAX_ATTEMPTS):
                # Insert first: a new id (the common case) costs one write and no read.
                change = lifecycle.new_job(
                    namespace=namespace.name,
                    job_id=job_id,
                    now=self.clock(),
                    fingerprint=fingerprint,
                    metadata=request.metadata,
                    webhook_url=request.webhook_url,
                    ttl=ttl,
                )
                try:
                    change = await shielded(self._write(None, change, namespace))
                except AlreadyExists:
                    pass
                else:
                    return change.job, True
                existing = await self.store.get_job(namespace.name, job_id)
                if existing is None:
                    continue  # deleted in between: try again
                if self._alive(existing) is None:
                    # Expired but not purged yet: it no longer exists for clients.
                    try:
                        await self.store.delete_job(namespace.name, job_id, existing.revision)
                    except (RevisionConflict, NotFound):
                        pass
                    self._forget(topic)
                    continue
                if existing.fingerprint != fingerprint:
                    raise lifecycle.InvalidChange(
                        f"job {job_id!r} exists and was created with a different body",
                        "job-exists",
                    )
                return existing, False
        raise StoreUnavailable("the job changed too often to create it; retry")

    async def update_status(
        self, namespace: str, job_id: str, patch: lifecycle.StatusPatch
    ) -> JobRecord:
        change = await self._mutate(
            namespace, job_id, lambda job: lifecycle.apply_patch(job, patch, self.clock())
        )
        return change.job

    async def cancel(self, namespace: str, job_id: str) -> JobRecord:
        change = await self._mutate(
            namespace, job_id, lambda job: lifecycle.cancel(job, self.clock())
        )
        return change.job

    async def start_version(self, namespace: str, job_id: str) -> JobRecord:
        change = await self._mutate(
            namespace,
            job_id,
            lambda job: lifecycle.start_version(job, self.clock(), self.max_versions),
        )
        return change.job

    async def append(
        self,
        namespace: str,
        job_id: str,
        data: bytes,
        fmt: OutputFormat,
        content_type: str,
        index: int | None = None,
    ) -> AppendResult:
        """Append one chunk; a retry of a stored ``index`` returns the stored one."""
        try:
            change = await self._mutate(
                namespace,
                job_id,
                lambda job: lifecycle.append_chunk(
                    job, data, fmt, content_type, self.clock(), index
                ),
            )
        except lifecycle.ChunkAlreadyStored as stored:
            chunk = await self.store.find_chunk(namespace, job_id, stored.version, stored.index)
            if chunk is None:  # deleted in between
                raise JobNotFound(namespace, job_id) from None
            if chunk.data != data or chunk.format != fmt.value:
                raise lifecycle.InvalidChange(
                    f"chunk {stored.index} of version {stored.version} is stored with "
                    "different content",
                    "chunk-index-conflict",
                ) from None
            return AppendResult(chunk, created=False)
        self.metrics.appended_bytes.inc(len(data))
        return AppendResult(change.events[-1], created=True)

    async def delete(self, namespace: str, job_id: str) -> None:
        topic = (namespace, job_id)
        async with self._locks.hold(topic):
            for _ in range(_MAX_ATTEMPTS):
                job = await self.get(namespace, job_id)
                if not job.terminal:
                    raise lifecycle.InvalidChange(
                        f"the job is {job.status.value}; cancel it or let it finish before "
                        "deleting it",
                        "job-not-terminal",
                    )
                try:
                    await self.store.delete_job(namespace, job_id, job.revision)
                except RevisionConflict:
                    continue
                finally:
                    self._forget(topic)
                self.hub.close_topic(topic)
                log_event(logger, "job.deleted", namespace=namespace, jobId=job_id)
                return
        raise StoreUnavailable("the job changed too often to delete it; retry")

    async def _mutate(
        self,
        namespace: str,
        job_id: str,
        compute: Callable[[JobRecord], lifecycle.Change],
    ) -> lifecycle.Change:
        topic = (namespace, job_id)
        async with self._locks.hold(topic):
            for _ in range(_MAX_ATTEMPTS):
                # The row this node wrote last saves a read; if another node has
                # written since, the compare-and-set fails and the row is read.
                job = self._alive(self._recent.get(topic)) or await self.get(namespace, job_id)
                change = compute(job)
                if not change.events:
                    return change
                try:
                    change = await shielded(self._write(job, change))
                except (RevisionConflict, NotFound):
                    self._forget(topic)
                    continue
                return change
        raise StoreUnavailable("the job changed too often to apply the change; retry")

    def _remember(self, job: JobRecord) -> None:
        topic = (job.namespace, job.job_id)
        self._recent[topic] = job
        self._recent.move_to_end(topic)
        if len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)

    def _forget(self, topic: Topic) -> None:
        self._recent.pop(topic, None)

    async def _write(
        self,
        before: JobRecord | None,
        change: lifecycle.Change,
        namespace: NamespaceRecord | None = None,
    ) -> lifecycle.Change:
        """Write the change with the webhooks it queues, then publish and account
        for it. Returns the change as written."""
        if namespace is None:
            namespace = await self.namespaces.get(change.job.namespace)
        change, deliveries = with_deliveries(
            before, change, namespace, self.clock(), self.output_interval
        )
        job = change.job
        if before is None:
            await self.store.create_job(job, change.events, deliveries)
        else:
            await self.store.update_job(job, change.events, before.revision, deliveries)
        self._remember(job)
        if deliveries:
            self.on_deliveries()
        topic = (job.namespace, job.job_id)
        if self.hub.has_subscribers(topic):
            self.hub.publish(topic, list(_hub_events(change.events)))
        for event in change.events:
            self.metrics.events_of(event.kind.value).inc()
            if event.kind is EventKind.STATUS:
                self._log_transition(job, event)
        return change

    def _log_transition(self, job: JobRecord, event: EventRecord) -> None:
        status = _status_of(event)
        self.metrics.jobs_of(status).inc()
        name = {
            "Queued": "job.created",
            "Running": "job.started",
            "Succeeded": "job.completed",
            "Failed": "job.failed",
            "Cancelled": "job.cancelled",
        }[status]
        fields: dict[str, Any] = {
            "namespace": job.namespace,
            "jobId": job.job_id,
            "status": status,
            "seq": event.seq,
        }
        if status == "Failed" and job.error is not None:
            fields["error"] = job.error.get("message")
        log_event(logger, name, **fields)


def _status_of(event: EventRecord) -> str:
    status: str = orjson.loads(event.data)["status"]
    return status


def _hub_events(events: tuple[EventRecord, ...]) -> Iterator[HubEvent]:
    for event in events:
        yield HubEvent(event.seq, event_frame(event), terminal_status(event))
