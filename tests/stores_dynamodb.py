"""Tables of their own (a name prefix) per test on DynamoDB Local.

Creating the four tables of a store takes about a second on DynamoDB Local,
so migrated prefixes are pooled per test process: a test gets a prefix whose
tables are empty (wiped after the previous test) or, with ``empty=True``, a
new prefix with no tables at all (deleted afterwards).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import stores

#: DynamoDB Local does run its TTL sweeper: the conformance suite's clock is in
#: 2023, so a grace of ten years keeps the backstop from deleting test data
#: while the adapter still writes TTL attributes.
TEST_OPTIONS = {"ttl_grace": str(10 * 365 * 86400), "max_attempts": "2"}

_pool: list[str] = []


def _client_args(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    options = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return {
        "endpoint_url": f"http://{parts.hostname}:{parts.port or 8000}",
        "region_name": options.get("region", "us-east-1"),
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }


def _url(admin_url: str, prefix: str) -> str:
    parts = urlsplit(admin_url)
    options = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    options.update(TEST_OPTIONS)
    return urlunsplit(parts._replace(path=f"/{prefix}", query=urlencode(options)))


def _client(admin_url: str) -> Any:
    from storage_adapters.dynamodb import _session

    return _session().client("dynamodb", **_client_args(admin_url))


async def _tables(client: Any, prefix: str) -> list[str]:
    """Every table whose name starts with ``prefix`` (ListTables pages by 100)."""
    names: list[str] = []
    params: dict[str, Any] = {}
    while True:
        page = await client.list_tables(**params)
        names.extend(n for n in page["TableNames"] if n.startswith(prefix + "_"))
        last = page.get("LastEvaluatedTableName")
        if not last:
            return names
        params["ExclusiveStartTableName"] = last


async def _wipe(client: Any, table: str) -> bool:
    """Delete a few items; ``False`` when there are too many (dropping the
    tables is quicker then)."""
    page = await client.scan(TableName=table, ProjectionExpression="pk, sk", Limit=300)
    if page.get("LastEvaluatedKey"):
        return False
    keys = page.get("Items", [])
    for start in range(0, len(keys), 25):
        request = {table: [{"DeleteRequest": {"Key": k}} for k in keys[start : start + 25]]}
        while request:
            answer = await client.batch_write_item(RequestItems=request)
            request = answer.get("UnprocessedItems") or {}
    return True


@asynccontextmanager
async def dynamodb(tmp_path: Path, *, empty: bool = False) -> AsyncIterator[str]:
    """A migrated, empty table prefix of its own (``empty``: one with no tables,
    for the adapter to create)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from storage_adapters import adapter_for

    admin_url = stores.server_url("AOS_TEST_DYNAMODB_URL", "DynamoDB Local")
    async with _client(admin_url) as client:
        try:
            await client.list_tables(Limit=1)
        except (BotoCoreError, ClientError) as exc:
            stores.require_server(f"DynamoDB at {admin_url} is not reachable: {exc}")
            raise
        if empty:
            prefix = stores.unique_name()
        elif _pool:
            prefix = _pool.pop()
        else:
            prefix = stores.unique_name()
            store = adapter_for(_url(admin_url, prefix))
            await store.open()
            await store.close()
        clean = False
        try:
            yield _url(admin_url, prefix)
            if not empty:
                tables = await _tables(client, prefix)
                if len(tables) == 4 and all([await _wipe(client, t) for t in tables]):
                    if not _pool:
                        atexit.register(_drop_pool)
                    _pool.append(prefix)
                    clean = True
        finally:
            if not clean:
                for table in await _tables(client, prefix):
                    await client.delete_table(TableName=table)


def _drop_pool() -> None:
    """Delete the pooled tables when the test process ends."""
    url = os.environ.get("AOS_TEST_DYNAMODB_URL")
    prefixes, _pool[:] = list(_pool), []
    if not url or not prefixes:
        return

    async def drop() -> None:
        async with _client(url) as client:
            for prefix in prefixes:
                for table in await _tables(client, prefix):
                    await client.delete_table(TableName=table)

    with contextlib.suppress(Exception):
        asyncio.run(drop())


async def overwrite_event_data(
    url: str, namespace: str, job_id: str, seq: int, data: bytes
) -> None:
    """Replace the stored bytes of one log entry behind the adapter's back
    (inline, or its parts when the entry is kept in parts)."""
    from storage_adapters.dynamodb import INLINE_BYTES, PART_BYTES

    prefix = urlsplit(url).path.strip("/") or "aos"
    jobs = f"{prefix}_jobs"
    pk = f"{namespace}#{job_id}"
    sk = f"E#{seq:016d}"
    async with _client(url) as client:
        entry = (await client.get_item(TableName=jobs, Key={"pk": {"S": pk}, "sk": {"S": sk}})).get(
            "Item"
        )
        if entry is None:
            raise LookupError(f"no log entry {seq} of {namespace}/{job_id}")
        created = entry["cr"]["N"]
        if len(data) <= INLINE_BYTES and "np" not in entry:
            entry["d"] = {"B": data}
            await client.put_item(TableName=jobs, Item=entry)
            return
        parts = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
        for n, part in enumerate(parts):
            await client.put_item(
                TableName=jobs,
                Item={
                    "pk": {"S": f"{pk}#{created}#{seq}"},
                    "sk": {"S": f"P{n:04d}"},
                    "d": {"B": part},
                },
            )
        entry.pop("d", None)
        entry["np"] = {"N": str(len(parts))}
        await client.put_item(TableName=jobs, Item=entry)
