"""The rows every store keeps, as immutable values, and their document codec.

Times are integers: microseconds since the Unix epoch, UTC. Each store maps
these records onto its own rows; the fields that stores index (namespace,
job id, status, creation time, tags, expiry, revision, seq) are plain
attributes, everything else travels in the JSON document made by
:func:`job_to_doc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from .errors import CorruptData

__all__ = [
    "TERMINAL_STATUSES",
    "EventKind",
    "EventRecord",
    "JobQuery",
    "JobRecord",
    "JobStatus",
    "KeyRecord",
    "NamespaceRecord",
    "OutputFormat",
    "VersionRecord",
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

    ``data`` holds the chunk's bytes for ``chunk`` events and the JSON payload
    for the other kinds. ``version``, ``index`` and ``format`` describe chunks
    (``index`` is the chunk's position in its version, counting from 0) and
    are ``0``/``-1``/``""`` on other kinds.
    """

    seq: int
    kind: EventKind
    at: int
    data: bytes
    version: int = 0
    index: int = -1
    format: str = ""


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
    }


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
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored job document is malformed: {exc!r}") from exc
