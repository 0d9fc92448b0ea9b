"""The rows every store keeps, as immutable values, and their document codec.

Times are integers: microseconds since the Unix epoch, UTC. Each store maps
these records onto its own rows; the fields that stores index (namespace,
job id, status, creation time, tags, expiry, revision, seq) are plain
attributes, everything else travels in the JSON document made by
:func:`job_to_doc`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from .errors import CorruptData

__all__ = [
    "DELIVERY_COLUMNS",
    "KEY_MUTABLE_FIELDS",
    "TERMINAL_STATUSES",
    "AttemptRecord",
    "AuditQuery",
    "AuditRecord",
    "DeliveryQuery",
    "DeliveryRecord",
    "DeliveryState",
    "EndpointRecord",
    "EventKind",
    "EventRecord",
    "JobQuery",
    "JobRecord",
    "JobStatus",
    "KeyRecord",
    "NamespaceRecord",
    "OutboxStats",
    "OutputFormat",
    "VersionRecord",
    "audit_from_doc",
    "audit_to_doc",
    "delivery_from_row",
    "delivery_row",
    "delivery_to_doc",
    "dumps",
    "job_from_doc",
    "job_to_doc",
    "loads",
]


class JobStatus(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class EventKind(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    VERSION = "version"
    CHUNK = "chunk"


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    BINARY = "binary"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptData(f"stored document is not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    name: str
    config: Mapping[str, Any]
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    namespace: str
    key_id: str
    role: str
    secret_hash: str
    created_at: int
    #: a label for people ("ci deploy"); not unique
    name: str | None = None
    #: the key stops working at this time (None: never)
    expires_at: int | None = None
    #: the key was revoked at this time (None: it was not); revoked keys are kept
    revoked_at: int | None = None
    #: the last time the key authenticated a request, to a resolution of about a minute
    last_used_at: int | None = None

    def state(self, now: int) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


#: the fields of a key that :meth:`StorageAdapter.update_key` may change
KEY_MUTABLE_FIELDS = frozenset({"expires_at", "revoked_at", "last_used_at"})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry of a namespace's append-only audit log.

    ``entry_id`` orders the log: 16 hex digits of ``at`` then 8 random hex
    digits, so ids sort by time and never collide in practice.
    """

    namespace: str
    entry_id: str
    at: int
    #: what happened: ``job.submit``, ``key.create``, ``auth.failure``, ...
    action: str
    #: who did it: ``root``, ``key:<keyId>``, ``token:<subject>`` or ``anonymous``
    actor: str
    #: ``success`` or ``failure``
    outcome: str
    #: what it was done to (a job id, a key id, the namespace), if anything
    target: str | None
    #: the request it came from
    request_id: str | None
    #: more about it (never a secret)
    detail: Mapping[str, Any]
    #: the entry may be purged after this time (retention)
    expires_at: int


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A page of one namespace's audit log, newest first.

    ``min_id`` is inclusive, ``max_id`` exclusive (either may be None); entries
    whose ``expires_at`` is at or before ``alive_at`` are left out.
    """

    limit: int
    min_id: str | None = None
    max_id: str | None = None
    alive_at: int | None = None

    def matches(self, entry: AuditRecord) -> bool:
        """The query as a predicate; the reference for every store."""
        if self.min_id is not None and entry.entry_id < self.min_id:
            return False
        if self.max_id is not None and entry.entry_id >= self.max_id:
            return False
        return self.alive_at is None or entry.expires_at > self.alive_at


def audit_to_doc(entry: AuditRecord) -> dict[str, Any]:
    """The fields of an audit entry that stores keep as one JSON document."""
    return {
        "action": entry.action,
        "actor": entry.actor,
        "outcome": entry.outcome,
        "target": entry.target,
        "requestId": entry.request_id,
        "detail": dict(entry.detail),
    }


def audit_from_doc(
    namespace: str, entry_id: str, at: int, expires_at: int, doc: Mapping[str, Any]
) -> AuditRecord:
    return AuditRecord(
        namespace=namespace,
        entry_id=entry_id,
        at=at,
        action=doc["action"],
        actor=doc["actor"],
        outcome=doc["outcome"],
        target=doc.get("target"),
        request_id=doc.get("requestId"),
        detail=doc.get("detail") or {},
        expires_at=expires_at,
    )


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One output version of a job, kept inside the job row."""

    number: int
    created_at: int
    format: OutputFormat | None = None
    content_type: str | None = None
    size: int = 0
    chunks: int = 0
    last_chunk_seq: int = 0
    completed_at: int | None = None
    #: bytes as stored (after compression)
    stored_size: int = 0
    #: chunks stored as they came (compression did not pay)
    raw_chunks: int = 0
    #: hex SHA-256 of the version's bytes, once the version is closed and digested
    sha256: str | None = None
    #: the largest chunk as stored (bounds the memory of a batch read; 0: unknown)
    max_chunk: int = 0
    #: bytes of the version as one zstd stream (its chunks as zstd frames; -1: unknown)
    zstd_size: int = 0
    #: the data key its encrypted chunks are sealed with (``None``: none is; service/crypto.py)
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    namespace: str
    job_id: str
    revision: int
    status: JobStatus
    created_at: int
    updated_at: int
    fingerprint: str
    last_seq: int
    current_version: int
    versions: tuple[VersionRecord, ...]
    progress: float = 0
    estimated_completion: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    ttl: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    expires_at: int | None = None
    error: Mapping[str, Any] | None = None
    #: when this job last queued a ``job.output`` webhook (they are throttled)
    output_notified_at: int | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        tags = self.metadata.get("tags") or ()
        return tuple(tags)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def version(self, number: int) -> VersionRecord | None:
        if 1 <= number <= len(self.versions):
            return self.versions[number - 1]
        return None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One entry of a job's append-only log.

    ``data`` holds the chunk's bytes as stored for ``chunk`` events (compressed
    when ``codec`` is ``"zstd"``) and the JSON payload for the other kinds.
    ``version``, ``index`` (the chunk's position in its version, from 0),
    ``format``, ``offset`` (where the chunk starts in its version's bytes) and
    ``digest`` (SHA-256 of the chunk's bytes as appended) describe chunks and
    keep their defaults on other kinds.
    """

    seq: int
    kind: EventKind
    at: int
    data: bytes
    version: int = 0
    index: int = -1
    format: str = ""
    codec: str = ""
    digest: bytes | None = None
    offset: int = 0


class DeliveryState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try at delivering a webhook."""

    at: int
    status: int | None  # HTTP status, or None when no response came back
    latency_ms: float
    error: str | None = None
    response: str | None = None  # the start of the response body


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A webhook delivery: a row of the outbox.

    ``payload`` is the exact body sent on every attempt; ``delivery_id`` is
    the ``webhook-id``. ``shard`` places the row in a node's share of the
    outbox. While a node works on it, ``lease_owner``/``lease_until`` keep
    other nodes off it; a lease that runs out makes it claimable again.
    """

    namespace: str
    delivery_id: str
    job_id: str
    event_type: str
    payload: bytes
    url: str
    shard: int
    state: DeliveryState
    next_attempt_at: int
    created_at: int
    updated_at: int
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: int | None = None
    log: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    """A page of one namespace's deliveries, newest first.

    ``after`` is ``(created_at, delivery_id)`` of the last row of the previous
    page; ``created_since`` an inclusive lower bound.
    """

    limit: int
    job_id: str | None = None
    state: DeliveryState | None = None
    created_since: int | None = None
    after: tuple[int, str] | None = None

    def matches(self, delivery: DeliveryRecord) -> bool:
        if self.job_id is not None and delivery.job_id != self.job_id:
            return False
        if self.state is not None and delivery.state is not self.state:
            return False
        if self.created_since is not None and delivery.created_at < self.created_since:
            return False
        return self.after is None or (delivery.created_at, delivery.delivery_id) < self.after


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A webhook URL a namespace sends to, and whether it is disabled."""

    namespace: str
    url: str
    disabled_at: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest_due_at: int | None


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A page request over one namespace's jobs, ordered by ``(created_at, job_id)``.

    ``after`` is the position of the last row of the previous page; rows
    strictly past it (in the chosen direction) are returned. ``created_after``
    and ``created_before`` are exclusive bounds; jobs whose ``expires_at`` is
    at or before ``alive_at`` are left out.
    """

    limit: int
    statuses: frozenset[JobStatus] | None = None
    tag: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    after: tuple[int, str] | None = None
    descending: bool = True
    alive_at: int | None = None

    def matches(self, job: JobRecord) -> bool:
        """The query's filters as a predicate; the reference for every store."""
        if self.statuses is not None and job.status not in self.statuses:
            return False
        if self.tag is not None and self.tag not in job.tags:
            return False
        if self.created_after is not None and job.created_at <= self.created_after:
            return False
        if self.created_before is not None and job.created_at >= self.created_before:
            return False
        expires_at = job.expires_at
        if self.alive_at is not None and expires_at is not None and expires_at <= self.alive_at:
            return False
        if self.after is not None:
            position = (job.created_at, job.job_id)
            if self.descending and position >= self.after:
                return False
            if not self.descending and position <= self.after:
                return False
        return True


def _version_to_doc(v: VersionRecord) -> dict[str, Any]:
    return {
        "n": v.number,
        "c": v.created_at,
        "f": v.format.value if v.format else None,
        "t": v.content_type,
        "s": v.size,
        "k": v.chunks,
        "l": v.last_chunk_seq,
        "d": v.completed_at,
        "ss": v.stored_size,
        "r": v.raw_chunks,
        "h": v.sha256,
        "m": v.max_chunk,
        "z": v.zstd_size,
        **({"e": v.key_id} if v.key_id is not None else {}),
    }


def _version_from_doc(d: Mapping[str, Any]) -> VersionRecord:
    return VersionRecord(
        number=d["n"],
        created_at=d["c"],
        format=OutputFormat(d["f"]) if d["f"] else None,
        content_type=d["t"],
        size=d["s"],
        chunks=d["k"],
        last_chunk_seq=d["l"],
        completed_at=d["d"],
        stored_size=d.get("ss", d["s"]),
        raw_chunks=d.get("r", d["k"]),
        sha256=d.get("h"),
        max_chunk=d.get("m", 0),
        zstd_size=d.get("z", -1),
        key_id=d.get("e"),
    )


def job_to_doc(job: JobRecord) -> dict[str, Any]:
    """The whole job as a JSON-able document (indexed columns included)."""
    return {
        "namespace": job.namespace,
        "jobId": job.job_id,
        "revision": job.revision,
        "status": job.status.value,
        "createdAt": job.created_at,
        "updatedAt": job.updated_at,
        "fingerprint": job.fingerprint,
        "lastSeq": job.last_seq,
        "currentVersion": job.current_version,
        "versions": [_version_to_doc(v) for v in job.versions],
        "progress": job.progress,
        "estimatedCompletion": job.estimated_completion,
        "metadata": dict(job.metadata),
        "webhookUrl": job.webhook_url,
        "ttl": job.ttl,
        "startedAt": job.started_at,
        "completedAt": job.completed_at,
        "expiresAt": job.expires_at,
        "error": dict(job.error) if job.error is not None else None,
        "outputNotifiedAt": job.output_notified_at,
    }


#: the columns every store keeps for a delivery, besides its document
DELIVERY_COLUMNS = (
    "namespace, delivery_id, job_id, shard, state, attempts, next_attempt_at, created_at, "
    "updated_at, lease_owner, lease_until, payload, doc"
)


def delivery_to_doc(d: DeliveryRecord) -> dict[str, Any]:
    """The parts of a delivery that are never queried: one document column."""
    return {
        "eventType": d.event_type,
        "url": d.url,
        "lastStatus": d.last_status,
        "lastError": d.last_error,
        "log": [
            {
                "at": a.at,
                "status": a.status,
                "ms": a.latency_ms,
                "error": a.error,
                "response": a.response,
            }
            for a in d.log
        ],
    }


def delivery_row(d: DeliveryRecord) -> tuple[Any, ...]:
    """A delivery as the values of :data:`DELIVERY_COLUMNS`."""
    return (
        d.namespace,
        d.delivery_id,
        d.job_id,
        d.shard,
        d.state.value,
        d.attempts,
        d.next_attempt_at,
        d.created_at,
        d.updated_at,
        d.lease_owner,
        d.lease_until,
        d.payload,
        dumps(delivery_to_doc(d)),
    )


def delivery_from_row(row: Iterable[Any]) -> DeliveryRecord:
    """A delivery from the values of :data:`DELIVERY_COLUMNS`."""
    (
        namespace,
        delivery_id,
        job_id,
        shard,
        state,
        attempts,
        next_attempt_at,
        created_at,
        updated_at,
        lease_owner,
        lease_until,
        payload,
        doc,
    ) = row
    try:
        d = loads(doc)
        return DeliveryRecord(
            namespace=namespace,
            delivery_id=delivery_id,
            job_id=job_id,
            event_type=d["eventType"],
            payload=bytes(payload),
            url=d["url"],
            shard=shard,
            state=DeliveryState(state),
            next_attempt_at=next_attempt_at,
            created_at=created_at,
            updated_at=updated_at,
            attempts=attempts,
            last_status=d["lastStatus"],
            last_error=d["lastError"],
            lease_owner=lease_owner,
            lease_until=lease_until,
            log=tuple(
                AttemptRecord(a["at"], a["status"], a["ms"], a["error"], a["response"])
                for a in d["log"]
            ),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored delivery is malformed: {exc!r}") from exc


def job_from_doc(d: Mapping[str, Any]) -> JobRecord:
    try:
        return JobRecord(
            namespace=d["namespace"],
            job_id=d["jobId"],
            revision=d["revision"],
            status=JobStatus(d["status"]),
            created_at=d["createdAt"],
            updated_at=d["updatedAt"],
            fingerprint=d["fingerprint"],
            last_seq=d["lastSeq"],
            current_version=d["currentVersion"],
            versions=tuple(_version_from_doc(v) for v in d["versions"]),
            progress=d["progress"],
            estimated_completion=d["estimatedCompletion"],
            metadata=d["metadata"],
            webhook_url=d["webhookUrl"],
            ttl=d["ttl"],
            started_at=d["startedAt"],
            completed_at=d["completedAt"],
            expires_at=d["expiresAt"],
            error=d["error"],
            output_notified_at=d.get("outputNotifiedAt"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored job document is malformed: {exc!r}") from exc
