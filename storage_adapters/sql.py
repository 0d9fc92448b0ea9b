"""What the SQL stores share: the listing query and row mapping.

The three SQL adapters keep the same tables (``namespaces``, ``api_keys``,
``jobs``, ``job_tags``, ``events``), each keyed by namespace first; the
dialects differ only in types, placeholders and how a write is made atomic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Literal

from .records import DELIVERY_COLUMNS, DeliveryQuery, EventKind, EventRecord, JobQuery, JobRecord

__all__ = [
    "EVENT_COLUMNS",
    "Params",
    "due_deliveries_sql",
    "event_from_row",
    "event_rows",
    "expired_jobs_sql",
    "list_deliveries_sql",
    "list_jobs_sql",
    "outbox_stats_sql",
]

#: columns of ``events`` that make an :class:`EventRecord`, in this order
EVENT_COLUMNS = "seq, kind, at, version, chunk_index, format, data, codec, digest, byte_offset"


class Params:
    """Collects query parameters, answering each with its placeholder."""

    def __init__(self, style: Literal["qmark", "numeric", "format"]) -> None:
        self.style = style
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        if self.style == "qmark":
            return "?"
        if self.style == "numeric":
            return f"${len(self.values)}"
        return "%s"


def event_from_row(row: Iterable[Any]) -> EventRecord:
    seq, kind, at, version, index, fmt, data, codec, digest, offset = row
    return EventRecord(
        seq=seq,
        kind=EventKind(kind),
        at=at,
        data=bytes(data),
        version=version,
        index=-1 if index is None else index,
        format=fmt,
        codec=codec,
        digest=bytes(digest) if digest is not None else None,
        offset=offset,
    )


def event_rows(
    job: JobRecord, events: Iterable[EventRecord], *, null_index: bool = False
) -> list[tuple[Any, ...]]:
    """Rows for ``events``; ``null_index`` stores ``NULL`` for non-chunk entries
    (for stores without partial unique indexes)."""
    return [
        (
            job.namespace,
            job.job_id,
            e.seq,
            e.kind.value,
            e.at,
            e.version,
            None if null_index and e.index < 0 else e.index,
            e.format,
            e.data,
            e.codec,
            e.digest,
            e.offset,
        )
        for e in events
    ]


def list_jobs_sql(namespace: str, query: JobQuery, params: Params) -> str:
    """``SELECT doc`` of one page: a range scan of the creation index, or of
    the tag index when the query has a tag."""
    if query.tag is not None:
        source = "job_tags o JOIN jobs j ON j.namespace = o.namespace AND j.job_id = o.job_id"
        where = [f"o.namespace = {params(namespace)}", f"o.tag = {params(query.tag)}"]
        job = "j"
    else:
        source = "jobs o"
        where = [f"o.namespace = {params(namespace)}"]
        job = "o"
    if query.statuses is not None:
        marks = ", ".join(params(s.value) for s in sorted(query.statuses))
        where.append(f"{job}.status IN ({marks})")
    if query.created_after is not None:
        where.append(f"o.created_at > {params(query.created_after)}")
    if query.created_before is not None:
        where.append(f"o.created_at < {params(query.created_before)}")
    if query.alive_at is not None:
        where.append(f"({job}.expires_at IS NULL OR {job}.expires_at > {params(query.alive_at)})")
    if query.after is not None:
        created_at, job_id = query.after
        op = "<" if query.descending else ">"
        where.append(
            f"(o.created_at {op} {params(created_at)} OR "
            f"(o.created_at = {params(created_at)} AND o.job_id {op} {params(job_id)}))"
        )
    direction = "DESC" if query.descending else "ASC"
    return (
        f"SELECT {job}.doc FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY o.created_at {direction}, o.job_id {direction} LIMIT {params(query.limit)}"
    )


def _shard_filter(shards: Collection[int] | None, params: Params) -> str:
    if shards is None:
        return ""
    return f" AND shard IN ({', '.join(params(s) for s in sorted(shards))})"


def due_deliveries_sql(
    now: int, limit: int, shards: Collection[int] | None, params: Params, *, lock: str = ""
) -> str:
    """The due, unleased pending deliveries, earliest first (``lock``: a
    ``FOR UPDATE …`` clause where the store has one)."""
    return (
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'pending' "
        f"AND next_attempt_at <= {params(now)} "
        f"AND (lease_until IS NULL OR lease_until <= {params(now)})"
        f"{_shard_filter(shards, params)} ORDER BY next_attempt_at LIMIT {params(limit)}"
        f"{' ' + lock if lock else ''}"
    )


def expired_jobs_sql(now: int, limit: int, shards: Collection[int] | None, params: Params) -> str:
    return (
        f"SELECT doc FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= {params(now)}"
        f"{_shard_filter(shards, params)} ORDER BY expires_at LIMIT {params(limit)}"
    )


def outbox_stats_sql(shards: Collection[int] | None, params: Params) -> str:
    return (
        "SELECT count(*), min(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        f"{_shard_filter(shards, params)}"
    )


def list_deliveries_sql(namespace: str, query: DeliveryQuery, params: Params) -> str:
    where = [f"namespace = {params(namespace)}"]
    if query.job_id is not None:
        where.append(f"job_id = {params(query.job_id)}")
    if query.state is not None:
        where.append(f"state = {params(query.state.value)}")
    if query.created_since is not None:
        where.append(f"created_at >= {params(query.created_since)}")
    if query.after is not None:
        created_at, delivery_id = query.after
        where.append(
            f"(created_at < {params(created_at)} OR "
            f"(created_at = {params(created_at)} AND delivery_id < {params(delivery_id)}))"
        )
    return (
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, delivery_id DESC LIMIT {params(query.limit)}"
    )
