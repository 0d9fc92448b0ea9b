"""``sqlite:///path``: the embedded default store (aiosqlite, WAL).

One writer connection, serialised by a lock, does every write as one
``BEGIN IMMEDIATE`` transaction; reads go round-robin to a few read-only
connections, which WAL lets run beside the writer. Options in the URL query:

* ``synchronous`` — ``full`` (default: a commit survives power loss) or
  ``normal`` (survives a process crash, not a power loss; ~10x faster commits);
* ``readers`` — read connections (default 2);
* ``busy_timeout`` — milliseconds to wait on a locked database (default 5000).

``sqlite:///aos.db`` is ``aos.db`` relative to the working directory;
``sqlite:////var/lib/aos/aos.db`` is absolute.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiosqlite

from .base import Capability, StorageAdapter, StoreURL, shielded
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
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    dumps,
    job_from_doc,
    job_to_doc,
    loads,
)
from .sql import EVENT_COLUMNS, Params, event_from_row, event_rows, list_jobs_sql

__all__ = ["MIGRATIONS", "SQLiteAdapter"]

T = TypeVar("T")

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
]

_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "disk i/o error",
    "unable to open database",
    "database or disk is full",
    "readonly database",
)


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
        except ValueError as exc:
            raise ConfigurationError(f"sqlite options must be integers: {exc}") from exc
        if self.reader_count < 1:
            raise ConfigurationError("sqlite readers must be at least 1")
        if options:
            raise ConfigurationError(f"unknown sqlite options: {', '.join(sorted(options))}")
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._reader_cycle: Iterator[aiosqlite.Connection] = iter(())
        self._write_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------

    async def _connect(self, *, readonly: bool) -> aiosqlite.Connection:
        db = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout / 1000
        )
        await db.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
        await db.execute("PRAGMA foreign_keys = ON")
        if readonly:
            await db.execute("PRAGMA query_only = ON")
        else:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self.synchronous}")
        return db

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect(readonly=False)
        self._readers = [await self._connect(readonly=True) for _ in range(self.reader_count)]
        self._reader_cycle = itertools.cycle(self._readers)

    async def _migrate(self, apply: bool) -> list[int]:
        db = self._writer
        assert db is not None
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
        applied = {row[0] for row in rows}
        pending = [version for version, _ in MIGRATIONS if version not in applied]
        if not apply:
            return pending
        done = []
        for version, script in MIGRATIONS:
            if version not in pending:
                continue
            # The immediate transaction takes the write lock, so a second process
            # migrating at the same time waits, then finds the version applied.
            await db.execute("BEGIN IMMEDIATE")
            try:
                found = await db.execute_fetchall(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                )
                if not list(found):
                    for statement in (s.strip() for s in script.split(";")):
                        if statement:
                            await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        (version, int(time.time() * 1_000_000)),
                    )
                    done.append(version)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return done

    async def _close(self) -> None:
        for db in [*self._readers, self._writer]:
            if db is not None:
                await db.close()
        self._readers = []
        self._reader_cycle = iter(())
        self._writer = None

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

    async def _write(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``body`` in one immediate transaction on the writer.

        The transaction is shielded: a cancelled request never leaves it half
        done, and its outcome is what the store holds.
        """

        async def transaction() -> T:
            db = self._writer
            if db is None:
                raise StoreUnavailable("sqlite store is not open")
            async with self._write_lock:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body(db)
                    await db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    raise
                return result

        return await shielded(transaction())

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO namespaces (name, config, created_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "config = excluded.config, updated_at = excluded.updated_at",
                (
                    namespace.name,
                    dumps(namespace.config),
                    namespace.created_at,
                    namespace.updated_at,
                ),
            )

        await self._write(body)

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        rows = await self._read(
            "SELECT name, config, created_at, updated_at FROM namespaces WHERE name = ?", (name,)
        )
        if not rows:
            return None
        row = rows[0]
        return NamespaceRecord(
            name=row[0], config=loads(row[1]), created_at=row[2], updated_at=row[3]
        )

    async def _create_key(self, key: KeyRecord) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            try:
                await db.execute(
                    "INSERT INTO api_keys (namespace, key_id, role, secret_hash, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key.namespace, key.key_id, key.role, key.secret_hash, key.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"key {key.key_id} exists") from exc

        await self._write(body)

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        rows = await self._read(
            "SELECT role, secret_hash, created_at FROM api_keys WHERE namespace = ? AND key_id = ?",
            (namespace, key_id),
        )
        if not rows:
            return None
        role, secret_hash, created_at = rows[0]
        return KeyRecord(namespace, key_id, role, secret_hash, created_at)

    # -- jobs --------------------------------------------------------------

    async def _create_job(self, job: JobRecord, events: Sequence[EventRecord]) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            try:
                await db.execute(
                    "INSERT INTO jobs (namespace, job_id, revision, status, created_at, "
                    "expires_at, doc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.namespace,
                        job.job_id,
                        job.revision,
                        job.status.value,
                        job.created_at,
                        job.expires_at,
                        dumps(job_to_doc(job)),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"job {job.job_id} exists") from exc
            await db.executemany(
                "INSERT INTO job_tags (namespace, tag, created_at, job_id) VALUES (?, ?, ?, ?)",
                [(job.namespace, tag, job.created_at, job.job_id) for tag in set(job.tags)],
            )
            await self._insert_events(db, job, events)

        await self._write(body)

    async def _insert_events(
        self, db: aiosqlite.Connection, job: JobRecord, events: Sequence[EventRecord]
    ) -> None:
        await db.executemany(
            f"INSERT INTO events (namespace, job_id, {EVENT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            event_rows(job, events),
        )

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        rows = await self._read(
            "SELECT doc FROM jobs WHERE namespace = ? AND job_id = ?", (namespace, job_id)
        )
        return job_from_doc(loads(rows[0][0])) if rows else None

    async def _missing_or_moved(
        self, db: aiosqlite.Connection, namespace: str, job_id: str, expected_revision: int
    ) -> StoreError:
        rows = list(
            await db.execute_fetchall(
                "SELECT revision FROM jobs WHERE namespace = ? AND job_id = ?",
                (namespace, job_id),
            )
        )
        if not rows:
            return NotFound(f"job {job_id} does not exist")
        return RevisionConflict(
            f"job {job_id} is at revision {rows[0][0]}, not {expected_revision}"
        )

    async def _update_job(
        self, job: JobRecord, events: Sequence[EventRecord], expected_revision: int
    ) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            cursor = await db.execute(
                "UPDATE jobs SET revision = ?, status = ?, expires_at = ?, doc = ? "
                "WHERE namespace = ? AND job_id = ? AND revision = ?",
                (
                    job.revision,
                    job.status.value,
                    job.expires_at,
                    dumps(job_to_doc(job)),
                    job.namespace,
                    job.job_id,
                    expected_revision,
                ),
            )
            if cursor.rowcount != 1:
                raise await self._missing_or_moved(db, job.namespace, job.job_id, expected_revision)
            await self._insert_events(db, job, events)

        await self._write(body)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            cursor = await db.execute(
                "DELETE FROM jobs WHERE namespace = ? AND job_id = ? AND revision = ?",
                (namespace, job_id, expected_revision),
            )
            if cursor.rowcount != 1:
                raise await self._missing_or_moved(db, namespace, job_id, expected_revision)
            await db.execute(
                "DELETE FROM events WHERE namespace = ? AND job_id = ?", (namespace, job_id)
            )
            await db.execute(
                "DELETE FROM job_tags WHERE namespace = ? AND job_id = ?", (namespace, job_id)
            )

        await self._write(body)

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
