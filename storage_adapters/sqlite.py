"""``sqlite:///path``: the embedded default store (SQLite in WAL mode).

Writes go through one writer connection on its own thread with **group
commit**: the writes waiting at a moment share one ``BEGIN IMMEDIATE …
COMMIT`` (each inside a savepoint, so a failed compare-and-set undoes only
itself), and so one fsync and one thread hop. Every write is acknowledged only
after the commit that holds it. Point reads (a job, a key, a namespace) run
on the event loop with a read-only connection, which is faster than any
thread hop for a keyed lookup of a few KB; range reads (logs, output, lists)
run on aiosqlite reader threads. WAL lets all of them read beside the writer.

Options in the URL query:

* ``synchronous`` — ``full`` (default: a commit survives power loss) or
  ``normal`` (survives a process crash, not a power loss; faster commits);
* ``readers`` — reader threads for range reads (default 2);
* ``busy_timeout`` — milliseconds to wait for a lock held by another process
  (default 5000);
* ``max_batch`` — writes at most in one group commit (default 256).

``sqlite:///aos.db`` is ``aos.db`` relative to the working directory;
``sqlite:////var/lib/aos/aos.db`` is absolute.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiosqlite

from sharding import shard_of

from .base import Capability, StorageAdapter, StoreURL
from .errors import (
    AlreadyExists,
    ConfigurationError,
    CorruptData,
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

__all__ = ["MIGRATIONS", "SQLiteAdapter"]

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]

#: Versioned schema; each entry runs once, in order, in its own transaction.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE namespaces (
            name        TEXT PRIMARY KEY,
            config      BLOB NOT NULL,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE api_keys (
            namespace   TEXT NOT NULL,
            key_id      TEXT NOT NULL,
            role        TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            PRIMARY KEY (namespace, key_id)
        ) WITHOUT ROWID;

        CREATE TABLE jobs (
            namespace   TEXT NOT NULL,
            job_id      TEXT NOT NULL,
            revision    INTEGER NOT NULL,
            status      TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            expires_at  INTEGER,
            doc         BLOB NOT NULL,
            PRIMARY KEY (namespace, job_id)
        );
        CREATE INDEX jobs_by_created ON jobs (namespace, created_at, job_id);

        CREATE TABLE job_tags (
            namespace   TEXT NOT NULL,
            tag         TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            job_id      TEXT NOT NULL,
            PRIMARY KEY (namespace, tag, created_at, job_id)
        ) WITHOUT ROWID;

        CREATE TABLE events (
            namespace   TEXT NOT NULL,
            job_id      TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            at          INTEGER NOT NULL,
            version     INTEGER NOT NULL,
            chunk_index INTEGER NOT NULL,
            format      TEXT NOT NULL,
            data        BLOB NOT NULL,
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
            namespace       TEXT NOT NULL,
            delivery_id     TEXT NOT NULL,
            job_id          TEXT NOT NULL,
            shard           INTEGER NOT NULL,
            state           TEXT NOT NULL,
            attempts        INTEGER NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            created_at      INTEGER NOT NULL,
            updated_at      INTEGER NOT NULL,
            lease_owner     TEXT,
            lease_until     INTEGER,
            payload         BLOB NOT NULL,
            doc             BLOB NOT NULL,
            PRIMARY KEY (namespace, delivery_id)
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at, shard)
            WHERE state = 'pending';
        CREATE INDEX deliveries_by_job ON deliveries (namespace, job_id, created_at);
        CREATE INDEX deliveries_by_state ON deliveries (namespace, state, created_at);

        CREATE TABLE webhook_endpoints (
            namespace   TEXT NOT NULL,
            url         TEXT NOT NULL,
            disabled_at INTEGER,
            reason      TEXT,
            PRIMARY KEY (namespace, url)
        );
        """,
    ),
    (
        3,
        """
        ALTER TABLE events ADD COLUMN codec TEXT NOT NULL DEFAULT '';
        ALTER TABLE events ADD COLUMN digest BLOB;
        ALTER TABLE events ADD COLUMN byte_offset INTEGER NOT NULL DEFAULT 0;
        UPDATE events SET byte_offset = (
            SELECT COALESCE(SUM(length(e.data)), 0) FROM events e
            WHERE e.namespace = events.namespace AND e.job_id = events.job_id
              AND e.version = events.version AND e.chunk_index >= 0
              AND e.chunk_index < events.chunk_index
        ) WHERE chunk_index > 0;
        ALTER TABLE jobs ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX jobs_expiring ON jobs (expires_at, shard) WHERE expires_at IS NOT NULL
        """,
    ),
    (
        4,
        """
        ALTER TABLE api_keys ADD COLUMN name TEXT;
        ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
        ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
        ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
        CREATE TABLE audit_log (
            namespace   TEXT NOT NULL,
            entry_id    TEXT NOT NULL,
            at          INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL,
            doc         BLOB NOT NULL,
            PRIMARY KEY (namespace, entry_id)
        ) WITHOUT ROWID;
        CREATE INDEX audit_log_expiring ON audit_log (expires_at)
        """,
    ),
]


def _backfill_shards(db: sqlite3.Connection) -> None:
    namespaces = [row[0] for row in db.execute("SELECT DISTINCT namespace FROM jobs")]
    db.executemany(
        "UPDATE jobs SET shard = ? WHERE namespace = ?", [(shard_of(ns), ns) for ns in namespaces]
    )


#: Python steps run after a migration's SQL, in its transaction
BACKFILLS: dict[int, Callable[[sqlite3.Connection], None]] = {3: _backfill_shards}

_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "disk i/o error",
    "unable to open database",
    "database or disk is full",
    "readonly database",
)


def _missing_or_moved(
    db: sqlite3.Connection, namespace: str, job_id: str, expected_revision: int
) -> StoreError:
    row = db.execute(
        "SELECT revision FROM jobs WHERE namespace = ? AND job_id = ?", (namespace, job_id)
    ).fetchone()
    if row is None:
        return NotFound(f"job {job_id} does not exist")
    return RevisionConflict(f"job {job_id} is at revision {row[0]}, not {expected_revision}")


def _insert_deliveries(db: sqlite3.Connection, deliveries: Sequence[DeliveryRecord]) -> None:
    if deliveries:
        db.executemany(
            f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 13)})",
            [delivery_row(d) for d in deliveries],
        )


def _insert_events(db: sqlite3.Connection, job: JobRecord, events: Sequence[EventRecord]) -> None:
    db.executemany(
        f"INSERT INTO events (namespace, job_id, {EVENT_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        event_rows(job, events),
    )


class _GroupCommitWriter:
    """One connection on one thread; the writes waiting together share a commit."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="aos-sqlite-writer")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._executor, self._connect)
        self._task = asyncio.create_task(self._run(), name="aos-sqlite-group-commit")

    async def run(self, write: Write) -> Any:
        """Apply ``write`` in the next group commit; its result once committed."""
        if self._task is None or self._task.done():
            raise StoreUnavailable("sqlite store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._wakeup.set()
        return await future

    async def alone(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the writer's thread outside any group (migrations)."""
        assert self._db is not None
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, db)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, self._commit, [write for write, _ in batch]
                    )
                except Exception as exc:  # the thread itself failed
                    outcomes = [(False, exc)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

    def _commit(self, writes: list[Write]) -> list[tuple[bool, Any]]:
        """In the writer thread: one transaction, a savepoint per write.

        A write that raises undoes only its savepoint; if the transaction as a
        whole fails (BEGIN, a savepoint or COMMIT), every write in it fails.
        """
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            outcomes: list[tuple[bool, Any]] = []
            for write in writes:
                db.execute("SAVEPOINT w")
                try:
                    outcomes.append((True, write(db)))
                except Exception as exc:
                    db.execute("ROLLBACK TO w")
                    outcomes.append((False, exc))
                db.execute("RELEASE w")
            db.execute("COMMIT")
        except Exception as exc:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is unusable; the next BEGIN will say so
            return [(False, exc)] * len(writes)
        return outcomes

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, future in self._pending:
            if not future.done():
                future.set_exception(StoreUnavailable("sqlite store closed"))
        self._pending = []
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)


class SQLiteAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.TRANSACTIONS})

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        if not url.path or url.path == ":memory:":
            raise ConfigurationError(
                "sqlite:// needs a file path, like sqlite:///aos.db; for a throwaway store "
                "use memory://"
            )
        self.path = Path(url.path)
        options = dict(url.options)
        options.pop("pool_size", None)  # one writer connection, whatever the pool
        self.synchronous = options.pop("synchronous", "full").upper()
        if self.synchronous not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigurationError("sqlite synchronous must be full, normal or extra")
        try:
            self.reader_count = int(options.pop("readers", "2"))
            self.busy_timeout = int(options.pop("busy_timeout", "5000"))
            self.max_batch = int(options.pop("max_batch", "256"))
        except ValueError as exc:
            raise ConfigurationError(f"sqlite options must be integers: {exc}") from exc
        if self.reader_count < 1 or self.max_batch < 1:
            raise ConfigurationError("sqlite readers and max_batch must be at least 1")
        if options:
            raise ConfigurationError(f"unknown sqlite options: {', '.join(sorted(options))}")
        self._writer: _GroupCommitWriter | None = None
        self._point: sqlite3.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._reader_cycle: Iterator[aiosqlite.Connection] = iter(())

    # -- lifecycle ---------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self.busy_timeout / 1000,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
        return db

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _GroupCommitWriter(self._connect_writer, self.max_batch)
        await self._writer.start()
        # Point reads on the event loop never wait for a lock: a busy database
        # sends them to a reader thread instead (see _point_read).
        self._point = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        self._point.execute("PRAGMA query_only = ON")
        for _ in range(self.reader_count):
            reader = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout / 1000
            )
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)
        self._reader_cycle = itertools.cycle(self._readers)

    async def _migrate(self, apply: bool) -> list[int]:
        assert self._writer is not None
        return await self._writer.alone(lambda db: _migrate(db, apply))

    async def _close(self) -> None:
        readers, self._readers = self._readers, []
        self._reader_cycle = iter(())
        for reader in readers:
            await reader.close()
        if self._point is not None:
            self._point.close()
            self._point = None
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()

    async def _ping(self) -> None:
        await self._read("SELECT 1", ())

    # -- helpers -----------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, sqlite3.OperationalError):
            message = str(exc).lower()
            if any(m in message for m in _UNAVAILABLE_MESSAGES):
                return StoreUnavailable(f"sqlite: {exc}")
        if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc).lower():
            return CorruptData(f"sqlite: {exc}")
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc).lower():
            return StoreUnavailable(f"sqlite: {exc}")
        return super()._translate(exc)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        db = next(self._reader_cycle, None)
        if db is None:
            raise StoreUnavailable("sqlite store is not open")
        return list(await db.execute_fetchall(sql, params))

    async def _point_read(self, sql: str, params: Sequence[Any]) -> Any:
        """The first row of a keyed lookup, read on the event loop."""
        if self._point is None:
            raise StoreUnavailable("sqlite store is not open")
        try:
            return self._point.execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() and "busy" not in str(exc).lower():
                raise
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    async def _write(self, write: Write) -> Any:
        if self._writer is None:
            raise StoreUnavailable("sqlite store is not open")
        return await self._writer.run(write)

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        row = (namespace.name, dumps(namespace.config), namespace.created_at, namespace.updated_at)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO namespaces (name, config, created_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "config = excluded.config, updated_at = excluded.updated_at",
                row,
            )
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        row = await self._point_read(
            f"SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE name = ?", (name,)
        )
        return namespace_from_row(row) if row is not None else None

    async def _create_key(self, key: KeyRecord) -> None:
        row = key_row(key)

        def write(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({', '.join('?' * len(row))})",
                    row,
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"key {key.key_id} exists") from exc

        await self._write(write)

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        row = await self._point_read(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = ? AND key_id = ?",
            (namespace, key_id),
        )
        return key_from_row(row) if row is not None else None

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        params = Params("qmark")
        rows = await self._read(list_namespaces_sql(after, limit, params), params.values)
        return [namespace_from_row(row) for row in rows]

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        rows = await self._read(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE namespace = ? ORDER BY key_id",
            (namespace,),
        )
        return [key_from_row(row) for row in rows]

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        params = Params("qmark")
        sql = update_key_sql(namespace, key_id, changes, params)
        # SQLite counts the rows matched, changed or not
        matched: bool = await self._write(lambda db: db.execute(sql, params.values).rowcount == 1)
        return matched

    # -- audit log ---------------------------------------------------------

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        rows = audit_rows(entries)
        await self._write(
            lambda db: db.executemany(
                f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (namespace, entry_id) DO NOTHING",
                rows,
            )
        )

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        params = Params("qmark")
        rows = await self._read(list_audit_sql(namespace, query, params), params.values)
        return [audit_from_row(row) for row in rows]

    async def _purge_audit(self, now: int, limit: int) -> int:
        def write(db: sqlite3.Connection) -> int:
            count: int = db.execute(
                "DELETE FROM audit_log WHERE (namespace, entry_id) IN (SELECT namespace, entry_id "
                "FROM audit_log WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                (now, limit),
            ).rowcount
            return count

        purged: int = await self._write(write)
        return purged

    # -- jobs --------------------------------------------------------------

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        doc = dumps(job_to_doc(job))

        def write(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO jobs (namespace, job_id, revision, status, created_at, "
                    "expires_at, doc, shard) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.namespace,
                        job.job_id,
                        job.revision,
                        job.status.value,
                        job.created_at,
                        job.expires_at,
                        doc,
                        shard_of(job.namespace),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"job {job.job_id} exists") from exc
            db.executemany(
                "INSERT INTO job_tags (namespace, tag, created_at, job_id) VALUES (?, ?, ?, ?)",
                [(job.namespace, tag, job.created_at, job.job_id) for tag in set(job.tags)],
            )
            _insert_events(db, job, events)
            _insert_deliveries(db, deliveries)

        await self._write(write)

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        row = await self._point_read(
            "SELECT doc FROM jobs WHERE namespace = ? AND job_id = ?", (namespace, job_id)
        )
        return job_from_doc(loads(row[0])) if row is not None else None

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        doc = dumps(job_to_doc(job))

        def write(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "UPDATE jobs SET revision = ?, status = ?, expires_at = ?, doc = ? "
                "WHERE namespace = ? AND job_id = ? AND revision = ? AND created_at = ?",
                (
                    job.revision,
                    job.status.value,
                    job.expires_at,
                    doc,
                    job.namespace,
                    job.job_id,
                    expected_revision,
                    job.created_at,
                ),
            )
            if cursor.rowcount != 1:
                raise _missing_or_moved(db, job.namespace, job.job_id, expected_revision)
            _insert_events(db, job, events)
            _insert_deliveries(db, deliveries)

        await self._write(write)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        def write(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "DELETE FROM jobs WHERE namespace = ? AND job_id = ? AND revision = ?",
                (namespace, job_id, expected_revision),
            )
            if cursor.rowcount != 1:
                raise _missing_or_moved(db, namespace, job_id, expected_revision)
            db.execute("DELETE FROM events WHERE namespace = ? AND job_id = ?", (namespace, job_id))
            db.execute(
                "DELETE FROM job_tags WHERE namespace = ? AND job_id = ?", (namespace, job_id)
            )

        await self._write(write)

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        params = Params("qmark")
        rows = await self._read(expired_jobs_sql(now, limit, shards, params), params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        key = (namespace, job_id)

        def write(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM jobs WHERE namespace = ? AND job_id = ? AND created_at = ?",
                (*key, created_at),
            ).fetchone()
            if row is None:
                return True
            removed = db.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
                "WHERE namespace = ? AND job_id = ? ORDER BY seq LIMIT ?)",
                (*key, batch),
            ).rowcount
            removed += db.execute(
                "DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries "
                "WHERE namespace = ? AND job_id = ? LIMIT ?)",
                (*key, max(batch - removed, 0)),
            ).rowcount
            if removed >= batch:
                return False
            db.execute("DELETE FROM job_tags WHERE namespace = ? AND job_id = ?", key)
            db.execute("DELETE FROM jobs WHERE namespace = ? AND job_id = ?", key)
            return True

        done: bool = await self._write(write)
        return done

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = ? AND job_id = ? "
            "AND seq > ? ORDER BY seq LIMIT ?",
            (namespace, job_id, after_seq, limit),
        )
        return [event_from_row(row) for row in rows]

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = ? AND job_id = ? "
            "AND version = ? AND chunk_index > ? ORDER BY chunk_index LIMIT ?",
            (namespace, job_id, version, max(after_index, -1), limit),
        )
        return [event_from_row(row) for row in rows]

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0:
            return None
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE namespace = ? AND job_id = ? "
            "AND version = ? AND chunk_index = ?",
            (namespace, job_id, version, index),
        )
        return event_from_row(rows[0]) if rows else None

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        params = Params("qmark")
        rows = await self._read(list_jobs_sql(namespace, query, params), params.values)
        return [job_from_doc(loads(row[0])) for row in rows]

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        rows = await self._read(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE namespace = ? AND delivery_id = ?",
            (namespace, delivery_id),
        )
        return delivery_from_row(rows[0]) if rows else None

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        params = Params("qmark")
        rows = await self._read(list_deliveries_sql(namespace, query, params), params.values)
        return [delivery_from_row(row) for row in rows]

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        params = Params("qmark")
        sql = due_deliveries_sql(now, limit, shards, params)

        def write(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = db.execute(sql, params.values).fetchall()
            db.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ? "
                "WHERE namespace = ? AND delivery_id = ?",
                [(owner, lease_until, row[0], row[1]) for row in rows],
            )
            return rows

        rows: list[tuple[Any, ...]] = await self._write(write)
        # The rows as read, with the lease just taken (columns 9 and 10).
        return [delivery_from_row((*row[:9], owner, lease_until, *row[11:])) for row in rows]

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        rows = [
            (
                d.state.value,
                d.attempts,
                d.next_attempt_at,
                d.updated_at,
                dumps(delivery_to_doc(d)),
                d.namespace,
                d.delivery_id,
                owner,
            )
            for d in deliveries
        ]

        sql = (
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
            "updated_at = ?, doc = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE namespace = ? AND delivery_id = ? AND lease_owner = ?"
        )

        def write(db: sqlite3.Connection) -> list[bool]:
            db.execute("SAVEPOINT finish")
            if db.executemany(sql, rows).rowcount == len(rows):
                db.execute("RELEASE finish")
                return [True] * len(rows)  # the common case: every lease still held
            db.execute("ROLLBACK TO finish")
            db.execute("RELEASE finish")
            return [db.execute(sql, row).rowcount == 1 for row in rows]

        result: list[bool] = await self._write(write)
        return result

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        def write(db: sqlite3.Connection) -> int:
            count = 0
            for delivery_id in delivery_ids:
                count += db.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, "
                    "next_attempt_at = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL "
                    "WHERE namespace = ? AND delivery_id = ? "
                    "AND (lease_until IS NULL OR lease_until <= ?)",
                    (now, now, namespace, delivery_id, now),
                ).rowcount
            return count

        result: int = await self._write(write)
        return result

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        params = Params("qmark")
        rows = await self._read(outbox_stats_sql(shards, params), params.values)
        return OutboxStats(rows[0][0], rows[0][1])

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        row = (endpoint.namespace, endpoint.url, endpoint.disabled_at, endpoint.reason)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO webhook_endpoints (namespace, url, disabled_at, reason) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (namespace, url) DO UPDATE SET "
                "disabled_at = excluded.disabled_at, reason = excluded.reason",
                row,
            )
        )

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        row = await self._point_read(
            "SELECT disabled_at, reason FROM webhook_endpoints WHERE namespace = ? AND url = ?",
            (namespace, url),
        )
        return EndpointRecord(namespace, url, row[0], row[1]) if row is not None else None

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        rows = await self._read(
            "SELECT url, disabled_at, reason FROM webhook_endpoints WHERE namespace = ? "
            "ORDER BY url",
            (namespace,),
        )
        return [EndpointRecord(namespace, *row) for row in rows]


def _migrate(db: sqlite3.Connection, apply: bool) -> list[int]:
    """In the writer thread: the pending migrations, applied first when ``apply``.

    Each runs in an immediate transaction, which takes the write lock, so a
    second process migrating at the same time waits and then finds it applied.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    pending = [version for version, _ in MIGRATIONS if version not in applied]
    if not apply:
        return pending
    done = []
    for version, script in MIGRATIONS:
        if version not in pending:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if found is None:
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        db.execute(statement)
                if version in BACKFILLS:
                    BACKFILLS[version](db)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, int(time.time() * 1_000_000)),
                )
                done.append(version)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return done
