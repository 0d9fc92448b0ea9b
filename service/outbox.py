"""Which webhooks a job change queues, as pure functions.

The deliveries are written in the same atomic step as the change (see
:meth:`StorageAdapter.update_job`), so no committed change can lose its
webhooks. Events:

* ``job.status`` — every status the job enters, ``Queued`` at creation included;
* ``job.output`` — output was appended; at most one per job per
  ``output_interval`` (the first chunk after a quiet interval queues one,
  carrying the output's position then: seq, version, size so far);
* ``job.completed`` — the job reached a final status (with the whole job).

The body is ``{"type", "timestamp", "data"}``; it is fixed when queued, so
every retry sends the same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from sharding import shard_of
from storage_adapters import (
    DeliveryRecord,
    DeliveryState,
    EventKind,
    JobRecord,
    NamespaceRecord,
)

from .clock import render_timestamp
from .ids import new_job_id
from .lifecycle import Change
from .views import job_view, terminal_status

__all__ = ["webhook_url", "with_deliveries"]


def webhook_url(job: JobRecord, namespace: NamespaceRecord | None) -> str | None:
    """The job's own webhook URL, else its namespace's default."""
    if job.webhook_url:
        return job.webhook_url
    if namespace is not None:
        url: str | None = namespace.config.get("webhookUrl")
        return url
    return None


def _delivery(
    job: JobRecord, url: str, event_type: str, data: dict[str, Any], now: int
) -> DeliveryRecord:
    body = orjson.dumps({"type": event_type, "timestamp": render_timestamp(now), "data": data})
    return DeliveryRecord(
        namespace=job.namespace,
        delivery_id="msg_" + new_job_id(),
        job_id=job.job_id,
        event_type=event_type,
        payload=body,
        url=url,
        shard=shard_of(job.namespace),
        state=DeliveryState.PENDING,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def with_deliveries(
    before: JobRecord | None,
    change: Change,
    namespace: NamespaceRecord | None,
    now: int,
    output_interval: int,
) -> tuple[Change, tuple[DeliveryRecord, ...]]:
    """The change (with its webhook bookkeeping) and the deliveries it queues.

    ``output_interval`` is in microseconds.
    """
    job = change.job
    url = webhook_url(job, namespace)
    if url is None:
        return change, ()
    deliveries: list[DeliveryRecord] = []
    previous = before.status.value if before is not None else None
    last_chunk = None
    for event in change.events:
        if event.kind is EventKind.STATUS:
            status = orjson.loads(event.data)
            data: dict[str, Any] = {
                "namespace": job.namespace,
                "jobId": job.job_id,
                "status": status["status"],
                "previousStatus": previous,
                "seq": event.seq,
            }
            if "error" in status:
                data["error"] = status["error"]
            deliveries.append(_delivery(job, url, "job.status", data, now))
            previous = status["status"]
            if terminal_status(event) is not None:
                deliveries.append(_delivery(job, url, "job.completed", job_view(job), now))
        elif event.kind is EventKind.CHUNK:
            last_chunk = event
    if last_chunk is not None:
        quiet = job.output_notified_at is None or now - job.output_notified_at >= output_interval
        if quiet:
            version = job.version(last_chunk.version)
            data = {
                "namespace": job.namespace,
                "jobId": job.job_id,
                "version": last_chunk.version,
                "seq": last_chunk.seq,
                "index": last_chunk.index,
                "size": version.size if version else None,
                "chunks": version.chunks if version else None,
            }
            deliveries.append(_delivery(job, url, "job.output", data, now))
            job = dataclasses.replace(job, output_notified_at=now)
            change = Change(job, change.events)
    return change, tuple(deliveries)
