"""The stores the conformance suite runs against.

Each entry provides the URL of a fresh, empty store for one test (and cleans
it up afterwards). Stores that need a real server find it through an
environment variable; without the server the test is skipped outside CI and
fails under ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest

from storage_adapters import StoreURL, adapter_for


class StoreURLFactory(Protocol):
    def __call__(
        self, tmp_path: Path, *, empty: bool = ...
    ) -> AbstractAsyncContextManager[str]: ...


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_server(reason: str) -> None:
    """Skip (or, under CI, fail) a test whose server is missing."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def memory(tmp_path: Path, *, empty: bool = True) -> AsyncIterator[str]:
    yield "memory://"


@asynccontextmanager
async def sqlite(tmp_path: Path, *, empty: bool = True) -> AsyncIterator[str]:
    yield f"sqlite:///{tmp_path}/conformance.db"


_databases = itertools.count()
_templates: set[str] = set()


def server_url(variable: str, what: str) -> str:
    """The URL of a test server from the environment (``make test`` sets it)."""
    url = os.environ.get(variable)
    if not url:
        require_server(
            f"{variable} is not set: start {what} with `make test` or "
            f"scripts/testenv/up (see scripts/testenv/README-*.md)"
        )
    assert url is not None
    return url


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@asynccontextmanager
async def postgresql(tmp_path: Path, *, empty: bool = False) -> AsyncIterator[str]:
    """A database of its own per test, cloned from a migrated template
    (``empty``: a new database with no schema at all)."""
    import asyncpg

    admin_url = server_url("AOS_TEST_POSTGRES_URL", "PostgreSQL")
    template = f"aos_template_{os.getpid()}"
    database = f"aos_test_{os.getpid()}_{next(_databases)}"
    try:
        admin = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require_server(f"PostgreSQL at {admin_url} is not reachable: {exc}")
        raise
    try:
        if template not in _templates:
            await admin.execute(f"DROP DATABASE IF EXISTS {template}")
            await admin.execute(f"CREATE DATABASE {template}")
            store = adapter_for(with_database(admin_url, template))
            await store.open()
            await store.close()
            _templates.add(template)
        source = "template0" if empty else template
        await admin.execute(f"CREATE DATABASE {database} TEMPLATE {source}")
    finally:
        await admin.close()
    yield with_database(admin_url, database)
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        await admin.close()


@asynccontextmanager
async def mysql(tmp_path: Path, *, empty: bool = True) -> AsyncIterator[str]:
    """A database of its own per test, empty (the adapter creates the schema on open)."""
    import aiomysql
    import pymysql

    admin_url = server_url("AOS_TEST_MYSQL_URL", "MariaDB")
    parts = urlsplit(admin_url)
    database = f"aos_test_{os.getpid()}_{next(_databases)}"

    async def execute(sql: str) -> None:
        conn = await aiomysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password or "",
            autocommit=True,
            connect_timeout=5,
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql)
        finally:
            conn.close()

    try:
        await execute(f"CREATE DATABASE {database}")
    except (OSError, pymysql.err.MySQLError) as exc:
        require_server(f"MariaDB at {admin_url} is not reachable: {exc}")
        raise
    yield with_database(admin_url, database)
    await execute(f"DROP DATABASE IF EXISTS {database}")


async def execute_sql(url: str, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Run SQL (``?`` placeholders) on a store's database, outside the adapter."""
    await _run_sql(url, statements)


async def fetch_sql(url: str, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    """Rows of a query (``?`` placeholders) on a SQL store's database, outside
    the adapter: what the store holds, byte for byte."""
    return await _run_sql(url, [(sql, params)])


async def _run_sql(
    url: str, statements: list[tuple[str, tuple[object, ...]]]
) -> list[tuple[object, ...]]:
    """Run ``statements`` in order on SQLite, PostgreSQL or MySQL; the rows of the last."""
    rows: list[tuple[object, ...]] = []
    scheme = url.partition(":")[0]
    if scheme == "sqlite":
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for sql, params in statements:
                rows = [tuple(row) for row in db.execute(sql, params)]
        return rows
    if scheme == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            for sql, params in statements:
                parts = sql.split("?")
                numbered = parts[0] + "".join(f"${n}{p}" for n, p in enumerate(parts[1:], 1))
                rows = [tuple(row) for row in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()
        return rows
    import aiomysql

    parsed = StoreURL.parse(url)
    conn = await aiomysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        password=parsed.password or "",
        db=parsed.path.strip("/"),
        autocommit=True,
    )
    try:
        async with conn.cursor() as cur:
            for sql, params in statements:
                await cur.execute(sql.replace("?", "%s"), params)
                rows = [tuple(row) for row in await cur.fetchall()]
    finally:
        conn.close()
    return rows


def unique_name() -> str:
    """A database, keyspace or table prefix of its own for one test."""
    return f"aos_test_{os.getpid()}_{next(_databases)}"


from . import stores_cassandra, stores_dynamodb, stores_mongodb  # noqa: E402
from .stores_cassandra import cassandra  # noqa: E402
from .stores_dynamodb import dynamodb  # noqa: E402
from .stores_mongodb import mongodb  # noqa: E402

STORES: dict[str, StoreURLFactory] = {
    "memory": memory,
    "sqlite": sqlite,
    "postgresql": postgresql,
    "mysql": mysql,
    "cassandra": cassandra,
    "mongodb": mongodb,
    "dynamodb": dynamodb,
}

#: stores behind a server of their own, with the script that starts and stops it
SERVERS: dict[str, str] = {
    "postgresql": "scripts/testenv/postgres.sh",
    "mysql": "scripts/testenv/mariadb.sh",
    "cassandra": "scripts/testenv/cassandra.sh",
    "mongodb": "scripts/testenv/ferretdb.sh",
    "dynamodb": "scripts/testenv/dynamodb.sh",
}

#: the environment variable that holds each server store's URL (scripts/testenv/up sets it)
VARIABLES: dict[str, str] = {
    "postgresql": "AOS_TEST_POSTGRES_URL",
    "mysql": "AOS_TEST_MYSQL_URL",
    "cassandra": "AOS_TEST_CASSANDRA_URL",
    "mongodb": "AOS_TEST_MONGODB_URL",
    "dynamodb": "AOS_TEST_DYNAMODB_URL",
}

#: stores that keep data across a restart of the service
DURABLE = sorted(set(STORES) - {"memory"})

_NOSQL = {"cassandra": stores_cassandra, "mongodb": stores_mongodb, "dynamodb": stores_dynamodb}


async def overwrite_event_data(
    url: str, namespace: str, job_id: str, seq: int, data: bytes
) -> None:
    """Replace the stored bytes of one log entry behind the adapter's back (bit rot)."""
    scheme = url.partition(":")[0]
    if scheme in _NOSQL:
        await _NOSQL[scheme].overwrite_event_data(url, namespace, job_id, seq, data)
        return
    await execute_sql(
        url,
        [
            (
                "UPDATE events SET data = ? WHERE namespace = ? AND job_id = ? AND seq = ?",
                (data, namespace, job_id, seq),
            )
        ],
    )
