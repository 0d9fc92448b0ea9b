"""``mysql://user:pass@host:3306/db``: MySQL and MariaDB through aiomysql.

Each write is one InnoDB transaction, sent with its statements in one round
trip (multi-statements) and committed in a second: the job row first
(``INSERT``, or an ``UPDATE … WHERE revision = ?`` whose locking read makes a
concurrent writer wait and then match nothing), then its log entries. Ids and tags are ASCII
with binary collation, so ordering matches the other stores. MySQL has no
partial indexes, so non-chunk log entries store a ``NULL`` chunk index.
Options in the URL query:

* ``pool_size`` — connections at most (default from ``AOS_STORE_POOL_SIZE``, 20);
* ``connect_timeout`` — seconds to connect (default 5);
* ``ssl`` — ``true`` to require TLS with the system's CA bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import warnings
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import aiomysql
import pymysql
import pymysql.converters
from pymysql.constants import CLIENT

from sharding import shard_of

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
    event_rows,
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

__all__ = ["MIGRATIONS", "MySQLAdapter"]

T = TypeVar("T")

_ID = "CHARACTER SET ascii COLLATE ascii_bin"
#: free text, whatever the database's default character set
_TEXT = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


@dataclasses.dataclass(frozen=True, slots=True)
class Unless:
    """A migration statement skipped when ``check`` (a query) returns a row:
    MySQL has no ``ADD COLUMN IF NOT EXISTS``."""

    check: str
    statement: str


def _add_column(table: str, column: str, definition: str) -> Unless:
    return Unless(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() "
        f"AND table_name = '{table}' AND column_name = '{column}'",
        f"ALTER TABLE {table} ADD COLUMN {column} {definition}",
    )


def _add_index(table: str, index: str, columns: str) -> Unless:
    return Unless(
        "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
        f"AND table_name = '{table}' AND index_name = '{index}'",
        f"CREATE INDEX {index} ON {table} ({columns})",
    )


#: Versioned schema. MySQL commits DDL at once, so each statement is written to
#: be safe to run again should a migration stop half way.
MIGRATIONS: list[tuple[int, list[str | Unless]]] = [
    (
        1,
        [
            f"""CREATE TABLE IF NOT EXISTS namespaces (
                name        VARCHAR(63) {_ID} NOT NULL PRIMARY KEY,
                config      LONGBLOB NOT NULL,
                created_at  BIGINT NOT NULL,
                updated_at  BIGINT NOT NULL
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS api_keys (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                key_id      VARCHAR(32) {_ID} NOT NULL,
                role        VARCHAR(16) {_ID} NOT NULL,
                secret_hash CHAR(64) {_ID} NOT NULL,
                created_at  BIGINT NOT NULL,
                PRIMARY KEY (namespace, key_id)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS jobs (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                job_id      VARCHAR(128) {_ID} NOT NULL,
                revision    BIGINT NOT NULL,
                status      VARCHAR(16) {_ID} NOT NULL,
                created_at  BIGINT NOT NULL,
                expires_at  BIGINT NULL,
                doc         LONGBLOB NOT NULL,
                PRIMARY KEY (namespace, job_id),
                KEY jobs_by_created (namespace, created_at, job_id)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS job_tags (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                tag         VARCHAR(64) {_ID} NOT NULL,
                created_at  BIGINT NOT NULL,
                job_id      VARCHAR(128) {_ID} NOT NULL,
                PRIMARY KEY (namespace, tag, created_at, job_id)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS events (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                job_id      VARCHAR(128) {_ID} NOT NULL,
                seq         BIGINT NOT NULL,
                kind        VARCHAR(16) {_ID} NOT NULL,
                at          BIGINT NOT NULL,
                version     INT NOT NULL,
                chunk_index INT NULL,
                format      VARCHAR(16) {_ID} NOT NULL,
                data        LONGBLOB NOT NULL,
                PRIMARY KEY (namespace, job_id, seq),
                UNIQUE KEY events_chunks (namespace, job_id, version, chunk_index)
            ) ENGINE=InnoDB""",
        ],
    ),
    (
        2,
        [
            f"""CREATE TABLE IF NOT EXISTS deliveries (
                namespace       VARCHAR(63) {_ID} NOT NULL,
                delivery_id     VARCHAR(64) {_ID} NOT NULL,
                job_id          VARCHAR(128) {_ID} NOT NULL,
                shard           INT NOT NULL,
                state           VARCHAR(16) {_ID} NOT NULL,
                attempts        INT NOT NULL,
                next_attempt_at BIGINT NOT NULL,
                created_at      BIGINT NOT NULL,
                updated_at      BIGINT NOT NULL,
                lease_owner     VARCHAR(255) NULL,
                lease_until     BIGINT NULL,
                payload         LONGBLOB NOT NULL,
                doc             LONGBLOB NOT NULL,
                PRIMARY KEY (namespace, delivery_id),
                KEY deliveries_due (state, next_attempt_at, shard),
                KEY deliveries_by_job (namespace, job_id, created_at),
                KEY deliveries_by_state (namespace, state, created_at)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS webhook_endpoints (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                url_hash    CHAR(64) {_ID} NOT NULL,
                url         TEXT NOT NULL,
                disabled_at BIGINT NULL,
                reason      TEXT NULL,
                PRIMARY KEY (namespace, url_hash)
            ) ENGINE=InnoDB""",
        ],
    ),
    (
        3,
        [
            _add_column("events", "codec", f"VARCHAR(16) {_ID} NOT NULL DEFAULT ''"),
            _add_column("events", "digest", "VARBINARY(32) NULL"),
            _add_column("events", "byte_offset", "BIGINT NOT NULL DEFAULT 0"),
            """UPDATE events e JOIN (
                SELECT namespace, job_id, seq, COALESCE(SUM(LENGTH(data)) OVER (
                    PARTITION BY namespace, job_id, version ORDER BY chunk_index
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS byte_offset
                FROM events WHERE chunk_index IS NOT NULL
            ) o ON e.namespace = o.namespace AND e.job_id = o.job_id AND e.seq = o.seq
            SET e.byte_offset = o.byte_offset""",
            _add_column("jobs", "shard", "INT NOT NULL DEFAULT 0"),
            _add_index("jobs", "jobs_expiring", "expires_at, shard"),
        ],
    ),
    (
        4,
        [
            _add_column("api_keys", "name", f"TEXT {_TEXT} NULL"),
            _add_column("api_keys", "expires_at", "BIGINT NULL"),
            _add_column("api_keys", "revoked_at", "BIGINT NULL"),
            _add_column("api_keys", "last_used_at", "BIGINT NULL"),
            f"""CREATE TABLE IF NOT EXISTS audit_log (
                namespace   VARCHAR(63) {_ID} NOT NULL,
                entry_id    VARCHAR(64) {_ID} NOT NULL,
                at          BIGINT NOT NULL,
                expires_at  BIGINT NOT NULL,
                doc         LONGBLOB NOT NULL,
                PRIMARY KEY (namespace, entry_id),
                KEY audit_log_expiring (expires_at)
            ) ENGINE=InnoDB""",
        ],
    ),
]

# Client errors that mean the server is gone or refusing: connection lost,
# server gone away, cannot connect, too many connections, lock wait timeout,
# deadlock, read-only, shutdown in progress, query interrupted.
_UNAVAILABLE_CODES = {1040, 1053, 1205, 1213, 1290, 1317, 1836, 2002, 2003, 2006, 2013, 2055}
_DUPLICATE_KEY = 1062


Statement = tuple[str, Sequence[Any]]


class _Hex:
    """A bytes parameter sent as a hex literal. PyMySQL escapes ``bytes`` in
    Python, about 80 ms per MiB; ``bytes.hex()`` takes 6 ms, for twice the
    bytes on the wire. Used for chunk data."""

    __slots__ = ("literal",)

    def __init__(self, data: bytes) -> None:
        self.literal = "X'" + data.hex() + "'"


pymysql.converters.encoders[_Hex] = lambda value, mapping=None: value.literal


def _insert_events(job: JobRecord, events: Sequence[EventRecord]) -> Statement:
    rows = event_rows(job, events, null_index=True)
    marks = ", ".join(["(" + ", ".join(["%s"] * 12) + ")"] * len(rows))
    data = EVENT_COLUMNS.split(", ").index("data") + 2  # after namespace and job_id
    return (
        f"INSERT INTO events (namespace, job_id, {EVENT_COLUMNS}) VALUES {marks}",
        [
            _Hex(value) if column == data else value
            for row in rows
            for column, value in enumerate(row)
        ],
    )


def _insert_deliveries(deliveries: Sequence[DeliveryRecord]) -> list[Statement]:
    if not deliveries:
        return []
    marks = ", ".join(["(" + ", ".join(["%s"] * 13) + ")"] * len(deliveries))
    return [
        (
            f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES {marks}",
            [value for d in deliveries for value in delivery_row(d)],
        )
    ]


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


async def _begin(cur: aiomysql.Cursor, statements: Sequence[Statement]) -> list[int]:
    """Open a transaction and run ``statements`` in it, in one round trip.

    Returns each statement's affected-row count; the caller commits or rolls
    back. If a statement fails, the server runs none after it, and the
    transaction is rolled back here before the error goes on.
    """
    sql = "START TRANSACTION; " + "; ".join(text for text, _ in statements)
    args = [value for _, values in statements for value in values]
    counts: list[int] = []
    try:
        await cur.execute(sql, args)  # the result of START TRANSACTION
        for _ in statements:
            await cur.nextset()
            counts.append(cur.rowcount)
    except BaseException:
        if not cur.connection.closed:
            while await cur.nextset():
                pass
            await cur.execute("ROLLBACK")
        raise
    return counts


class MySQLAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.TRANSACTIONS})

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        options = dict(url.options)
        options.pop("pool_size", None)
        try:
            self.connect_timeout = float(options.pop("connect_timeout", 5))
        except ValueError as exc:
            raise ConfigurationError(f"mysql options must be numbers: {exc}") from exc
        self.use_ssl = options.pop("ssl", "false").lower() in {"1", "true", "yes", "required"}
        if options:
            raise ConfigurationError(f"unknown mysql options: {', '.join(sorted(options))}")
        if not url.path.strip("/"):
            raise ConfigurationError("mysql:// needs a database: mysql://user:pass@host/db")
        self.database = url.path.strip("/")
        self._pool: aiomysql.Pool | None = None

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        self._pool = await aiomysql.create_pool(
            minsize=1,
            maxsize=self.pool_size,
            host=self.url.host or "127.0.0.1",
            port=self.url.port or 3306,
            user=self.url.username or "root",
            password=self.url.password or "",
            db=self.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=self.connect_timeout,
            pool_recycle=300,
            ssl=ssl.create_default_context() if self.use_ssl else None,
            # A write sends its whole transaction in one round trip (see _begin).
            client_flag=CLIENT.MULTI_STATEMENTS,
        )

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    async def _migrate(self, apply: bool) -> list[int]:
        async def body(cur: aiomysql.Cursor) -> list[int]:
            if apply:
                # Nodes starting together migrate one after the other.
                await cur.execute("SELECT GET_LOCK('aos_schema_migrations', 60)")
            try:
                with warnings.catch_warnings():
                    # "Table already exists" notes of IF NOT EXISTS are expected here.
                    warnings.simplefilter("ignore", pymysql.Warning)
                    await cur.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations (version INT NOT NULL "
                        "PRIMARY KEY, applied_at BIGINT NOT NULL) ENGINE=InnoDB"
                    )
                await cur.execute("SELECT version FROM schema_migrations")
                applied = {row[0] for row in await cur.fetchall()}
                pending = [v for v, _ in MIGRATIONS if v not in applied]
                if not apply:
                    return pending
                for version, statements in MIGRATIONS:
                    if version in pending:
                        for statement in statements:
                            if isinstance(statement, Unless):
                                await cur.execute(statement.check)
                                if await cur.fetchall():
                                    continue
                                statement = statement.statement
                            await cur.execute(statement)
                        if version == 3:  # the shard of each namespace, hashed in Python
                            await cur.execute("SELECT DISTINCT namespace FROM jobs")
                            namespaces = [row[0] for row in await cur.fetchall()]
                            await cur.executemany(
                                "UPDATE jobs SET shard = %s WHERE namespace = %s",
                                [(shard_of(ns), ns) for ns in namespaces],
                            )
                        await cur.execute(
                            "INSERT INTO schema_migrations (version, applied_at) "
                            "VALUES (%s, UNIX_TIMESTAMP(NOW(6)) * 1000000)",
                            (version,),
                        )
                return pending
            finally:
                if apply:
                    await cur.execute("SELECT RELEASE_LOCK('aos_schema_migrations')")

        return await self._with_cursor(body)

    async def _ping(self) -> None:
        await self._fetch("SELECT 1")

    # -- helpers -----------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, pymysql.err.InterfaceError):
            return StoreUnavailable(f"mysql: {exc}")
        code = exc.args[0] if isinstance(exc, pymysql.err.MySQLError) and exc.args else None
        if code in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"mysql: {exc}")
        return super()._translate(exc)

    async def _with_cursor(self, body: Callable[[aiomysql.Cursor], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("mysql store is not open")
        try:
            async with pool.acquire() as conn, conn.cursor() as cur:
                return await body(cur)
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
            # After a server restart every pooled connection is dead: drop the
            # idle ones now rather than fail one request for each of them.
            await pool.clear()
            raise

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def body(cur: aiomysql.Cursor) -> list[tuple[Any, ...]]:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

        return await self._with_cursor(body)

    @staticmethod
    async def _missing_or_moved(
        cur: aiomysql.Cursor, namespace: str, job_id: str, expected_revision: int
    ) -> StoreError:
        await cur.execute(
            "SELECT revision FROM jobs WHERE namespace = %s AND job_id = %s", (namespace, job_id)
        )
        row = await cur.fetchone()
        if row is None:
            return NotFound(f"job {job_id} does not exist")
        return RevisionConflict(f"job {job_id} is at revision {row[0]}, not {expected_revision}")

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await self._fetch(
            "INSERT INTO namespaces (name, config, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            "config = VALUES(config), updated_at = VALUES(updated_at)",
            (namespace.name, dumps(namespace.config), namespace.created_at, namespace.updated_at),
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        rows = await self._fetch(
            f"SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE name = %s", (name,)
        )
        return namespace_from_row(rows[0]) if rows else None

    async def _create_key(self, key: KeyRecord) -> None:
        row = key_row(key)
        try:
            await self._fetch(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({', '.join(['%s'] * len(row))})",
                row,
            )
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == _DUPLICATE_KEY:
                raise AlreadyExists(f"key {key.key_id} exists") from exc
            raise

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = %s AND key_id = %s",
            (namespace, key_id),
        )
        return key_from_row(rows[0]) if rows else None

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        params = Params("format")
        rows = await self._fetch(list_namespaces_sql(after, limit, params), params.values)
        return [namespace_from_row(row) for row in rows]

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = %s ORDER BY key_id",
            (namespace,),
        )
        return [key_from_row(row) for row in rows]

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        params = Params("format")
        sql = update_key_sql(namespace, key_id, changes, params)

        async def body(cur: aiomysql.Cursor) -> bool:
            if await cur.execute(sql, params.values):
                return True
            # MySQL counts the rows changed: a key that already holds these
            # values changes none, yet it is there.
            await cur.execute(
                "SELECT 1 FROM api_keys WHERE namespace = %s AND key_id = %s", (namespace, key_id)
            )
            return bool(await cur.fetchall())

        return await self._with_cursor(body)

    # -- audit log ---------------------------------------------------------

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        marks = ", ".join(["(%s, %s, %s, %s, %s)"] * len(entries))
        # Not INSERT IGNORE, which would also turn errors other than the
        # duplicate key (a value too long) into warnings.
        await self._fetch(
            f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES {marks} "
            "ON DUPLICATE KEY UPDATE entry_id = entry_id",
            [value for row in audit_rows(entries) for value in row],
        )

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        params = Params("format")
        rows = await self._fetch(list_audit_sql(namespace, query, params), params.values)
        return [audit_from_row(row) for row in rows]

    async def _purge_audit(self, now: int, limit: int) -> int:
        async def body(cur: aiomysql.Cursor) -> int:
            count: int = await cur.execute(
                "DELETE FROM audit_log WHERE expires_at <= %s ORDER BY expires_at LIMIT %s",
                (now, limit),
            )
            return count

        return await self._with_cursor(body)

    # -- jobs --------------------------------------------------------------

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        tags = sorted(set(job.tags))
        statements = [
            (
                "INSERT INTO jobs (namespace, job_id, revision, status, created_at, "
                "expires_at, doc, shard) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.namespace,
                    job.job_id,
                    job.revision,
                    job.status.value,
                    job.created_at,
                    job.expires_at,
                    dumps(job_to_doc(job)),
                    shard_of(job.namespace),
                ),
            ),
            _insert_events(job, events),
            *_insert_deliveries(deliveries),
        ]
        if tags:
            statements.append(
                (
                    "INSERT INTO job_tags (namespace, tag, created_at, job_id) VALUES "
                    + ", ".join(["(%s, %s, %s, %s)"] * len(tags)),
                    [v for tag in tags for v in (job.namespace, tag, job.created_at, job.job_id)],
                )
            )

        async def body(cur: aiomysql.Cursor) -> None:
            try:
                await _begin(cur, statements)
            except pymysql.err.IntegrityError as exc:
                if exc.args and exc.args[0] == _DUPLICATE_KEY:
                    raise AlreadyExists(f"job {job.job_id} exists") from exc
                raise
            await cur.execute("COMMIT")

        await self._with_cursor(body)

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        rows = await self._fetch(
            "SELECT doc FROM jobs WHERE namespace = %s AND job_id = %s", (namespace, job_id)
        )
        return job_from_doc(loads(rows[0][0])) if rows else None

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        update = (
            "UPDATE jobs SET revision = %s, status = %s, expires_at = %s, doc = %s "
            "WHERE namespace = %s AND job_id = %s AND revision = %s AND created_at = %s",
            (
                job.revision,
                job.status.value,
                job.expires_at,
                dumps(job_to_doc(job)),
                job.namespace,
                job.job_id,
                expected_revision,
                job.created_at,
            ),
        )

        async def body(cur: aiomysql.Cursor) -> None:
            try:
                logged = [_insert_events(job, events)] if events else []
                updated, *_ = await _begin(cur, [update, *logged, *_insert_deliveries(deliveries)])
            except pymysql.err.IntegrityError as exc:
                # The update matched nothing and the log entries ran into the
                # winner's: the same conflict, seen one statement later.
                if not exc.args or exc.args[0] != _DUPLICATE_KEY:
                    raise
                updated = 0
            if updated != 1:
                await cur.execute("ROLLBACK")
                raise await self._missing_or_moved(
                    cur, job.namespace, job.job_id, expected_revision
                )
            await cur.execute("COMMIT")

        await self._with_cursor(body)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        key = (namespace, job_id)
        statements = [
            (
                "DELETE FROM jobs WHERE namespace = %s AND job_id = %s AND revision = %s",
                (*key, expected_revision),
            ),
            ("DELETE FROM events WHERE namespace = %s AND job_id = %s", key),
            ("DELETE FROM job_tags WHERE namespace = %s AND job_id = %s", key),
        ]

        async def body(cur: aiomysql.Cursor) -> None:
            deleted, *_ = await _begin(cur, statements)
            if deleted != 1:
                await cur.execute("ROLLBACK")
                raise await self._missing_or_moved(cur, namespace, job_id, expected_revision)
            await cur.execute("COMMIT")

        await self._with_cursor(body)

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        params = Params("format")
        rows = await self._fetch(expired_jobs_sql(now, limit, shards, params), params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        key = (namespace, job_id)

        async def body(cur: aiomysql.Cursor) -> bool:
            await cur.execute("START TRANSACTION")
            try:
                await cur.execute(
                    "SELECT 1 FROM jobs WHERE namespace = %s AND job_id = %s AND created_at = %s "
                    "FOR UPDATE",
                    (*key, created_at),
                )
                if not await cur.fetchall():
                    await cur.execute("ROLLBACK")
                    return True
                removed: int = await cur.execute(
                    "DELETE FROM events WHERE namespace = %s AND job_id = %s ORDER BY seq LIMIT %s",
                    (*key, batch),
                )
                if removed < batch:
                    removed += await cur.execute(
                        "DELETE FROM deliveries WHERE namespace = %s AND job_id = %s LIMIT %s",
                        (*key, batch - removed),
                    )
                done = removed < batch
                if done:
                    await cur.execute(
                        "DELETE FROM job_tags WHERE namespace = %s AND job_id = %s", key
                    )
                    await cur.execute("DELETE FROM jobs WHERE namespace = %s AND job_id = %s", key)
            except BaseException:
                if not cur.connection.closed:
                    await cur.execute("ROLLBACK")
                raise
            await cur.execute("COMMIT")
            return done

        return await self._with_cursor(body)

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = %s AND job_id = %s "
            "AND seq > %s ORDER BY seq LIMIT %s",
            (namespace, job_id, after_seq, limit),
        )
        return [event_from_row(row) for row in rows]

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = %s AND job_id = %s "
            "AND version = %s AND chunk_index > %s ORDER BY chunk_index LIMIT %s",
            (namespace, job_id, version, max(after_index, -1), limit),
        )
        return [event_from_row(row) for row in rows]

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0:
            return None
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = %s AND job_id = %s "
            "AND version = %s AND chunk_index = %s",
            (namespace, job_id, version, index),
        )
        return event_from_row(rows[0]) if rows else None

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        params = Params("format")
        sql = list_jobs_sql(namespace, query, params)
        rows = await self._fetch(sql, params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE namespace = %s AND delivery_id = %s",
            (namespace, delivery_id),
        )
        return delivery_from_row(rows[0]) if rows else None

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        params = Params("format")
        sql = list_deliveries_sql(namespace, query, params)
        return [delivery_from_row(row) for row in await self._fetch(sql, params.values)]

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        params = Params("format")
        due = due_deliveries_sql(now, limit, shards, params, lock="FOR UPDATE SKIP LOCKED")

        async def body(cur: aiomysql.Cursor) -> list[DeliveryRecord]:
            await cur.execute("START TRANSACTION")
            try:
                await cur.execute(due, params.values)
                rows = list(await cur.fetchall())
                if rows:
                    keys = ", ".join(["(%s, %s)"] * len(rows))
                    await cur.execute(
                        "UPDATE deliveries SET lease_owner = %s, lease_until = %s "
                        f"WHERE (namespace, delivery_id) IN ({keys})",
                        [owner, lease_until, *(v for row in rows for v in row[:2])],
                    )
                await cur.execute("COMMIT")
            except BaseException:
                if not cur.connection.closed:
                    await cur.execute("ROLLBACK")
                raise
            return [
                dataclasses.replace(
                    delivery_from_row(row), lease_owner=owner, lease_until=lease_until
                )
                for row in rows
            ]

        return await self._with_cursor(body)

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        statements = [
            (
                "UPDATE deliveries SET state = %s, attempts = %s, next_attempt_at = %s, "
                "updated_at = %s, doc = %s, lease_owner = NULL, lease_until = NULL "
                "WHERE namespace = %s AND delivery_id = %s AND lease_owner = %s",
                (
                    d.state.value,
                    d.attempts,
                    d.next_attempt_at,
                    d.updated_at,
                    dumps(delivery_to_doc(d)),
                    d.namespace,
                    d.delivery_id,
                    owner,
                ),
            )
            for d in deliveries
        ]

        async def body(cur: aiomysql.Cursor) -> list[bool]:
            counts = await _begin(cur, statements)
            await cur.execute("COMMIT")
            return [count == 1 for count in counts]

        return await self._with_cursor(body)

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        marks = ", ".join(["%s"] * len(delivery_ids))

        async def body(cur: aiomysql.Cursor) -> int:
            await cur.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = %s, "
                "updated_at = %s, lease_owner = NULL, lease_until = NULL "
                f"WHERE namespace = %s AND delivery_id IN ({marks}) "
                "AND (lease_until IS NULL OR lease_until <= %s)",
                [now, now, namespace, *delivery_ids, now],
            )
            count: int = cur.rowcount
            return count

        return await self._with_cursor(body)

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        params = Params("format")
        rows = await self._fetch(outbox_stats_sql(shards, params), params.values)
        return OutboxStats(rows[0][0], rows[0][1])

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        await self._fetch(
            "INSERT INTO webhook_endpoints (namespace, url_hash, url, disabled_at, reason) "
            "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            "disabled_at = VALUES(disabled_at), reason = VALUES(reason)",
            (
                endpoint.namespace,
                _url_hash(endpoint.url),
                endpoint.url,
                endpoint.disabled_at,
                endpoint.reason,
            ),
        )

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        rows = await self._fetch(
            "SELECT disabled_at, reason FROM webhook_endpoints "
            "WHERE namespace = %s AND url_hash = %s",
            (namespace, _url_hash(url)),
        )
        return EndpointRecord(namespace, url, rows[0][0], rows[0][1]) if rows else None

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        rows = await self._fetch(
            "SELECT url, disabled_at, reason FROM webhook_endpoints WHERE namespace = %s "
            "ORDER BY url",
            (namespace,),
        )
        return [EndpointRecord(namespace, row[0], row[1], row[2]) for row in rows]
