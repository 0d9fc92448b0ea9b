"""What the SQL stores share: the listing query and row mapping.

The three SQL adapters keep the same tables (``namespaces``, ``api_keys``,
``audit_log``, ``jobs``, ``job_tags``, ``events``, ``deliveries``), each keyed
by namespace first; the dialects differ only in types, placeholders and how a
write is made atomic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

from .records import (
    DELIVERY_COLUMNS,
    KEY_MUTABLE_FIELDS,
    AuditQuery,
    AuditRecord,
    DeliveryQuery,
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    audit_from_doc,
    audit_to_doc,
    dumps,
    loads,
)

__all__ = [
    "AUDIT_COLUMNS",
    "EVENT_COLUMNS",
    "KEY_COLUMNS",
    "NAMESPACE_COLUMNS",
    "Params",
    "audit_from_row",
    "audit_rows",
    "due_deliveries_sql",
    "event_from_row",
    "event_rows",
    "expired_jobs_sql",
    "key_from_row",
    "key_row",
    "list_audit_sql",
    "list_deliveries_sql",
    "list_jobs_sql",
    "list_namespaces_sql",
    "namespace_from_row",
    "outbox_stats_sql",
    "update_key_sql",
]

#: columns of ``events`` that make an :class:`EventRecord`, in this order
EVENT_COLUMNS = "seq, kind, at, version, chunk_index, format, data, codec, digest, byte_offset"


#: columns of ``api_keys`` that make a :class:`KeyRecord`, in this order
KEY_COLUMNS = (
    "namespace, key_id, role, secret_hash, created_at, name, expires_at, revoked_at, last_used_at"
)

#: columns of ``audit_log``, in this order
AUDIT_COLUMNS = "namespace, entry_id, at, expires_at, doc"


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


def key_row(key: KeyRecord) -> tuple[Any, ...]:
    """The values of :data:`KEY_COLUMNS` for ``key``."""
    return (
        key.namespace,
        key.key_id,
        key.role,
        key.secret_hash,
        key.created_at,
        key.name,
        key.expires_at,
        key.revoked_at,
        key.last_used_at,
    )


def key_from_row(row: Iterable[Any]) -> KeyRecord:
    namespace, key_id, role, secret_hash, created_at, name, expires, revoked, used = row
    return KeyRecord(
        namespace=namespace,
        key_id=key_id,
        role=role,
        secret_hash=secret_hash,
        created_at=created_at,
        name=name,
        expires_at=expires,
        revoked_at=revoked,
        last_used_at=used,
    )


def update_key_sql(
    namespace: str, key_id: str, changes: Mapping[str, int | None], params: Params
) -> str:
    """``UPDATE`` of only the changed columns of one key (no ``RETURNING``)."""
    fields = sorted(changes)
    if not fields or not set(fields) <= KEY_MUTABLE_FIELDS:
        raise ValueError(f"update_key changes {fields}")  # column names go into the SQL
    assignments = ", ".join(f"{f} = {params(changes[f])}" for f in fields)
    return (
        f"UPDATE api_keys SET {assignments} "
        f"WHERE namespace = {params(namespace)} AND key_id = {params(key_id)}"
    )


NAMESPACE_COLUMNS = "name, config, created_at, updated_at"


def namespace_from_row(row: Iterable[Any]) -> NamespaceRecord:
    name, config, created_at, updated_at = row
    return NamespaceRecord(name, loads(config), created_at, updated_at)


def list_namespaces_sql(after: str | None, limit: int, params: Params) -> str:
    """Namespaces in name order after ``after`` (exclusive), at most ``limit``."""
    where = "" if after is None else f"WHERE name > {params(after)} "
    return f"SELECT {NAMESPACE_COLUMNS} FROM namespaces {where}ORDER BY name LIMIT {params(limit)}"


def audit_rows(entries: Sequence[AuditRecord]) -> list[tuple[Any, ...]]:
    """The values of :data:`AUDIT_COLUMNS` for each entry (the document as JSON bytes)."""
    return [(e.namespace, e.entry_id, e.at, e.expires_at, dumps(audit_to_doc(e))) for e in entries]


def audit_from_row(row: Iterable[Any]) -> AuditRecord:
    namespace, entry_id, at, expires_at, doc = row
    return audit_from_doc(namespace, entry_id, at, expires_at, loads(doc))


def list_audit_sql(namespace: str, query: AuditQuery, params: Params) -> str:
    """One page of a namespace's audit log, newest (largest id) first."""
    where = [f"namespace = {params(namespace)}"]
    if query.min_id is not None:
        where.append(f"entry_id >= {params(query.min_id)}")
    if query.max_id is not None:
        where.append(f"entry_id < {params(query.max_id)}")
    if query.alive_at is not None:
        where.append(f"expires_at > {params(query.alive_at)}")
    return (
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
        f"ORDER BY entry_id DESC LIMIT {params(query.limit)}"
    )


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
