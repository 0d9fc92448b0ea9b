"""What clients see: JSON representations, entity tags and SSE frames."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from storage_adapters import (
    TERMINAL_STATUSES,
    AuditRecord,
    EventKind,
    EventRecord,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    OutputFormat,
    VersionRecord,
)

from . import tokens
from .clock import render_timestamp

__all__ = [
    "audit_view",
    "chunk_payload",
    "end_frame",
    "etag_matches",
    "event_frame",
    "event_payload",
    "job_etag",
    "job_view",
    "key_view",
    "namespace_view",
    "output_etag",
    "reset_frame",
    "status_etag",
    "status_view",
    "terminal_status",
    "version_view",
]


def _incarnation(job: JobRecord) -> str:
    # A job deleted and created again restarts its seqs; the creation time
    # keeps the two apart in every entity tag.
    return format(job.created_at, "x")


def status_etag(job: JobRecord) -> str:
    return f'"s{_incarnation(job)}.{job.last_seq}"'


def job_etag(job: JobRecord) -> str:
    return f'"j{_incarnation(job)}.{job.last_seq}"'


def output_etag(job: JobRecord, version: VersionRecord) -> str:
    return f'"o{_incarnation(job)}.{version.number}.{version.last_chunk_seq}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` semantics: weak comparison against a list, or ``*``."""
    if not if_none_match:
        return False
    bare = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == bare:
            return True
    return False


def job_view(job: JobRecord) -> dict[str, Any]:
    return {
        "namespace": job.namespace,
        "jobId": job.job_id,
        "status": job.status.value,
        "progress": job.progress,
        "estimatedCompletion": render_timestamp(job.estimated_completion),
        "metadata": job.metadata,
        "webhookUrl": job.webhook_url,
        "retentionPolicy": {"ttl": job.ttl},
        "createdAt": render_timestamp(job.created_at),
        "updatedAt": render_timestamp(job.updated_at),
        "startedAt": render_timestamp(job.started_at),
        "completedAt": render_timestamp(job.completed_at),
        "error": job.error,
        "currentVersion": job.current_version,
        "lastSeq": job.last_seq,
        "expiresAt": render_timestamp(job.expires_at),
    }


def status_view(job: JobRecord) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "status": job.status.value,
        "progress": job.progress,
        "estimatedCompletion": render_timestamp(job.estimated_completion),
        "lastSeq": job.last_seq,
        "updatedAt": render_timestamp(job.updated_at),
    }


def version_view(version: VersionRecord, current: int) -> dict[str, Any]:
    return {
        "version": version.number,
        "current": version.number == current,
        "complete": version.completed_at is not None,
        "format": version.format.value if version.format else None,
        "contentType": version.content_type,
        "size": version.size,
        "storedSize": version.stored_size,
        "chunks": version.chunks,
        "sha256": version.sha256,
        "createdAt": render_timestamp(version.created_at),
        "completedAt": render_timestamp(version.completed_at),
    }


def namespace_view(namespace: NamespaceRecord) -> dict[str, Any]:
    config = namespace.config
    return {
        "name": namespace.name,
        "defaultRetentionPolicy": config.get("defaultRetentionPolicy"),
        "webhookUrl": config.get("webhookUrl"),
        "webhookRetrySchedule": config.get("webhookRetrySchedule"),
        "webhookSecrets": [
            {
                "secret": entry["secret"],
                "createdAt": render_timestamp(entry["createdAt"]),
                "expiresAt": render_timestamp(entry["expiresAt"]),
            }
            for entry in config.get("webhookSecrets") or ()
        ],
        "quotas": config.get("quotas"),
        "rateLimits": config.get("rateLimits"),
        "subscriberKeys": tokens.public_entries(config),
        "auditRetention": config.get("auditRetention"),
        "createdAt": render_timestamp(namespace.created_at),
        "updatedAt": render_timestamp(namespace.updated_at),
    }


def key_view(key: KeyRecord, now: int) -> dict[str, Any]:
    """An API key as admins list it: never its secret or hash."""
    return {
        "keyId": key.key_id,
        "namespace": key.namespace,
        "role": key.role,
        "name": key.name,
        "state": key.state(now),
        "createdAt": render_timestamp(key.created_at),
        "expiresAt": render_timestamp(key.expires_at),
        "revokedAt": render_timestamp(key.revoked_at),
        "lastUsedAt": render_timestamp(key.last_used_at),
    }


def audit_view(entry: AuditRecord) -> dict[str, Any]:
    return {
        "id": entry.entry_id,
        "at": render_timestamp(entry.at),
        "action": entry.action,
        "actor": entry.actor,
        "outcome": entry.outcome,
        "target": entry.target,
        "requestId": entry.request_id,
        "detail": entry.detail,
    }


def chunk_payload(event: EventRecord) -> dict[str, Any]:
    """A chunk as JSON: text and json chunks as strings, binary as base64."""
    if event.format == OutputFormat.BINARY:
        data, encoding = base64.b64encode(event.data).decode("ascii"), "base64"
    else:
        data, encoding = event.data.decode("utf-8"), "utf-8"
    return {
        "seq": event.seq,
        "version": event.version,
        "index": event.index,
        "format": event.format,
        "encoding": encoding,
        "data": data,
    }


def event_payload(event: EventRecord) -> dict[str, Any]:
    """The ``data`` of an event's SSE frame."""
    if event.kind is EventKind.CHUNK:
        return chunk_payload(event)
    payload: dict[str, Any] = {"seq": event.seq, **orjson.loads(event.data)}
    if event.kind is EventKind.PROGRESS:
        payload["estimatedCompletion"] = render_timestamp(payload["estimatedCompletion"])
    payload["at"] = render_timestamp(event.at)
    return payload


def terminal_status(event: EventRecord) -> str | None:
    """The final status a ``status`` entry records, else ``None``."""
    if event.kind is not EventKind.STATUS:
        return None
    status: str = orjson.loads(event.data)["status"]
    return status if status in TERMINAL_STATUSES else None


def event_frame(event: EventRecord) -> bytes:
    """One log entry as a complete SSE frame, encoded once for every subscriber."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event.kind.value.encode(),
        orjson.dumps(event_payload(event)),
    )


def end_frame(job_status: str, last_seq: int) -> bytes:
    data = orjson.dumps({"status": job_status, "lastSeq": last_seq})
    return b"event: end\ndata: %s\n\n" % data


def reset_frame(reason: str, last_seq: int, next_seq: int | None = None) -> bytes:
    """The stream skips ahead: ``next_seq`` is the first entry that follows
    (``None``: the log is replayed from its start)."""
    data = orjson.dumps({"reason": reason, "lastSeq": last_seq, "nextSeq": next_seq})
    return b"event: reset\ndata: %s\n\n" % data
