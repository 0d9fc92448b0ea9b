"""A database of its own per test on the MongoDB-protocol test server (FerretDB)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from . import stores


@asynccontextmanager
async def mongodb(tmp_path: Path, *, empty: bool = True) -> AsyncIterator[str]:
    """A database of its own (created by the adapter on open; dropped afterwards)."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import AutoReconnect, PyMongoError

    admin_url = stores.server_url("AOS_TEST_MONGODB_URL", "FerretDB")
    database = stores.unique_name()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        admin_url, serverSelectionTimeoutMS=5000
    )
    try:
        try:
            await client.admin.command("ping")
        except PyMongoError as exc:
            stores.require_server(f"MongoDB at {admin_url} is not reachable: {exc}")
            raise
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{database}"))
        # The test may have restarted the server under this client's pooled
        # connection: the first command then meets a closed socket.
        for attempt in range(3):
            try:
                await client.drop_database(database)
                break
            except AutoReconnect:
                if attempt == 2:
                    raise
    finally:
        await client.close()


async def overwrite_event_data(
    url: str, namespace: str, job_id: str, seq: int, data: bytes
) -> None:
    """Replace the stored bytes of one log entry behind the adapter's back
    (in the events collection and, if it is still there, in the job's pending map)."""
    from pymongo import AsyncMongoClient

    parts = urlsplit(url)
    database = parts.path.strip("/")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        urlunsplit(parts._replace(path="/")), serverSelectionTimeoutMS=5000
    )
    try:
        db = client[database]
        job = await db["jobs"].find_one({"_id": f"{namespace}/{job_id}"}, {"c": 1, "p": 1})
        assert job is not None, f"no job {namespace}/{job_id}"
        where = {"ns": namespace, "j": job_id, "c": job["c"], "s": seq}
        found = await db["events"].update_one(
            where, {"$set": {"d": data}, "$unset": {"bl": "", "bn": ""}}
        )
        pending = job.get("p") or {}
        assert isinstance(pending, dict)
        if f"e{seq}" in pending:
            await db["jobs"].update_one(
                {"_id": job["_id"]},
                {"$set": {f"p.e{seq}.d": data}, "$unset": {f"p.e{seq}.bl": "", f"p.e{seq}.bn": ""}},
            )
        elif not found.matched_count:
            raise AssertionError(f"no log entry {seq} of job {namespace}/{job_id}")
    finally:
        await client.close()
