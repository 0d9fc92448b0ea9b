"""The job state machine and its event log, as pure functions.

Each function takes the stored job and returns the next job row together with
the log entries the change appends; the job service writes both in one atomic
compare-and-set. Nothing here does I/O, so every rule is testable alone::

    Queued ──► Running ──► Succeeded | Failed | Cancelled
       └──────────────────────────────────────► Cancelled

The first appended chunk moves a ``Queued`` job to ``Running``. Terminal
states are final. A version is complete once the job ends, the next version
starts, or a whole-output upload (``PUT``) finishes it; a complete version
takes no more chunks and, once its bytes are digested, records their SHA-256.
Changes that only record such facts (a digest, an expiry) append nothing to
the log.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage_adapters.records import (
    TERMINAL_STATUSES,
    EventKind,
    EventRecord,
    JobRecord,
    JobStatus,
    OutputFormat,
    VersionRecord,
    dumps,
)

__all__ = [
    "EMPTY_SHA256",
    "TRANSITIONS",
    "UNSET",
    "Change",
    "Chunk",
    "ChunkAlreadyStored",
    "InvalidChange",
    "StatusPatch",
    "append_chunk",
    "apply_patch",
    "cancel",
    "expire",
    "new_job",
    "seal_version",
    "start_version",
]

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

UNSET: Any = object()

#: the digest of a version without output
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: a chunk stored as it came is sent to zstd clients in a frame of raw blocks
#: (see ``codec.raw_frame``): a 9-byte header, and 3 bytes per block of 128 KiB
RAW_FRAME_HEADER = 9
RAW_BLOCK = 128 * 1024


def zstd_frame_size(chunk: Chunk) -> int:
    """How many bytes the chunk takes as a zstd frame."""
    if chunk.codec:
        return len(chunk.data)
    blocks = max(1, -(-chunk.size // RAW_BLOCK))
    return RAW_FRAME_HEADER + 3 * blocks + chunk.size


class InvalidChange(Exception):
    """The change conflicts with the job's state (an HTTP 409).

    ``reason`` names the kind of conflict; the API uses it as the problem type.
    """

    def __init__(self, message: str, reason: str = "invalid-transition") -> None:
        super().__init__(message)
        self.reason = reason


class ChunkAlreadyStored(Exception):
    """The chunk index is already in the version: the append is a retry."""

    def __init__(self, version: int, index: int) -> None:
        super().__init__(f"chunk {index} of version {version} is stored")
        self.version = version
        self.index = index


@dataclass(frozen=True, slots=True)
class StatusPatch:
    status: JobStatus | None = None
    progress: float | None = None
    #: ``UNSET`` leaves it alone; ``None`` clears it
    estimated_completion: int | None = UNSET
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Change:
    job: JobRecord
    events: tuple[EventRecord, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk ready to store: its bytes as stored (``codec`` says how they
    were encoded, ``""`` for as they came), and the size and SHA-256 of the
    bytes as appended."""

    data: bytes
    size: int
    digest: bytes
    codec: str = ""

    @classmethod
    def stored_as_is(cls, data: bytes) -> Chunk:
        return cls(data, len(data), hashlib.sha256(data).digest())


class _Builder:
    """Accumulates one change: new field values and the events they log."""

    def __init__(self, job: JobRecord, now: int) -> None:
        self.job = job
        self.now = now
        self.fields: dict[str, Any] = {}
        self.events: list[EventRecord] = []

    def get(self, name: str) -> Any:
        return self.fields.get(name, getattr(self.job, name))

    def set(self, **values: Any) -> None:
        self.fields.update(values)

    def emit(
        self,
        kind: EventKind,
        payload: Mapping[str, Any] | None = None,
        *,
        version: int = 0,
        index: int = -1,
        fmt: str = "",
        chunk: Chunk | None = None,
        offset: int = 0,
    ) -> EventRecord:
        event = EventRecord(
            seq=self.job.last_seq + len(self.events) + 1,
            kind=kind,
            at=self.now,
            data=chunk.data if chunk is not None else dumps(payload),
            version=version,
            index=index,
            format=fmt,
            codec=chunk.codec if chunk is not None else "",
            digest=chunk.digest if chunk is not None else None,
            offset=offset,
        )
        self.events.append(event)
        return event

    def set_version(self, number: int, **values: Any) -> None:
        versions = list(self.get("versions"))
        versions[number - 1] = dataclasses.replace(versions[number - 1], **values)
        self.set(versions=tuple(versions))

    def close_version(self, number: int) -> None:
        version: VersionRecord = self.get("versions")[number - 1]
        if version.completed_at is None:
            self.set_version(number, completed_at=self.now)
            if version.chunks == 0:
                self.set_version(number, sha256=EMPTY_SHA256)

    def transition(self, status: JobStatus, error: Mapping[str, Any] | None = None) -> None:
        current: JobStatus = self.get("status")
        if status == current:
            return
        if current in TERMINAL_STATUSES:
            raise _final(current)
        if status not in TRANSITIONS[current]:
            raise InvalidChange(_transition_message(current, status))
        self.set(status=status)
        payload: dict[str, Any] = {"status": status.value}
        if status is JobStatus.RUNNING and self.get("started_at") is None:
            self.set(started_at=self.now)
        if status is JobStatus.FAILED and error is not None:
            self.set(error=dict(error))
            payload["error"] = dict(error)
        if status is JobStatus.SUCCEEDED and self.get("progress") != 100:
            self.progress(100, self.get("estimated_completion"))
        if status in TERMINAL_STATUSES:
            ttl = self.get("ttl")
            self.set(
                completed_at=self.now,
                expires_at=self.now + ttl * 1_000_000 if ttl is not None else None,
            )
            self.close_version(self.get("current_version"))
        self.emit(EventKind.STATUS, payload)

    def progress(self, progress: float, estimated_completion: int | None) -> None:
        self.set(progress=progress, estimated_completion=estimated_completion)
        self.emit(
            EventKind.PROGRESS,
            {"progress": progress, "estimatedCompletion": estimated_completion},
        )

    def build(self, *, logged: bool = True) -> Change:
        """The change; ``logged=False`` allows one that appends nothing (it
        then leaves ``updated_at`` alone: clients saw nothing happen)."""
        if logged and not self.events:
            raise InvalidChange("the change is empty")
        job = dataclasses.replace(
            self.job,
            **self.fields,
            revision=self.job.revision + 1,
            last_seq=self.events[-1].seq if self.events else self.job.last_seq,
            updated_at=self.now if self.events else self.job.updated_at,
        )
        return Change(job, tuple(self.events))


def _final(status: JobStatus) -> InvalidChange:
    return InvalidChange(f"the job is {status.value}, which is final", "job-terminal")


def _transition_message(current: JobStatus, target: JobStatus) -> str:
    allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current]))
    return f"a {current.value} job cannot become {target.value} (it can become: {allowed})"


def new_job(
    *,
    namespace: str,
    job_id: str,
    now: int,
    fingerprint: str,
    metadata: Mapping[str, Any],
    webhook_url: str | None,
    ttl: int | None,
) -> Change:
    """A ``Queued`` job whose log starts with its status, and an empty version 1."""
    job = JobRecord(
        namespace=namespace,
        job_id=job_id,
        revision=1,
        status=JobStatus.QUEUED,
        created_at=now,
        updated_at=now,
        fingerprint=fingerprint,
        last_seq=1,
        current_version=1,
        versions=(VersionRecord(number=1, created_at=now),),
        metadata=metadata,
        webhook_url=webhook_url,
        ttl=ttl,
    )
    first = EventRecord(
        seq=1, kind=EventKind.STATUS, at=now, data=dumps({"status": JobStatus.QUEUED.value})
    )
    return Change(job, (first,))


def apply_patch(job: JobRecord, patch: StatusPatch, now: int) -> Change:
    """``PATCH …/status``: progress, estimated completion, and a transition."""
    if job.terminal:
        raise _final(job.status)
    change = _Builder(job, now)
    eta = (
        job.estimated_completion
        if patch.estimated_completion is UNSET
        else (patch.estimated_completion)
    )
    progress = job.progress if patch.progress is None else patch.progress
    if (progress, eta) != (job.progress, job.estimated_completion):
        change.progress(progress, eta)
    if patch.status is not None:
        change.transition(patch.status, patch.error)
    if not change.events:
        # Same status, same progress: nothing to log; report the state as is.
        return Change(job, ())
    return change.build()


def cancel(job: JobRecord, now: int) -> Change:
    if job.terminal:
        raise _final(job.status)
    change = _Builder(job, now)
    change.transition(JobStatus.CANCELLED)
    return change.build()


def _format_check(version: VersionRecord, fmt: OutputFormat) -> None:
    if version.format is not None and version.format is not fmt:
        raise InvalidChange(
            f"version {version.number} holds {version.format.value} output; a "
            f"{fmt.value} chunk needs a new version (POST …/versions)",
            "format-conflict",
        )


def append_chunk(
    job: JobRecord,
    chunk: Chunk,
    fmt: OutputFormat,
    content_type: str,
    now: int,
    index: int | None = None,
    *,
    sha256: str | None = None,
    max_size: int | None = None,
) -> Change:
    """Append one chunk to the current version; the first one starts the job.

    ``index`` (``X-Chunk-Index``) makes retries safe: an index already stored
    raises :class:`ChunkAlreadyStored`, one past the next is refused.
    ``sha256`` (the digest of the whole version, this chunk included) makes it
    the version's last chunk. ``max_size`` bounds the version's size.
    """
    version = job.versions[job.current_version - 1]
    if index is not None:
        if index < version.chunks:
            raise ChunkAlreadyStored(version.number, index)
        if index > version.chunks:
            raise InvalidChange(
                f"chunk index {index} skips ahead: version {version.number} has "
                f"{version.chunks} chunks, so the next index is {version.chunks}",
                "chunk-index-conflict",
            )
    if job.terminal:
        raise _final(job.status)
    _open_check(version)
    _format_check(version, fmt)
    if max_size is not None and version.size + chunk.size > max_size:
        raise InvalidChange(
            f"version {version.number} would grow past the limit of {max_size} bytes",
            "version-too-large",
        )
    change = _Builder(job, now)
    if job.status is JobStatus.QUEUED:
        change.transition(JobStatus.RUNNING)
    event = change.emit(
        EventKind.CHUNK,
        version=version.number,
        index=version.chunks,
        fmt=fmt.value,
        chunk=chunk,
        offset=version.size,
    )
    change.set_version(
        version.number,
        format=fmt,
        content_type=version.content_type or content_type,
        size=version.size + chunk.size,
        stored_size=version.stored_size + len(chunk.data),
        raw_chunks=version.raw_chunks + (chunk.codec == ""),
        max_chunk=max(version.max_chunk, len(chunk.data)),
        zstd_size=version.zstd_size + zstd_frame_size(chunk) if version.zstd_size >= 0 else -1,
        chunks=version.chunks + 1,
        last_chunk_seq=event.seq,
    )
    if sha256 is not None:
        change.set_version(version.number, sha256=sha256, completed_at=now)
    return change.build()


def _open_check(version: VersionRecord) -> None:
    if version.completed_at is not None:
        raise InvalidChange(
            f"version {version.number} is complete; start a new one with POST …/versions",
            "version-complete",
        )


def seal_version(job: JobRecord, number: int, chunks: int, sha256: str, now: int) -> Change:
    """Record the SHA-256 of version ``number``'s first ``chunks`` chunks, and
    close the version if it is open (a finished ``PUT``). Appends nothing.

    Refused when the version no longer has exactly those chunks.
    """
    version = job.version(number)
    if version is None or version.chunks != chunks:
        raise InvalidChange(
            f"version {number} changed while its digest was computed", "version-changed"
        )
    if version.sha256 == sha256 and version.completed_at is not None:
        return Change(job, ())
    if version.completed_at is None and job.terminal:
        raise _final(job.status)
    change = _Builder(job, now)
    change.close_version(number)
    change.set_version(number, sha256=sha256)
    return change.build(logged=False)


def expire(job: JobRecord, now: int) -> Change:
    """Make a finished job expire now (it is then gone for clients, and purged)."""
    if not job.terminal:
        raise InvalidChange(
            f"the job is {job.status.value}; cancel it or let it finish before deleting it",
            "job-not-terminal",
        )
    change = _Builder(job, now)
    change.set(expires_at=now)
    return change.build(logged=False)


def start_version(job: JobRecord, now: int, max_versions: int) -> Change:
    """Close the current version and open the next, empty one."""
    if job.terminal:
        raise _final(job.status)
    if job.current_version >= max_versions:
        raise InvalidChange(
            f"the job has reached the limit of {max_versions} versions", "version-limit"
        )
    change = _Builder(job, now)
    change.close_version(job.current_version)
    number = job.current_version + 1
    change.set(
        current_version=number,
        versions=(*change.get("versions"), VersionRecord(number=number, created_at=now)),
    )
    change.emit(EventKind.VERSION, {"version": number})
    return change.build()
