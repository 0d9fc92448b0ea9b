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

Output chunks are encoded (compressed, digested) before the job is locked.
When a version closes, its SHA-256 is computed from the store in the
background and recorded with a change that appends nothing. Removing a job
(deleted, or expired) goes piece by piece: the job is made to expire first,
so clients no longer see it, then its log and deliveries are purged in
bounded batches, the job row last.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    CorruptData,
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
    VersionRecord,
)
from storage_adapters.base import shielded

from . import lifecycle
from .clock import now_us
from .codec import Codec
from .crypto import inner_codec, seal_append
from .hub import Hub, HubEvent, Topic
from .ids import new_job_id
from .logs import log_event
from .metrics import Metrics
from .namespaces import NamespaceDirectory
from .outbox import with_deliveries
from .outputs import OutputReader
from .views import event_frame, terminal_status

__all__ = ["AppendResult", "JobNotFound", "JobService", "NewJob"]

logger = logging.getLogger("aos.jobs")

_MAX_ATTEMPTS = 16
#: the size to assume for a log entry that is not a chunk, when batching reads
_ENTRY_BYTES = 64 * 1024
#: versions digested at the same time, per node
_DIGEST_CONCURRENCY = 2


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
        codec: Codec,
        outputs: OutputReader,
        max_versions: int,
        default_retention: int | None,
        max_version_bytes: int | None = None,
        purge_batch: int = 500,
        output_interval: float = 1.0,
        on_deliveries: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_us,
        recent_jobs: int = 10_000,
    ) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.namespaces = namespaces
        self.codec = codec
        self.outputs = outputs
        self.purge_batch = purge_batch
        self.max_version_bytes = max_version_bytes
        self.output_interval = int(output_interval * 1_000_000)
        self.on_deliveries = on_deliveries
        self.max_versions = max_versions
        self.default_retention = default_retention
        self.clock = clock
        self._locks = _KeyedLocks()
        #: the last row this node wrote, per job (most recent last)
        self._recent: OrderedDict[Topic, JobRecord] = OrderedDict()
        self._recent_size = recent_jobs
        #: background digests of closed versions, by (namespace, job, version)
        self._digests: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._digest_slots = asyncio.Semaphore(_DIGEST_CONCURRENCY)

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

    async def events_after(self, job: JobRecord, after_seq: int) -> AsyncIterator[EventRecord]:
        """Every committed entry after ``after_seq``, read from the store in
        batches that fit the read budget, chunks as stored."""
        # An open version may still grow a chunk as large as any.
        largest = max(
            _ENTRY_BYTES,
            *(
                v.max_chunk if v.completed_at is not None else self.outputs.max_chunk
                for v in job.versions
            ),
        )
        limit = self.outputs.batch_limit(largest)
        while True:
            batch = await self.store.read_events(job.namespace, job.job_id, after_seq, limit)
            for event in batch:
                job = await self.outputs.refreshed(job, event)  # knows the keys of new versions
                yield await self.outputs.open(job, event)
            if len(batch) < limit:
                return
            after_seq = batch[-1].seq

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
                    await self._purge(existing)
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
        *,
        sha256: str | None = None,
        encoded: lifecycle.Chunk | None = None,
        max_size: int | None = None,
    ) -> AppendResult:
        """Append one chunk; a retry of a stored ``index`` returns the stored one.

        ``sha256`` (of the whole version) makes the chunk the version's last;
        ``encoded`` is ``data`` encoded already.
        """
        chunk = encoded or await self.codec.encode_async(data)
        key = await self.namespaces.chunk_key(namespace)  # None: stored in clear
        try:
            change = await self._mutate(
                namespace,
                job_id,
                lambda job: seal_append(
                    lifecycle.append_chunk(
                        job,
                        chunk,
                        fmt,
                        content_type,
                        self.clock(),
                        index,
                        sha256=sha256,
                        max_size=self.max_version_bytes if max_size is None else max_size,
                    ),
                    key,
                    lambda key_id: self.namespaces.cached_key(namespace, key_id),
                ),
                plain=data,
            )
        except lifecycle.ChunkAlreadyStored as stored:
            event = await self.store.find_chunk(namespace, job_id, stored.version, stored.index)
            if event is None:  # deleted in between
                raise JobNotFound(namespace, job_id) from None
            if inner_codec(event.codec) is not None:
                event = await self.outputs.open(await self.get(namespace, job_id), event)
            same = (
                event.digest == chunk.digest
                if event.digest is not None
                else self.codec.decode(event) == data
            )
            if not same or event.format != fmt.value:
                raise lifecycle.InvalidChange(
                    f"chunk {stored.index} of version {stored.version} is stored with "
                    "different content",
                    "chunk-index-conflict",
                ) from None
            return AppendResult(event, created=False)
        self.metrics.appended_bytes.inc(len(data))
        self.metrics.stored_bytes.inc(len(change.events[-1].data))
        return AppendResult(change.events[-1], created=True)

    async def seal(
        self, namespace: str, job_id: str, version: int, chunks: int, sha256: str
    ) -> JobRecord:
        """Record the digest of a version's ``chunks`` chunks, closing it if open."""
        change = await self._mutate(
            namespace,
            job_id,
            lambda job: lifecycle.seal_version(job, version, chunks, sha256, self.clock()),
        )
        return change.job

    async def delete(self, namespace: str, job_id: str) -> None:
        """Remove a finished job: it expires now, then is purged piece by piece."""
        change = await self._mutate(
            namespace, job_id, lambda job: lifecycle.expire(job, self.clock())
        )
        await self._purge(change.job)
        log_event(logger, "job.deleted", namespace=namespace, jobId=job_id)

    async def purge(self, job: JobRecord) -> None:
        """Remove an expired job, its log and its deliveries (the janitor's work)."""
        if job.expires_at is None or job.expires_at > self.clock():
            raise ValueError(f"job {job.job_id!r} has not expired")
        await self._purge(job)
        log_event(logger, "job.purged", namespace=job.namespace, jobId=job.job_id)

    async def _purge(self, job: JobRecord) -> None:
        topic = (job.namespace, job.job_id)
        self._forget(topic)
        self.hub.close_topic(topic)
        for number in range(1, len(job.versions) + 1):
            task = self._digests.get((job.namespace, job.job_id, number))
            if task is not None:
                task.cancel()
        # Each call is one bounded, atomic step; a crash in between leaves an
        # expired job that the janitor finishes.
        while not await self.store.purge_job(
            job.namespace, job.job_id, job.created_at, self.purge_batch
        ):
            pass
        self.metrics.purged_jobs.inc()

    # -- digests of closed versions ---------------------------------------------------

    def digest_later(self, job: JobRecord, number: int) -> None:
        """Compute and record version ``number``'s SHA-256 in the background,
        unless it is recorded, running, or the version is still open."""
        version = job.version(number)
        key = (job.namespace, job.job_id, number)
        if version is None or version.sha256 is not None or version.completed_at is None:
            return
        if key in self._digests:
            return
        task = asyncio.create_task(self._digest(job, version), name=f"aos-digest-{key}")
        self._digests[key] = task
        task.add_done_callback(lambda _: self._digests.pop(key, None))

    async def _digest(self, job: JobRecord, version: VersionRecord) -> None:
        async with self._digest_slots:
            try:
                sha256 = await self.outputs.digest(job, version)
                await self.seal(job.namespace, job.job_id, version.number, version.chunks, sha256)
            except (JobNotFound, lifecycle.InvalidChange, StoreUnavailable) as exc:
                # Gone, changed, or the store is down: the next read tries again.
                log_event(
                    logger,
                    "version.digest_skipped",
                    namespace=job.namespace,
                    jobId=job.job_id,
                    version=version.number,
                    reason=str(exc),
                )
            except CorruptData as exc:
                log_event(
                    logger,
                    "version.corrupt",
                    logging.ERROR,
                    namespace=job.namespace,
                    jobId=job.job_id,
                    version=version.number,
                    detail=str(exc),
                )
            except Exception:
                logger.exception("digest of version %d of %s failed", version.number, job.job_id)

    async def close(self) -> None:
        """Stop the background digests (a later read starts them again)."""
        tasks = list(self._digests.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _mutate(
        self,
        namespace: str,
        job_id: str,
        compute: Callable[[JobRecord], lifecycle.Change],
        plain: bytes | None = None,
    ) -> lifecycle.Change:
        """Apply ``compute`` to the job and write the result; ``plain``: the
        bytes as appended of the chunk the change stores, if one."""
        topic = (namespace, job_id)
        async with self._locks.hold(topic):
            for _ in range(_MAX_ATTEMPTS):
                # The row this node wrote last saves a read; if another node has
                # written since, the compare-and-set fails and the row is read.
                job = self._alive(self._recent.get(topic)) or await self.get(namespace, job_id)
                change = compute(job)
                if change.job is job:
                    return change  # nothing to do
                try:
                    change = await shielded(self._write(job, change, plain=plain))
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
        *,
        plain: bytes | None = None,
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
        if change.events and self.hub.has_subscribers(topic):
            self.hub.publish(topic, list(_hub_events(change.events, plain)))
        if before is not None:
            for old, new in zip(before.versions, job.versions, strict=False):
                if old.completed_at is None and new.completed_at is not None:
                    self.digest_later(job, new.number)
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


def _hub_events(events: tuple[EventRecord, ...], plain: bytes | None) -> Iterator[HubEvent]:
    for event in events:
        if event.kind is EventKind.CHUNK and plain is not None:
            event = dataclasses.replace(event, data=plain, codec="", digest=None)
        yield HubEvent(event.seq, event_frame(event), terminal_status(event))
