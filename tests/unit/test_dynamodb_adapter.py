"""What the conformance suite cannot see of the DynamoDB adapter: URL options,
error translation, and its data model (day buckets, chunk parts, tombstones,
leftovers of a job item removed by the TTL backstop, the index state cache)."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from service import lifecycle
from service.lifecycle import Chunk
from storage_adapters import (
    AuditQuery,
    AuditRecord,
    ConfigurationError,
    EventKind,
    JobQuery,
    JobRecord,
    JobStatus,
    KeyRecord,
    NamespaceRecord,
    NotFound,
    OutputFormat,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    adapter_for,
)
from storage_adapters.dynamodb import DAY, INLINE_BYTES, PART_BYTES, DynamoDBAdapter, StaleRevision

from ..stores_dynamodb import dynamodb

NS = "ddb"
T0 = 1_700_000_000_000_000


def adapter(url: str) -> DynamoDBAdapter:
    store = adapter_for(url)
    assert isinstance(store, DynamoDBAdapter)
    return store


# -- URL options (no server) ----------------------------------------------------------


def test_url_defaults_and_endpoint() -> None:
    store = adapter("dynamodb://127.0.0.1:8000?region=us-east-1")
    assert store.prefix == "aos"
    assert store.endpoint == "http://127.0.0.1:8000"
    assert store.tables["jobs"] == "aos_jobs" and store.tables["outbox"] == "aos_outbox"
    assert (store.connect_timeout, store.read_timeout, store.max_attempts) == (2, 10, 3)
    assert store.ttl_grace == 7 * 86400
    assert store.region == "us-east-1"
    assert store.max_chunk_bytes == 3 * 1024 * 1024


def test_url_host_tls_prefix_and_credentials() -> None:
    tls = adapter("dynamodb://key:s%2Fecret@dynamo.internal/prod_aos?region=eu-west-1&tls=true")
    assert tls.endpoint == "https://dynamo.internal:443"
    assert tls.prefix == "prod_aos" and tls.tables["meta"] == "prod_aos_meta"
    assert tls._credentials == {"aws_access_key_id": "key", "aws_secret_access_key": "s/ecret"}
    assert "s/ecret" not in tls.url.redacted()
    aws = adapter("dynamodb:///team-a?region=eu-west-1&pool_size=64")
    assert aws.endpoint is None and aws._credentials == {} and aws.pool_size == 64
    local = adapter("dynamodb://localhost:9000/x")
    assert local._credentials["aws_access_key_id"] == "local"
    chain = adapter("dynamodb://localhost:9000/x?auth=chain")
    assert chain._credentials == {}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour=blue", "unknown dynamodb URL options"),
        ("tls=maybe", "tls must be true or false"),
        ("connect_timeout=soon", "must be numbers"),
        ("read_timeout=0", "timeouts must be positive"),
        ("max_attempts=0", "max_attempts must be at least 1"),
        ("ttl_grace=-1", "ttl_grace must not be negative"),
        ("auth=magic", "auth must be 'chain'"),
        ("pool_size=0", "pool_size must be at least 1"),
    ],
)
def test_bad_options_are_configuration_errors(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        adapter_for(f"dynamodb://127.0.0.1:8000/aos?{query}")


def test_bad_prefix_and_half_credentials() -> None:
    with pytest.raises(ConfigurationError, match="table prefix"):
        adapter_for("dynamodb://127.0.0.1:8000/no%20spaces")
    with pytest.raises(ConfigurationError, match="key:secret@"):
        adapter_for("dynamodb://onlykey@127.0.0.1:8000/aos")


def _client_error(code: str, message: str = "m") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Query")


@pytest.mark.parametrize(
    "code",
    [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "UnrecognizedClientException",
    ],
)
def test_overload_and_outages_are_unavailable(code: str) -> None:
    store = adapter("dynamodb://127.0.0.1:8000/aos")
    assert isinstance(store._translate(_client_error(code)), StoreUnavailable)


def test_other_errors_are_translated() -> None:
    store = adapter("dynamodb://127.0.0.1:8000/aos")
    missing = store._translate(_client_error("ResourceNotFoundException"))
    assert isinstance(missing, StoreUnavailable) and "aos migrate" in str(missing)
    network = store._translate(EndpointConnectionError(endpoint_url="http://x"))
    assert isinstance(network, StoreUnavailable)
    invalid = store._translate(_client_error("ValidationException", "bad"))
    assert type(invalid) is StoreError and "ValidationException" in str(invalid)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_server_that_is_not_there_is_unavailable_quickly() -> None:
    url = f"dynamodb://127.0.0.1:{_unused_port()}/aos?connect_timeout=0.5&max_attempts=1"
    store = adapter(url)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="dynamodb"):
        await store.open()
    assert time.monotonic() - started < 5
    # An open adapter whose server goes away answers the same way.
    await store._open()
    try:
        with pytest.raises(StoreUnavailable):
            await store.get_job(NS, "j")
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


# -- against DynamoDB Local --------------------------------------------------------------


@pytest.fixture
async def store_url(tmp_path: Path) -> AsyncIterator[str]:
    async with dynamodb(tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[DynamoDBAdapter]:
    opened = adapter(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def create(
    store: DynamoDBAdapter, job_id: str, *, at: int = T0, tags: tuple[str, ...] = ()
) -> JobRecord:
    change = lifecycle.new_job(
        namespace=NS,
        job_id=job_id,
        now=at,
        fingerprint="f",
        metadata={"tags": list(tags)},
        webhook_url=None,
        ttl=60,
    )
    await store.create_job(change.job, change.events)
    return change.job


async def append(store: DynamoDBAdapter, job: JobRecord, data: bytes) -> JobRecord:
    change = lifecycle.append_chunk(
        job, Chunk.stored_as_is(data), OutputFormat.BINARY, "a/b", job.updated_at + 1
    )
    await store.update_job(change.job, change.events, job.revision)
    return change.job


async def items(store: DynamoDBAdapter, table: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"TableName": store.tables[table]}
    while True:
        page = await store._client.scan(**params)
        found.extend(page["Items"])
        if not page.get("LastEvaluatedKey"):
            return found
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def test_missing_tables_at_request_time_say_run_migrate(store: DynamoDBAdapter) -> None:
    await store._client.delete_table(TableName=store.tables["jobs"])
    with pytest.raises(StoreUnavailable, match="aos migrate"):
        await store.get_job(NS, "any")


async def test_listing_walks_day_buckets_both_ways(store: DynamoDBAdapter) -> None:
    jobs = []
    for n in range(9):  # three a day over three days, tagged on one day of two
        at = T0 + (n // 3) * DAY + n
        jobs.append(await create(store, f"job-{n}", at=at, tags=("x",) if n % 2 else ()))
    days = {i["pk"]["S"] for i in await items(store, "index") if i["pk"]["S"].startswith("L#")}
    assert len(days) == 3
    for descending in (True, False):
        seen: list[str] = []
        query = JobQuery(limit=2, descending=descending)
        while True:
            page = await store.list_jobs(NS, query)
            seen.extend(j.job_id for j in page)
            if len(page) < 2:
                break
            query = dataclasses.replace(query, after=(page[-1].created_at, page[-1].job_id))
        expected = [f"job-{n}" for n in range(9)]
        assert seen == (expected[::-1] if descending else expected)
    window = JobQuery(limit=10, descending=False, created_after=T0 + 2, created_before=T0 + DAY + 5)
    assert [j.job_id for j in await store.list_jobs(NS, window)] == ["job-3", "job-4"]
    tagged = await store.list_jobs(NS, JobQuery(limit=10, tag="x"))
    assert [j.job_id for j in tagged] == ["job-7", "job-5", "job-3", "job-1"]
    # Days with no entries in the range cost nothing: a far-future window is empty.
    assert await store.list_jobs(NS, JobQuery(limit=5, created_after=T0 + 30 * DAY)) == []


async def test_a_chunk_larger_than_an_item_is_kept_in_parts(store: DynamoDBAdapter) -> None:
    job = await create(store, "big")
    small = b"s" * INLINE_BYTES
    large = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # the largest chunk: 8 parts
    job = await append(store, job, small)
    job = await append(store, job, large)
    parts = [i for i in await items(store, "jobs") if i["sk"]["S"].startswith("P")]
    assert len(parts) == -(-len(large) // PART_BYTES) == 8
    events = await store.read_events(NS, "big", 0, 10)
    assert [e.data for e in events if e.kind is EventKind.CHUNK] == [small, large]
    [again] = await store.read_chunks(NS, "big", 1, 0, 10)
    assert again.data == large and again.index == 1
    found = await store.find_chunk(NS, "big", 1, 1)
    assert found is not None and found.data == large
    # A purge removes the parts with their entry.
    assert await store.purge_job(NS, "big", job.created_at, 500) is True
    assert await items(store, "jobs") == []


async def test_a_delete_that_stopped_half_way_is_finished_later(
    store: DynamoDBAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create(store, "half", tags=("t",))
    for n in range(3):
        job = await append(store, job, b"%d" % n)
    done = lifecycle.cancel(job, job.updated_at + 1)
    await store.update_job(done.job, done.events, job.revision)

    async def crash(*args: object) -> None:
        raise StoreUnavailable("the node died")

    monkeypatch.setattr(store, "_purge_all", crash)
    with pytest.raises(StoreUnavailable):
        await store.delete_job(NS, "half", done.job.revision)
    monkeypatch.undo()
    # The tombstone reads as absent everywhere, and writes to it find nothing.
    assert await store.get_job(NS, "half") is None
    assert await store.list_jobs(NS, JobQuery(limit=10)) == []
    assert await store.list_jobs(NS, JobQuery(limit=10, tag="t")) == []
    late = dataclasses.replace(done.job, revision=done.job.revision + 1, updated_at=T0 + 99)
    with pytest.raises(NotFound):
        await store.update_job(late, (), done.job.revision)
    with pytest.raises(NotFound):
        await store.delete_job(NS, "half", done.job.revision + 1)
    # The janitor sees it as expired when it was deleted, and finishes it.
    [expired] = await store.expired_jobs(time.time_ns() // 1000 + 1, 10)
    assert expired.job_id == "half" and expired.expires_at is not None
    assert expired.expires_at <= time.time_ns() // 1000
    # ... or a create of the same id does.
    again = await create(store, "half", at=T0 + 500)
    assert await store.get_job(NS, "half") == again
    assert [e.seq for e in await store.read_events(NS, "half", 0, 10)] == [1]
    assert await store.read_chunks(NS, "half", 1, -1, 10) == []
    assert await store.expired_jobs(time.time_ns() // 1000 + 1, 10) == []


async def test_leftovers_of_a_job_item_removed_by_ttl_are_not_shown(
    store: DynamoDBAdapter,
) -> None:
    old = await create(store, "reused")
    for n in range(4):
        old = await append(store, old, b"old %d" % n)
    # The backstop deletes the job item on its own (the janitor was away).
    await store._client.delete_item(
        TableName=store.tables["jobs"], Key={"pk": {"S": f"{NS}#reused"}, "sk": {"S": "J"}}
    )
    store._recent.clear()
    new = await create(store, "reused", at=T0 + 10)
    assert [e.seq for e in await store.read_events(NS, "reused", 0, 100)] == [1]
    assert await store.read_chunks(NS, "reused", 1, -1, 100) == []
    assert await store.find_chunk(NS, "reused", 1, 2) is None
    new = await append(store, new, b"new")
    [chunk] = await store.read_chunks(NS, "reused", 1, -1, 100)
    assert chunk.data == b"new"


async def test_index_entries_follow_changes_made_by_another_node(store_url: str) -> None:
    one, two = adapter(store_url), adapter(store_url)
    await one.open()
    await two.open()
    try:
        job = await create(one, "shared", tags=("t",))  # one remembers revision 1
        moved = lifecycle.apply_patch(job, lifecycle.StatusPatch(status=JobStatus.RUNNING), T0 + 1)
        await two.update_job(moved.job, moved.events, job.revision)
        stale = lifecycle.cancel(job, T0 + 2)
        with pytest.raises(RevisionConflict):
            await one.update_job(stale.job, stale.events, job.revision)
        current = await one.get_job(NS, "shared")
        assert current is not None
        ended = lifecycle.cancel(current, T0 + 3)
        await one.update_job(ended.job, ended.events, current.revision)
        for status in JobStatus:
            query = JobQuery(limit=10, statuses=frozenset({status}), tag="t")
            listed = [j.job_id for j in await two.list_jobs(NS, query)]
            assert listed == (["shared"] if status is JobStatus.CANCELLED else [])
        assert ended.job.expires_at is not None
        [expired] = await two.expired_jobs(ended.job.expires_at, 10)
        assert expired == ended.job
    finally:
        await one.close()
        await two.close()


async def test_empty_expiry_days_are_forgotten(store: DynamoDBAdapter) -> None:
    job = await create(store, "old")
    done = lifecycle.cancel(job, T0 + 1)
    await store.update_job(done.job, done.events, job.revision)
    assert done.job.expires_at is not None
    assert await store.purge_job(NS, "old", job.created_at, 100) is True
    markers = [i for i in await items(store, "index") if i["pk"]["S"].startswith("XB#")]
    assert len(markers) == 1
    assert await store.expired_jobs(done.job.expires_at + 3 * DAY, 10) == []
    assert [i for i in await items(store, "index") if i["pk"]["S"].startswith("XB#")] == []


async def test_a_node_that_keeps_losing_gets_the_next_turn(store_url: str) -> None:
    fast, slow = adapter(store_url), adapter(store_url)
    await fast.open()
    await slow.open()
    try:
        job = await create(fast, "hot")
        for _ in range(2):  # slow loses twice against fast's writes
            stale = await slow.get_job(NS, "hot")
            assert stale is not None
            job = await append(fast, job, b"fast")
            with pytest.raises(StaleRevision) as lost:
                await append(slow, stale, b"slow")
            assert lost.value.current == job
        # Now fast's next write waits for slow's turn ...
        with pytest.raises(StaleRevision) as blocked:
            await append(fast, job, b"fast again")
        assert blocked.value.current.revision == job.revision
        # ... which slow takes without reading the job again.
        current = await append(slow, lost.value.current, b"slow at last")
        job = await append(fast, current, b"fast again")
        chunks = [c.data for c in await fast.read_chunks(NS, "hot", 1, -1, 10)]
        assert chunks == [b"fast", b"fast", b"slow at last", b"fast again"]
    finally:
        await fast.close()
        await slow.close()


# -- keys, namespaces and the audit log ----------------------------------------------


def audit(at: int, n: int, expires_at: int) -> AuditRecord:
    return AuditRecord(
        NS, f"{at:016x}{n:08x}", at, "key.create", "root", "success", None, None, {}, expires_at
    )


async def test_audit_days_are_marked_and_live_as_long_as_their_entries(
    store: DynamoDBAdapter, store_url: str
) -> None:
    grace = store.ttl_grace
    entries = [
        audit(T0 + d * DAY + i, d * 10 + i, T0 + (5 + d + i) * DAY)
        for d in range(3)
        for i in range(2)
    ]
    await store.append_audit(entries)
    stored = {i["sk"]["S"]: i for i in await items(store, "index") if i["pk"]["S"].startswith("A#")}
    assert {k: int(v["ttl"]["N"]) for k, v in stored.items()} == {
        e.entry_id: e.expires_at // 1_000_000 + grace for e in entries
    }
    markers = {
        int(i["sk"]["S"]): int(i["ttl"]["N"])
        for i in await items(store, "index")
        if i["pk"]["S"] == f"AB#{NS}"
    }
    day0 = T0 // DAY
    # each day's marker lives as long as that day's longest-lived entry
    assert markers == {day0 + d: (T0 + (6 + d) * DAY) // 1_000_000 + grace for d in range(3)}
    # An entry that expires sooner, from another node, never shortens a marker.
    other = adapter(store_url)
    await other.open()
    try:
        await other.append_audit([audit(T0 + 5, 99, T0 + DAY)])
    finally:
        await other.close()
    [marker] = [
        i
        for i in await items(store, "index")
        if i["pk"]["S"] == f"AB#{NS}" and i["sk"]["S"] == f"{day0:08d}"
    ]
    assert int(marker["ttl"]["N"]) == markers[day0]
    # Pages walk the days newest first, and a window stops at its days.
    ids = sorted([e.entry_id for e in entries] + [f"{T0 + 5:016x}{99:08x}"], reverse=True)
    seen: list[str] = []
    query = AuditQuery(limit=2)
    while page := await store.list_audit(NS, query):
        seen += [e.entry_id for e in page]
        query = AuditQuery(limit=2, max_id=page[-1].entry_id)
    assert seen == ids
    window = AuditQuery(limit=10, min_id=entries[1].entry_id, max_id=entries[4].entry_id)
    assert [e.entry_id for e in await store.list_audit(NS, window)] == [
        entries[3].entry_id,
        entries[2].entry_id,
        f"{T0 + 5:016x}{99:08x}",
        entries[1].entry_id,
    ]
    assert await store.list_audit("nobody", AuditQuery(limit=10)) == []


async def test_key_fields_are_attributes_and_a_missing_key_stays_missing(
    store: DynamoDBAdapter,
) -> None:
    await store.create_key(KeyRecord(NS, "k1", "consumer", "ab", T0, name="ci", expires_at=T0 + 9))
    assert await store.update_key(NS, "k1", {"last_used_at": T0 + 1, "expires_at": None}) is True
    [item] = [i for i in await items(store, "meta") if i["sk"]["S"] == "K#k1"]
    assert (item["nm"], item["lu"], "ex" in item) == ({"S": "ci"}, {"N": str(T0 + 1)}, False)
    assert await store.update_key(NS, "ghost", {"revoked_at": T0}) is False
    assert [i for i in await items(store, "meta") if i["sk"]["S"] == "K#ghost"] == []


async def test_namespaces_are_listed_once_among_keys_and_endpoints(store: DynamoDBAdapter) -> None:
    for name in ("b", "a", "c"):
        await store.put_namespace(NamespaceRecord(name, {"n": name}, T0, T0))
        await store.create_key(KeyRecord(name, "k1", "consumer", "ab", T0))
    listed = await store.list_namespaces(None, 10)
    assert [n.name for n in listed] == ["a", "b", "c"]
    assert listed[0] == NamespaceRecord("a", {"n": "a"}, T0, T0)
    assert [n.name for n in await store.list_namespaces("a", 1)] == ["b"]
