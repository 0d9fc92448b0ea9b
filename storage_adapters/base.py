"""The ``StorageAdapter`` contract.

Every store implements the same small set of primitives, chosen so that each
of SQLite, PostgreSQL, MySQL, Cassandra, MongoDB and DynamoDB does them well:

* atomic writes within one job: a job row together with the log entries the
  change appends (one partition, one document, or one transaction);
* conditional create of a job, and compare-and-set on its ``revision``;
* range reads of the log by ``(namespace, job, seq)`` and of a version's
  chunks by ``(namespace, job, version, index)``;
* keyset-paginated listing of one namespace;
* the webhook outbox: delivery rows written in the same atomic step as the
  job change that causes them, claimed in batches under a lease, finished
  only by the lease holder;
* nothing ever spans two jobs.

The public methods here check the caller's side of the contract and translate
driver errors (see :mod:`storage_adapters.errors`); the adapters implement the
``_underscored`` methods. A store's extra abilities are declared in
:attr:`StorageAdapter.capabilities`, never silently assumed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import ConfigurationError, StoreError, StoreUnavailable
from .records import (
    KEY_MUTABLE_FIELDS,
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
)

__all__ = ["Capability", "StorageAdapter", "StoreURL", "shielded"]

T = TypeVar("T")


async def shielded(work: Awaitable[T]) -> T:
    """Await ``work`` so that cancelling the caller does not cancel it.

    On cancellation the caller still waits for ``work`` to finish (so locks
    it holds are not released under it) and then re-raises the cancellation.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # the caller is gone; mark the outcome as seen
        raise


class Capability(StrEnum):
    """What a store can do beyond the contract."""

    #: writes of several rows commit together in one transaction
    TRANSACTIONS = "transactions"
    #: the store expires rows on its own (a backstop for the janitor)
    NATIVE_TTL = "native-ttl"
    #: data is lost when the process ends (tests only)
    EPHEMERAL = "ephemeral"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed ``AOS_STORAGE_URL``."""

    raw: str
    scheme: str
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None
    path: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        parts = urlsplit(url)
        if not parts.scheme:
            raise ConfigurationError(f"storage URL {url!r} has no scheme (like sqlite:///aos.db)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"storage URL {url!r} has an invalid port") from exc
        path = unquote(parts.path)
        if parts.scheme.startswith("sqlite"):
            # sqlite:///rel/path -> "rel/path"; sqlite:////abs/path -> "/abs/path"
            path = path[1:] if path.startswith("/") else path
        return cls(
            raw=url,
            scheme=parts.scheme.lower(),
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            path=path,
            options=dict(parse_qsl(parts.query, keep_blank_values=True)),
        )

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.raw)
        if parts.password is None:
            return self.raw
        netloc = parts.netloc.rpartition("@")
        userinfo = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[2]}"))


def _check_new_deliveries(job: JobRecord, deliveries: Sequence[DeliveryRecord]) -> None:
    for delivery in deliveries:
        if (delivery.namespace, delivery.job_id) != (job.namespace, job.job_id):
            raise ValueError("a job write queues deliveries of that job only")
        if delivery.state is not DeliveryState.PENDING or delivery.lease_owner is not None:
            raise ValueError("a new delivery is pending and not leased")


def _check_new_events(job: JobRecord, events: Sequence[EventRecord]) -> None:
    """The events end at ``job.last_seq`` and are contiguous."""
    if not events:
        raise ValueError("a job write appends at least one event")
    first = job.last_seq - len(events) + 1
    for offset, event in enumerate(events):
        if event.seq != first + offset:
            raise ValueError(
                f"event seqs must be contiguous and end at last_seq={job.last_seq}; "
                f"got {[e.seq for e in events]}"
            )
        if event.kind is EventKind.CHUNK and (event.version < 1 or event.index < 0):
            raise ValueError("a chunk event needs its version and index")


class StorageAdapter(abc.ABC):
    """Durable state of the service: namespaces, keys, jobs and their logs."""

    #: URL schemes this adapter serves
    schemes: ClassVar[tuple[str, ...]]
    #: abilities beyond the contract
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: the largest chunk (bytes as stored) one write can carry; ``None``: no limit
    #: beyond the service's own (the service refuses to start with larger
    #: ``AOS_MAX_CHUNK_BYTES``/``AOS_UPLOAD_CHUNK_BYTES``)
    max_chunk_bytes: ClassVar[int | None] = None

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        """``pool_size``: connections at most, for stores that pool them (a URL
        option ``pool_size`` overrides it)."""
        self.url = url
        try:
            self.pool_size = int(url.options.get("pool_size", pool_size))
        except ValueError as exc:
            raise ConfigurationError(f"pool_size must be an integer: {exc}") from exc
        if self.pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1")

    # -- lifecycle ---------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> list[int]:
        """Connect, and bring the schema up to date (``migrate``: the versions
        applied are returned) or check that it is.

        Raises :class:`ConfigurationError` when ``migrate`` is off and the
        schema is behind: the service must not run on a schema it does not know.
        """
        with self._translated():
            await self._open()
            try:
                pending = await self._migrate(apply=migrate)
            except BaseException:
                await self._close()
                raise
        if pending and not migrate:
            await self.close()
            raise ConfigurationError(
                f"the {self.url.scheme} schema lacks migrations {pending}; run `aos migrate`"
            )
        return pending if migrate else []

    async def close(self) -> None:
        with self._translated():
            await self._close()

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers a trivial query."""
        with self._translated():
            await self._ping()

    # -- namespaces and keys ----------------------------------------------

    async def put_namespace(self, namespace: NamespaceRecord) -> None:
        """Create or replace a namespace's configuration."""
        with self._translated():
            await self._put_namespace(namespace)

    async def get_namespace(self, name: str) -> NamespaceRecord | None:
        with self._translated():
            return await self._get_namespace(name)

    async def create_key(self, key: KeyRecord) -> None:
        """Store a new API key; :class:`AlreadyExists` if its id is taken."""
        with self._translated():
            await self._create_key(key)

    async def get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        with self._translated():
            return await self._get_key(namespace, key_id)

    async def list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        """Namespaces in name order, those after ``after`` (exclusive), at most ``limit``."""
        with self._translated():
            return await self._list_namespaces(after, limit)

    async def list_keys(self, namespace: str) -> list[KeyRecord]:
        """Every key of a namespace, revoked and expired ones too, in key id order."""
        with self._translated():
            return await self._list_keys(namespace)

    async def update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        """Set some of a key's :data:`KEY_MUTABLE_FIELDS`, leaving the others as
        they are (a concurrent update of another field is not lost). ``False``
        when there is no such key — and then nothing is written."""
        unknown = set(changes) - KEY_MUTABLE_FIELDS
        if unknown or not changes:
            raise ValueError(f"update_key changes {sorted(unknown) or 'nothing'}")
        with self._translated():
            return await self._update_key(namespace, key_id, changes)

    async def namespace_usage(self, namespace: str) -> tuple[int, int]:
        """``(jobs, stored bytes)`` of a namespace: every job not yet purged and
        the bytes of its output as stored. A scan of the namespace's jobs."""
        jobs = stored = 0
        query = JobQuery(limit=500, descending=False)
        while True:
            page = await self.list_jobs(namespace, query)
            jobs += len(page)
            stored += sum(v.stored_size for job in page for v in job.versions)
            if len(page) < query.limit:
                return jobs, stored
            query = dataclasses.replace(query, after=(page[-1].created_at, page[-1].job_id))

    # -- audit log ---------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditRecord]) -> None:
        """Store audit entries (of any namespaces). Appending an entry whose id
        is already stored again is harmless (a retried batch)."""
        if entries:
            with self._translated():
                await self._append_audit(entries)

    async def list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        """A page of a namespace's audit log, newest (largest id) first."""
        with self._translated():
            return await self._list_audit(namespace, query)

    async def purge_audit(self, now: int, limit: int) -> int:
        """Remove up to ``limit`` entries whose ``expires_at`` is at or before
        ``now``; how many went. Stores that expire entries natively may remove
        nothing here (``list_audit`` hides expired entries either way)."""
        with self._translated():
            return await self._purge_audit(now, limit)

    # -- jobs --------------------------------------------------------------

    async def create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord] = (),
    ) -> None:
        """Insert a new job with the first entries of its log and the webhook
        deliveries they cause, atomically.

        Raises :class:`AlreadyExists` when the namespace holds the job id.
        """
        if job.revision != 1:
            raise ValueError("a new job starts at revision 1")
        if events and events[0].seq != 1:
            raise ValueError("a new job's log starts at seq 1")
        _check_new_events(job, events)
        _check_new_deliveries(job, deliveries)
        with self._translated():
            await self._create_job(job, events, deliveries)

    async def get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        with self._translated():
            return await self._get_job(namespace, job_id)

    async def update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord] = (),
    ) -> None:
        """Replace the job row and append ``events`` to its log, atomically,
        if the stored row is still ``expected_revision`` of the same job (the
        same ``created_at``: a job deleted and created again never matches).

        The webhook ``deliveries`` the change causes are queued in the same
        atomic step. A change with no ``events`` (a digest recorded, an expiry
        set) keeps ``last_seq``. Raises :class:`RevisionConflict` when the revision moved,
        :class:`NotFound` when the job is gone. Either way nothing is written.
        """
        if job.revision != expected_revision + 1:
            raise ValueError("an update moves the revision forward by exactly one")
        if events:
            _check_new_events(job, events)
        _check_new_deliveries(job, deliveries)
        with self._translated():
            await self._update_job(job, events, expected_revision, deliveries)

    async def delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        """Remove the job, its log and its output if the revision still matches."""
        with self._translated():
            await self._delete_job(namespace, job_id, expected_revision)

    async def expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None = None
    ) -> list[JobRecord]:
        """Jobs whose ``expires_at`` is at or before ``now``, earliest first."""
        if limit < 1:
            raise ValueError("limit must be positive")
        if shards is not None and not shards:
            return []
        with self._translated():
            return await self._expired_jobs(now, limit, shards)

    async def purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        """Remove a job a piece at a time: up to ``batch`` of its log entries and
        deliveries, oldest first, and, once none are left, the job itself.

        Only the job created at ``created_at`` is touched: a job created again
        under the same id is not. Returns ``True`` when the job is gone (or
        was never there), ``False`` when more remains. Each call is atomic.
        """
        if batch < 1:
            raise ValueError("batch must be positive")
        with self._translated():
            return await self._purge_job(namespace, job_id, created_at, batch)

    async def read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        """Committed log entries with ``seq > after_seq``, ascending, at most ``limit``."""
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._translated():
            return await self._read_events(namespace, job_id, after_seq, limit)

    async def read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        """Chunks of one version with ``index > after_index``, ascending, at most ``limit``."""
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._translated():
            return await self._read_chunks(namespace, job_id, version, after_index, limit)

    async def find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        with self._translated():
            return await self._find_chunk(namespace, job_id, version, index)

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        """One page of jobs matching ``query`` (see :class:`JobQuery`)."""
        if query.limit < 1:
            raise ValueError("limit must be positive")
        with self._translated():
            return await self._list_jobs(namespace, query)

    # -- the webhook outbox ---------------------------------------------------

    async def get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        with self._translated():
            return await self._get_delivery(namespace, delivery_id)

    async def list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        """One page of a namespace's deliveries, newest first (see :class:`DeliveryQuery`)."""
        if query.limit < 1:
            raise ValueError("limit must be positive")
        with self._translated():
            return await self._list_deliveries(namespace, query)

    async def claim_deliveries(
        self,
        *,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None = None,
    ) -> list[DeliveryRecord]:
        """Lease up to ``limit`` due deliveries (pending, ``next_attempt_at <= now``,
        not leased or lease run out), earliest first, to ``owner``.

        ``shards`` limits the claim to the rows of those shards (a node's
        share of the outbox); ``None`` claims from all. Two concurrent claims
        never return the same row.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        if shards is not None and not shards:
            return []
        with self._translated():
            return await self._claim_deliveries(now, limit, owner, lease_until, shards)

    async def finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        """Store the outcome of attempts: each row takes the state, schedule,
        counters and log of the given record and loses its lease, if ``owner``
        still holds that lease. The result says, per row, whether it did.
        """
        for delivery in deliveries:
            if delivery.lease_owner is not None:
                raise ValueError("a finished delivery releases its lease")
        if not deliveries:
            return []
        with self._translated():
            return await self._finish_deliveries(deliveries, owner)

    async def requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        """Make deliveries due now with a fresh retry budget (replay).

        Rows being attempted right now (leased) are left alone. Returns how
        many rows were requeued.
        """
        if not delivery_ids:
            return 0
        with self._translated():
            return await self._requeue_deliveries(namespace, delivery_ids, now)

    async def outbox_stats(self, now: int, shards: Collection[int] | None = None) -> OutboxStats:
        """Pending deliveries and the due time of the oldest one."""
        with self._translated():
            return await self._outbox_stats(now, shards)

    async def put_endpoint(self, endpoint: EndpointRecord) -> None:
        with self._translated():
            await self._put_endpoint(endpoint)

    async def get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        with self._translated():
            return await self._get_endpoint(namespace, url)

    async def list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        with self._translated():
            return await self._list_endpoints(namespace)

    # -- error translation -------------------------------------------------

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (StoreError, ValueError):
            raise
        except Exception as exc:
            mapped = self._translate(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _translate(self, exc: Exception) -> StoreError | None:
        """Map a driver exception onto the error tree; ``None`` lets it through.

        Adapters extend this; the default treats network failures and
        timeouts as the store being unavailable.
        """
        if isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError):
            return StoreUnavailable(f"{type(exc).__name__}: {exc}")
        return None

    # -- what each adapter implements ---------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _migrate(self, apply: bool) -> list[int]:
        """The pending migrations, applied first when ``apply`` (safely against
        other nodes doing the same at the same time)."""

    @abc.abstractmethod
    async def _ping(self) -> None: ...

    @abc.abstractmethod
    async def _put_namespace(self, namespace: NamespaceRecord) -> None: ...

    @abc.abstractmethod
    async def _get_namespace(self, name: str) -> NamespaceRecord | None: ...

    @abc.abstractmethod
    async def _create_key(self, key: KeyRecord) -> None: ...

    @abc.abstractmethod
    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]: ...

    @abc.abstractmethod
    async def _list_keys(self, namespace: str) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool: ...

    @abc.abstractmethod
    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None: ...

    @abc.abstractmethod
    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]: ...

    @abc.abstractmethod
    async def _purge_audit(self, now: int, limit: int) -> int: ...

    @abc.abstractmethod
    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None: ...

    @abc.abstractmethod
    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None: ...

    @abc.abstractmethod
    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None: ...

    @abc.abstractmethod
    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]: ...

    @abc.abstractmethod
    async def _purge_job(
        self, namespace: str, job_id: str, created_at: int, batch: int
    ) -> bool: ...

    @abc.abstractmethod
    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]: ...

    @abc.abstractmethod
    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]: ...

    @abc.abstractmethod
    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None: ...

    @abc.abstractmethod
    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]: ...

    @abc.abstractmethod
    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None: ...

    @abc.abstractmethod
    async def _list_deliveries(
        self, namespace: str, query: DeliveryQuery
    ) -> list[DeliveryRecord]: ...

    @abc.abstractmethod
    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]: ...

    @abc.abstractmethod
    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]: ...

    @abc.abstractmethod
    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int: ...

    @abc.abstractmethod
    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats: ...

    @abc.abstractmethod
    async def _put_endpoint(self, endpoint: EndpointRecord) -> None: ...

    @abc.abstractmethod
    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None: ...

    @abc.abstractmethod
    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]: ...
