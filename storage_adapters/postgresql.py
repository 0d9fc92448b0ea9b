"""``postgresql://user:pass@host:5432/db``: PostgreSQL through asyncpg.

Every write is a single SQL statement, so it is atomic on its own and costs
one round trip: data-modifying CTEs insert or update the job row and append
its log entries together, and the compare-and-set is the ``WHERE revision =``
of the update (under READ COMMITTED a concurrent writer waits for the first,
then sees the new revision and matches nothing). Options in the URL query
(the rest of the query is handed to asyncpg, e.g. ``sslmode``):

* ``pool_size`` — connections at most (default from ``AOS_STORE_POOL_SIZE``, 20);
* ``command_timeout`` — seconds a statement may take (default 10);
* ``connect_timeout`` — seconds to connect or to wait for a pooled connection (default 5).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg

from sharding import shard_of

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

from .base import Capability, StorageAdapter, StoreURL
from .errors import (
    AlreadyExists,
    ConfigurationError,
    NotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
)
from .records import (
    DELIVERY_COLUMNS,
    AuditQuery,
    AuditRecord,
    DeliveryQuery,
    DeliveryRecord,
    EndpointRecord,
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    OutboxStats,
    delivery_from_row,
    delivery_row,
    delivery_to_doc,
    dumps,
    job_from_doc,
    job_to_doc,
    loads,
)
from .sql import (
    AUDIT_COLUMNS,
    EVENT_COLUMNS,
    KEY_COLUMNS,
    NAMESPACE_COLUMNS,
    Params,
    audit_from_row,
    audit_rows,
    due_deliveries_sql,
    event_from_row,
    expired_jobs_sql,
    key_from_row,
    key_row,
    list_audit_sql,
    list_deliveries_sql,
    list_jobs_sql,
    list_namespaces_sql,
    namespace_from_row,
    outbox_stats_sql,
    update_key_sql,
)

__all__ = ["MIGRATIONS", "PostgreSQLAdapter"]

T = TypeVar("T")
_Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

#: Versioned schema; each runs once, in order, in its own transaction.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE namespaces (
            name        text COLLATE "C" PRIMARY KEY,
            config      bytea NOT NULL,
            created_at  bigint NOT NULL,
            updated_at  bigint NOT NULL
        );
        CREATE TABLE api_keys (
            namespace   text COLLATE "C" NOT NULL,
            key_id      text COLLATE "C" NOT NULL,
            role        text NOT NULL,
            secret_hash text NOT NULL,
            created_at  bigint NOT NULL,
            PRIMARY KEY (namespace, key_id)
        );
        CREATE TABLE jobs (
            namespace   text COLLATE "C" NOT NULL,
            job_id      text COLLATE "C" NOT NULL,
            revision    bigint NOT NULL,
            status      text NOT NULL,
            created_at  bigint NOT NULL,
            expires_at  bigint,
            doc         bytea NOT NULL,
            PRIMARY KEY (namespace, job_id)
        );
        CREATE INDEX jobs_by_created ON jobs (namespace, created_at, job_id);
        CREATE TABLE job_tags (
            namespace   text COLLATE "C" NOT NULL,
            tag         text COLLATE "C" NOT NULL,
            created_at  bigint NOT NULL,
            job_id      text COLLATE "C" NOT NULL,
            PRIMARY KEY (namespace, tag, created_at, job_id)
        );
        CREATE TABLE events (
            namespace   text COLLATE "C" NOT NULL,
            job_id      text COLLATE "C" NOT NULL,
            seq         bigint NOT NULL,
            kind        text NOT NULL,
            at          bigint NOT NULL,
            version     integer NOT NULL,
            chunk_index integer NOT NULL,
            format      text NOT NULL,
            data        bytea NOT NULL,
            PRIMARY KEY (namespace, job_id, seq)
        );
        CREATE UNIQUE INDEX events_chunks
            ON events (namespace, job_id, version, chunk_index) WHERE chunk_index >= 0;
        """,
    ),
    (
        2,
        """
        CREATE TABLE deliveries (
            namespace       text COLLATE "C" NOT NULL,
            delivery_id     text COLLATE "C" NOT NULL,
            job_id          text COLLATE "C" NOT NULL,
            shard           integer NOT NULL,
            state           text NOT NULL,
            attempts        integer NOT NULL,
            next_attempt_at bigint NOT NULL,
            created_at      bigint NOT NULL,
            updated_at      bigint NOT NULL,
            lease_owner     text,
            lease_until     bigint,
            payload         bytea NOT NULL,
            doc             bytea NOT NULL,
            PRIMARY KEY (namespace, delivery_id)
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at, shard)
            WHERE state = 'pending';
        CREATE INDEX deliveries_by_job ON deliveries (namespace, job_id, created_at);
        CREATE INDEX deliveries_by_state ON deliveries (namespace, state, created_at);
        CREATE TABLE webhook_endpoints (
            namespace   text COLLATE "C" NOT NULL,
            url         text NOT NULL,
            disabled_at bigint,
            reason      text,
            PRIMARY KEY (namespace, url)
        );
        """,
    ),
    (
        3,
        """
        ALTER TABLE events ADD COLUMN codec text NOT NULL DEFAULT '';
        ALTER TABLE events ADD COLUMN digest bytea;
        ALTER TABLE events ADD COLUMN byte_offset bigint NOT NULL DEFAULT 0;
        -- Chunks arrive compressed (or incompressible): TOAST them out of line
        -- without trying pglz on them again.
        ALTER TABLE events ALTER COLUMN data SET STORAGE EXTERNAL;
        UPDATE events e SET byte_offset = o.byte_offset FROM (
            SELECT namespace, job_id, seq, COALESCE(SUM(length(data)) OVER (
                PARTITION BY namespace, job_id, version ORDER BY chunk_index
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS byte_offset
            FROM events WHERE chunk_index >= 0
        ) o WHERE e.namespace = o.namespace AND e.job_id = o.job_id AND e.seq = o.seq;
        ALTER TABLE jobs ADD COLUMN shard integer NOT NULL DEFAULT 0;
        CREATE INDEX jobs_expiring ON jobs (expires_at, shard) WHERE expires_at IS NOT NULL;
        """,
    ),
    (
        4,
        """
        ALTER TABLE api_keys ADD COLUMN name text, ADD COLUMN expires_at bigint,
            ADD COLUMN revoked_at bigint, ADD COLUMN last_used_at bigint;
        CREATE TABLE audit_log (
            namespace   text COLLATE "C" NOT NULL,
            entry_id    text COLLATE "C" NOT NULL,
            at          bigint NOT NULL,
            expires_at  bigint NOT NULL,
            doc         bytea NOT NULL,
            PRIMARY KEY (namespace, entry_id)
        );
        CREATE INDEX audit_log_expiring ON audit_log (expires_at);
        """,
    ),
]

# A lock number of our own for pg_advisory_xact_lock while migrating.
_MIGRATION_LOCK = 0x414F535F4D4947  # "AOS_MIG"

_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


_EVENT_WIDTH = 10  # parameters of one log entry


def _values_of_events(first: int, count: int) -> str:
    """``SELECT`` rows of ``count`` log entries whose parameters start at ``$first``.

    Plain parameters rather than arrays: asyncpg encodes arrays element by
    element in Python, which cost more than the whole statement. One SQL text
    per count, so the prepared statements stay few (a write appends 1-3 entries).
    """
    rows = []
    for n in range(count):
        p = first + _EVENT_WIDTH * n
        rows.append(
            f"($1, $2, ${p}::bigint, ${p + 1}::text, ${p + 2}::bigint, ${p + 3}::integer, "
            f"${p + 4}::integer, ${p + 5}::text, ${p + 6}::bytea, ${p + 7}::text, "
            f"${p + 8}::bytea, ${p + 9}::bigint)"
        )
    return (
        f"INSERT INTO events (namespace, job_id, {EVENT_COLUMNS}) "
        f"SELECT * FROM (VALUES {', '.join(rows)}) AS e WHERE EXISTS (SELECT FROM job)"
    )


_DELIVERY_TYPES = (
    "text",
    "text",
    "text",
    "integer",
    "text",
    "integer",
    "bigint",
    "bigint",
    "bigint",
    "text",
    "bigint",
    "bytea",
    "bytea",
)


def _values_of_deliveries(first: int, count: int) -> str:
    """A CTE step queuing ``count`` deliveries whose parameters start at ``$first``."""
    if not count:
        return ""
    width = len(_DELIVERY_TYPES)
    rows = [
        "("
        + ", ".join(f"${first + width * n + i}::{t}" for i, t in enumerate(_DELIVERY_TYPES))
        + ")"
        for n in range(count)
    ]
    return (
        f", outbox AS (INSERT INTO deliveries ({DELIVERY_COLUMNS}) "
        f"SELECT * FROM (VALUES {', '.join(rows)}) AS d WHERE EXISTS (SELECT FROM job))"
    )


@functools.lru_cache(maxsize=128)
def _create_job_sql(events: int, tags: int, deliveries: int) -> str:
    """$1 namespace, $2 job, $3 revision, $4 status, $5 created, $6 expires, $7 doc,
    $8 shard, then the tags, the log entries and the deliveries."""
    tag_rows = ", ".join(f"(${9 + n})" for n in range(tags))
    tag_cte = (
        f"tags AS (INSERT INTO job_tags (namespace, tag, created_at, job_id) "
        f"SELECT $1, t.tag, $5, $2 FROM (VALUES {tag_rows}) AS t(tag) "
        f"WHERE EXISTS (SELECT FROM job)), "
        if tags
        else ""
    )
    return f"""
        WITH job AS (
            INSERT INTO jobs (namespace, job_id, revision, status, created_at, expires_at, doc,
                              shard)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (namespace, job_id) DO NOTHING
            RETURNING 1
        ), {tag_cte}log AS ({_values_of_events(9 + tags, events)})
        {_values_of_deliveries(9 + tags + _EVENT_WIDTH * events, deliveries)}
        SELECT count(*) FROM job
    """


@functools.lru_cache(maxsize=128)
def _update_job_sql(events: int, deliveries: int) -> str:
    """$1 namespace, $2 job, $3 revision, $4 status, $5 expires, $6 doc,
    $7 expected revision, $8 created, then the log entries and the deliveries."""
    log = f", log AS ({_values_of_events(9, events)})" if events else ""
    return f"""
        WITH job AS (
            UPDATE jobs SET revision = $3, status = $4, expires_at = $5, doc = $6
            WHERE namespace = $1 AND job_id = $2 AND revision = $7 AND created_at = $8
            RETURNING 1
        ){log}
        {_values_of_deliveries(9 + _EVENT_WIDTH * events, deliveries)}
        SELECT count(*) FROM job
    """


# One piece of a purge, atomic in one statement: up to $4 log entries and then
# deliveries of the job created at $3; the job row and tags once nothing is left.
_PURGE_JOB = """
    WITH job AS (
        SELECT 1 FROM jobs WHERE namespace = $1 AND job_id = $2 AND created_at = $3
        FOR UPDATE
    ), log AS (
        DELETE FROM events WHERE ctid IN (
            SELECT ctid FROM events WHERE namespace = $1 AND job_id = $2 ORDER BY seq LIMIT $4
        ) AND EXISTS (SELECT FROM job) RETURNING 1
    ), outbox AS (
        DELETE FROM deliveries WHERE ctid IN (
            SELECT ctid FROM deliveries WHERE namespace = $1 AND job_id = $2
            LIMIT GREATEST($4 - (SELECT count(*) FROM log), 0)
        ) AND EXISTS (SELECT FROM job) RETURNING 1
    ), counts AS (
        SELECT (SELECT count(*) FROM log) + (SELECT count(*) FROM outbox) AS removed
    ), tags AS (
        DELETE FROM job_tags WHERE namespace = $1 AND job_id = $2
        AND (SELECT removed FROM counts) < $4 AND EXISTS (SELECT FROM job)
    ), gone AS (
        DELETE FROM jobs WHERE namespace = $1 AND job_id = $2 AND created_at = $3
        AND (SELECT removed FROM counts) < $4 RETURNING 1
    )
    SELECT NOT EXISTS (SELECT FROM job) OR EXISTS (SELECT FROM gone)
"""

_DELETE_JOB = """
    WITH job AS (
        DELETE FROM jobs WHERE namespace = $1 AND job_id = $2 AND revision = $3 RETURNING 1
    ), log AS (
        DELETE FROM events WHERE namespace = $1 AND job_id = $2 AND EXISTS (SELECT FROM job)
    ), tags AS (
        DELETE FROM job_tags WHERE namespace = $1 AND job_id = $2 AND EXISTS (SELECT FROM job)
    )
    SELECT count(*) FROM job
"""


# A batch of audit entries in one statement; an entry stored already is skipped.
_APPEND_AUDIT = f"""
    INSERT INTO audit_log ({AUDIT_COLUMNS})
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
    ON CONFLICT (namespace, entry_id) DO NOTHING
"""

# Up to $2 entries expired at $1, earliest first.
_PURGE_AUDIT = """
    WITH gone AS (
        DELETE FROM audit_log WHERE ctid IN (
            SELECT ctid FROM audit_log WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
        ) RETURNING 1
    )
    SELECT count(*) FROM gone
"""

_CLAIMED = ", ".join(f"d.{c.strip()}" for c in DELIVERY_COLUMNS.split(","))

_FINISH = """
    UPDATE deliveries d SET state = v.state, attempts = v.attempts,
        next_attempt_at = v.next_attempt_at, updated_at = v.updated_at, doc = v.doc,
        lease_owner = NULL, lease_until = NULL
    FROM unnest($2::text[], $3::text[], $4::text[], $5::integer[], $6::bigint[], $7::bigint[],
                $8::bytea[])
        AS v(namespace, delivery_id, state, attempts, next_attempt_at, updated_at, doc)
    WHERE d.namespace = v.namespace AND d.delivery_id = v.delivery_id AND d.lease_owner = $1
    RETURNING d.namespace, d.delivery_id
"""


def _event_params(events: Sequence[EventRecord]) -> list[Any]:
    return [
        value
        for e in events
        for value in (
            e.seq,
            e.kind.value,
            e.at,
            e.version,
            e.index,
            e.format,
            e.data,
            e.codec,
            e.digest,
            e.offset,
        )
    ]


def _delivery_params(deliveries: Sequence[DeliveryRecord]) -> list[Any]:
    return [value for d in deliveries for value in delivery_row(d)]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: a round trip per request for
    session state (settings, LISTEN, session locks, cursors) this adapter never
    leaves behind. Open transactions are still rolled back by the pool."""


class PostgreSQLAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.TRANSACTIONS})

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        options = dict(url.options)
        options.pop("pool_size", None)
        try:
            self.command_timeout = float(options.pop("command_timeout", 10))
            self.connect_timeout = float(options.pop("connect_timeout", 5))
        except ValueError as exc:
            raise ConfigurationError(f"postgresql options must be numbers: {exc}") from exc
        parts = urlsplit(url.raw)
        self._dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(options)))
        self._pool: asyncpg.Pool | None = None

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self.pool_size,
            command_timeout=self.command_timeout,
            timeout=self.connect_timeout,
            max_inactive_connection_lifetime=60,
            reset=_keep_session,
        )

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self, apply: bool) -> list[int]:
        async def body(conn: _Conn) -> list[int]:
            async with conn.transaction():
                if apply:
                    # Nodes starting together migrate one after the other.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                pending = [v for v, _ in MIGRATIONS if v not in applied]
                if not apply:
                    return pending
                for version, script in MIGRATIONS:
                    if version in pending:
                        await conn.execute(script)
                        if version == 3:  # the shard of each namespace, hashed in Python
                            namespaces = [
                                r[0]
                                for r in await conn.fetch("SELECT DISTINCT namespace FROM jobs")
                            ]
                            await conn.executemany(
                                "UPDATE jobs SET shard = $1 WHERE namespace = $2",
                                [(shard_of(ns), ns) for ns in namespaces],
                            )
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
                return pending

        return await self._with_conn(body)

    async def _ping(self) -> None:
        await self._with_conn(lambda conn: conn.fetchval("SELECT 1"))

    # -- helpers -----------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, _UNAVAILABLE):
            return StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}")
        return super()._translate(exc)

    async def _with_conn(self, body: Callable[[_Conn], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgresql store is not open")
        for attempt in (1, 2):
            try:
                # asyncio.timeout, not acquire(timeout=...): that one starts a task.
                async with asyncio.timeout(self.connect_timeout):
                    conn = await pool.acquire()
                try:
                    return await body(conn)
                except BaseException:
                    # The connection may still be reading the rest of a failed
                    # exchange; with no reset query on release, it must not go
                    # back to the pool as it is.
                    conn.terminate()
                    raise
                finally:
                    await pool.release(conn)
            except asyncpg.exceptions.InternalClientError as exc:
                # A pooled connection the server had already closed (a FATAL
                # message while it sat idle) refuses the statement before
                # sending it, so it is safe to send once more on a fresh one.
                await pool.expire_connections()
                if attempt == 2 or "cannot switch to state" not in str(exc):
                    raise
            except _UNAVAILABLE:
                # After a server restart every pooled connection is dead: replace
                # the idle ones now rather than fail one request for each of them.
                await pool.expire_connections()
                raise
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._with_conn(lambda conn: conn.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._with_conn(lambda conn: conn.fetchval(sql, *args))

    async def _missing_or_moved(
        self, namespace: str, job_id: str, expected_revision: int
    ) -> StoreError:
        revision = await self._fetchval(
            "SELECT revision FROM jobs WHERE namespace = $1 AND job_id = $2", namespace, job_id
        )
        if revision is None:
            return NotFound(f"job {job_id} does not exist")
        return RevisionConflict(f"job {job_id} is at revision {revision}, not {expected_revision}")

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await self._fetchval(
            "INSERT INTO namespaces (name, config, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
            "config = excluded.config, updated_at = excluded.updated_at",
            namespace.name,
            dumps(namespace.config),
            namespace.created_at,
            namespace.updated_at,
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        rows = await self._fetch(
            f"SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE name = $1", name
        )
        return namespace_from_row(rows[0]) if rows else None

    async def _create_key(self, key: KeyRecord) -> None:
        row = key_row(key)
        marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
        inserted = await self._fetchval(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({marks}) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            *row,
        )
        if inserted is None:
            raise AlreadyExists(f"key {key.key_id} exists")

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = $1 AND key_id = $2",
            namespace,
            key_id,
        )
        return key_from_row(rows[0]) if rows else None

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        params = Params("numeric")
        rows = await self._fetch(list_namespaces_sql(after, limit, params), *params.values)
        return [namespace_from_row(row) for row in rows]

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = $1 ORDER BY key_id", namespace
        )
        return [key_from_row(row) for row in rows]

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        params = Params("numeric")
        sql = update_key_sql(namespace, key_id, changes, params) + " RETURNING 1"
        return await self._fetchval(sql, *params.values) is not None

    # -- audit log ---------------------------------------------------------

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        columns = list(zip(*audit_rows(entries), strict=True))
        await self._fetchval(_APPEND_AUDIT, *(list(c) for c in columns))

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        params = Params("numeric")
        rows = await self._fetch(list_audit_sql(namespace, query, params), *params.values)
        return [audit_from_row(row) for row in rows]

    async def _purge_audit(self, now: int, limit: int) -> int:
        count: int = await self._fetchval(_PURGE_AUDIT, now, limit)
        return count

    # -- jobs --------------------------------------------------------------

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        tags = sorted(set(job.tags))
        created = await self._fetchval(
            _create_job_sql(len(events), len(tags), len(deliveries)),
            job.namespace,
            job.job_id,
            job.revision,
            job.status.value,
            job.created_at,
            job.expires_at,
            dumps(job_to_doc(job)),
            shard_of(job.namespace),
            *tags,
            *_event_params(events),
            *_delivery_params(deliveries),
        )
        if not created:
            raise AlreadyExists(f"job {job.job_id} exists")

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        doc = await self._fetchval(
            "SELECT doc FROM jobs WHERE namespace = $1 AND job_id = $2", namespace, job_id
        )
        return job_from_doc(loads(doc)) if doc is not None else None

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        updated = await self._fetchval(
            _update_job_sql(len(events), len(deliveries)),
            job.namespace,
            job.job_id,
            job.revision,
            job.status.value,
            job.expires_at,
            dumps(job_to_doc(job)),
            expected_revision,
            job.created_at,
            *_event_params(events),
            *_delivery_params(deliveries),
        )
        if not updated:
            raise await self._missing_or_moved(job.namespace, job.job_id, expected_revision)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        deleted = await self._fetchval(_DELETE_JOB, namespace, job_id, expected_revision)
        if not deleted:
            raise await self._missing_or_moved(namespace, job_id, expected_revision)

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        params = Params("numeric")
        rows = await self._fetch(expired_jobs_sql(now, limit, shards, params), *params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        done: bool = await self._fetchval(_PURGE_JOB, namespace, job_id, created_at, batch)
        return done

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = $1 AND job_id = $2 "
            "AND seq > $3 ORDER BY seq LIMIT $4",
            namespace,
            job_id,
            after_seq,
            limit,
        )
        return [event_from_row(row) for row in rows]

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = $1 AND job_id = $2 "
            "AND version = $3 AND chunk_index > $4 ORDER BY chunk_index LIMIT $5",
            namespace,
            job_id,
            version,
            max(after_index, -1),
            limit,
        )
        return [event_from_row(row) for row in rows]

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0:
            return None
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = $1 AND job_id = $2 "
            "AND version = $3 AND chunk_index = $4",
            namespace,
            job_id,
            version,
            index,
        )
        return event_from_row(rows[0]) if rows else None

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        params = Params("numeric")
        sql = list_jobs_sql(namespace, query, params)
        rows = await self._fetch(sql, *params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE namespace = $1 AND delivery_id = $2",
            namespace,
            delivery_id,
        )
        return delivery_from_row(rows[0]) if rows else None

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        params = Params("numeric")
        sql = list_deliveries_sql(namespace, query, params)
        return [delivery_from_row(row) for row in await self._fetch(sql, *params.values)]

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        params = Params("numeric")
        due = due_deliveries_sql(now, limit, shards, params, lock="FOR UPDATE SKIP LOCKED")
        sql = (
            f"WITH due AS ({due}) UPDATE deliveries d SET lease_owner = {params(owner)}, "
            f"lease_until = {params(lease_until)} FROM due "
            f"WHERE d.namespace = due.namespace AND d.delivery_id = due.delivery_id "
            f"RETURNING {_CLAIMED}"
        )
        rows = await self._fetch(sql, *params.values)
        claimed = [delivery_from_row(row) for row in rows]
        claimed.sort(key=lambda d: d.next_attempt_at)
        return claimed

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        rows = await self._fetch(
            _FINISH,
            owner,
            [d.namespace for d in deliveries],
            [d.delivery_id for d in deliveries],
            [d.state.value for d in deliveries],
            [d.attempts for d in deliveries],
            [d.next_attempt_at for d in deliveries],
            [d.updated_at for d in deliveries],
            [dumps(delivery_to_doc(d)) for d in deliveries],
        )
        done = {(row[0], row[1]) for row in rows}
        return [(d.namespace, d.delivery_id) in done for d in deliveries]

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        status = await self._with_conn(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, "
                "updated_at = $1, lease_owner = NULL, lease_until = NULL "
                "WHERE namespace = $2 AND delivery_id = ANY($3::text[]) "
                "AND (lease_until IS NULL OR lease_until <= $1)",
                now,
                namespace,
                list(delivery_ids),
            )
        )
        return int(status.split()[-1])

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        params = Params("numeric")
        rows = await self._fetch(outbox_stats_sql(shards, params), *params.values)
        return OutboxStats(rows[0][0], rows[0][1])

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        await self._fetchval(
            "INSERT INTO webhook_endpoints (namespace, url, disabled_at, reason) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, url) DO UPDATE SET "
            "disabled_at = excluded.disabled_at, reason = excluded.reason",
            endpoint.namespace,
            endpoint.url,
            endpoint.disabled_at,
            endpoint.reason,
        )

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        rows = await self._fetch(
            "SELECT disabled_at, reason FROM webhook_endpoints WHERE namespace = $1 AND url = $2",
            namespace,
            url,
        )
        return EndpointRecord(namespace, url, rows[0][0], rows[0][1]) if rows else None

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        rows = await self._fetch(
            "SELECT url, disabled_at, reason FROM webhook_endpoints WHERE namespace = $1 "
            "ORDER BY url",
            namespace,
        )
        return [EndpointRecord(namespace, row[0], row[1], row[2]) for row in rows]
