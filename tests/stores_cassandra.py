"""Keyspaces for tests on the Cassandra test server.

Creating a keyspace and its tables takes seconds (schema changes are slow), so
each test process keeps a few migrated keyspaces and hands them out one test
at a time, emptied with TRUNCATE (the test server has ``auto_snapshot: false``).
``empty=True`` gives a keyspace name that does not exist yet (the adapter
creates it on open) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from storage_adapters import adapter_for

from . import stores

_free: list[str] = []
_made = 0


def _session(url: str) -> Any:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    parts = urlsplit(url)
    cluster = Cluster(
        [parts.hostname or "127.0.0.1"],
        port=parts.port or 9042,
        protocol_version=5,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        },
        connect_timeout=5,
    )
    try:
        return cluster, cluster.connect()
    except BaseException:
        cluster.shutdown()
        raise


async def _connect(admin_url: str) -> Any:
    from cassandra.cluster import NoHostAvailable

    try:
        return await asyncio.to_thread(_session, admin_url)
    except NoHostAvailable as exc:
        stores.require_server(f"Cassandra at {admin_url} is not reachable: {exc}")
        raise


def _truncate(session: Any, keyspace: str) -> None:
    tables = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
    )
    futures = [
        session.execute_async(f"TRUNCATE {keyspace}.{row.table_name}", timeout=60)
        for row in tables
        if row.table_name != "schema_migrations"
    ]
    for future in futures:
        future.result()


@asynccontextmanager
async def cassandra(tmp_path: Path, *, empty: bool = False) -> AsyncIterator[str]:
    global _made
    admin_url = stores.server_url("AOS_TEST_CASSANDRA_URL", "Cassandra")
    cluster, session = await _connect(admin_url)
    try:
        if empty:
            keyspace = stores.unique_name()
            try:
                yield f"{admin_url}/{keyspace}?replication_factor=1"
            finally:
                await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}")
            return
        if _free:
            keyspace = _free.pop()
        else:
            _made += 1
            keyspace = f"aos_pool_{os.getpid()}_{_made}"
            await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}")
            store = adapter_for(f"{admin_url}/{keyspace}?replication_factor=1")
            await store.open()
            await store.close()
        await asyncio.to_thread(_truncate, session, keyspace)
        yield f"{admin_url}/{keyspace}?replication_factor=1"
        _free.append(keyspace)
    finally:
        await asyncio.to_thread(cluster.shutdown)


async def overwrite_event_data(
    url: str, namespace: str, job_id: str, seq: int, data: bytes
) -> None:
    """Replace the stored bytes of one log entry behind the adapter's back
    (inline in the job partition, or the parts of an out-of-line chunk)."""
    from storage_adapters.cassandra import PART_BYTES

    parts = urlsplit(url)
    keyspace = parts.path.strip("/")
    cluster, session = await _connect(url.split("/" + keyspace)[0])

    def overwrite() -> None:
        row = session.execute(
            f"SELECT version, idx, ref FROM {keyspace}.jobs WHERE namespace = %s "
            "AND job_id = %s AND kind = 0 AND a = %s AND b = 0 AND c = ''",
            (namespace, job_id, seq),
        ).one()
        if row is None:
            raise LookupError(f"no log entry {seq} of job {job_id}")
        if row.ref is None:
            session.execute(
                f"UPDATE {keyspace}.jobs SET data = %s WHERE namespace = %s AND job_id = %s "
                "AND kind = 0 AND a = %s AND b = 0 AND c = ''",
                (data, namespace, job_id, seq),
            )
            return
        for n in range(max(1, -(-len(data) // PART_BYTES))):
            session.execute(
                f"INSERT INTO {keyspace}.chunk_data (namespace, job_id, version, idx, ref, "
                "part, data) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    namespace,
                    job_id,
                    row.version,
                    row.idx,
                    row.ref,
                    n,
                    data[n * PART_BYTES : (n + 1) * PART_BYTES],
                ),
            )

    try:
        await asyncio.to_thread(overwrite)
    finally:
        await asyncio.to_thread(cluster.shutdown)
