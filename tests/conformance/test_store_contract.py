"""One suite for every storage adapter: the ``StorageAdapter`` contract.

Runs against the in-memory store and every durable store, so none of them can
drift from the others. Records are built with the real state machine, the way
the service builds them.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from service import lifecycle
from service.lifecycle import Chunk
from storage_adapters import (
    AlreadyExists,
    Capability,
    EventKind,
    JobQuery,
    JobRecord,
    JobStatus,
    KeyRecord,
    NamespaceRecord,
    NotFound,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
    adapter_for,
)

as_is = Chunk.stored_as_is

NS = "conf"
T0 = 1_700_000_000_000_000


def new(
    job_id: str, *, ns: str = NS, at: int = T0, tags: tuple[str, ...] = (), ttl: int | None = 3600
) -> lifecycle.Change:
    return lifecycle.new_job(
        namespace=ns,
        job_id=job_id,
        now=at,
        fingerprint="f" * 64,
        metadata={"title": "Ünïcode ✓", "tags": list(tags), "extra": {"n": [1, 2.5, None]}},
        webhook_url="https://example.com/hook",
        ttl=ttl,
    )


async def created(store: StorageAdapter, job_id: str, **kwargs: object) -> JobRecord:
    change = new(job_id, **kwargs)  # type: ignore[arg-type]
    await store.create_job(change.job, change.events)
    return change.job


async def commit(store: StorageAdapter, job: JobRecord, change: lifecycle.Change) -> JobRecord:
    await store.update_job(change.job, change.events, job.revision)
    return change.job


async def append(
    store: StorageAdapter, job: JobRecord, data: bytes, fmt: OutputFormat = OutputFormat.TEXT
) -> JobRecord:
    change = lifecycle.append_chunk(job, as_is(data), fmt, "text/plain", job.updated_at + 1)
    return await commit(store, job, change)


# -- jobs -------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: StorageAdapter) -> None:
    job = await created(store, "job-1", tags=("a", "b"))
    assert await store.get_job(NS, "job-1") == job
    assert await store.get_job(NS, "job-2") is None
    assert await store.get_job("other", "job-1") is None


async def test_create_is_conditional(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    again = new("job-1", at=T0 + 5)
    with pytest.raises(AlreadyExists):
        await store.create_job(again.job, again.events)
    assert await store.get_job(NS, "job-1") == job
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 10)] == [1]


async def test_update_with_current_revision_stores_job_and_events(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    job = await append(store, job, b"hello ")
    job = await append(store, job, b"world")
    stored = await store.get_job(NS, "job-1")
    assert stored == job
    assert stored.status is JobStatus.RUNNING
    events = await store.read_events(NS, "job-1", 0, 100)
    assert [(e.seq, e.kind) for e in events] == [
        (1, EventKind.STATUS),
        (2, EventKind.STATUS),
        (3, EventKind.CHUNK),
        (4, EventKind.CHUNK),
    ]
    assert events[2].data == b"hello " and events[2].index == 0 and events[2].version == 1
    assert events[3].data == b"world" and events[3].index == 1


async def test_stale_revision_loses_and_writes_nothing(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    winner = await append(store, job, b"first")
    losing = lifecycle.append_chunk(job, as_is(b"second"), OutputFormat.TEXT, "text/plain", T0 + 9)
    with pytest.raises(RevisionConflict):
        await store.update_job(losing.job, losing.events, job.revision)
    assert await store.get_job(NS, "job-1") == winner
    events = await store.read_events(NS, "job-1", 0, 100)
    assert [e.data for e in events if e.kind is EventKind.CHUNK] == [b"first"]


async def test_update_of_a_missing_job_is_not_found(store: StorageAdapter) -> None:
    change = new("ghost")
    follow = lifecycle.cancel(change.job, T0 + 1)
    with pytest.raises(NotFound):
        await store.update_job(follow.job, follow.events, change.job.revision)
    assert await store.read_events(NS, "ghost", 0, 10) == []


async def test_concurrent_compare_and_set_has_exactly_one_winner(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    changes = [
        lifecycle.append_chunk(
            job, as_is(f"w{i}".encode()), OutputFormat.TEXT, "text/plain", T0 + i
        )
        for i in range(10)
    ]

    async def attempt(change: lifecycle.Change) -> bool:
        try:
            await store.update_job(change.job, change.events, job.revision)
        except RevisionConflict:
            return False
        return True

    results = await asyncio.gather(*(attempt(c) for c in changes))
    assert results.count(True) == 1
    winner = changes[results.index(True)]
    assert await store.get_job(NS, "job-1") == winner.job
    chunks = [e for e in await store.read_events(NS, "job-1", 0, 100) if e.kind is EventKind.CHUNK]
    assert [c.data for c in chunks] == [winner.events[-1].data]


async def test_contract_violations_are_refused_before_writing(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    change = lifecycle.append_chunk(job, as_is(b"x"), OutputFormat.TEXT, "text/plain", T0 + 1)
    gap = dataclasses.replace(change.events[-1], seq=change.events[-1].seq + 5)
    with pytest.raises(ValueError, match="contiguous"):
        await store.update_job(change.job, (*change.events[:-1], gap), job.revision)
    with pytest.raises(ValueError, match="revision"):
        await store.update_job(change.job, change.events, job.revision + 1)
    assert await store.get_job(NS, "job-1") == job


# -- the log ----------------------------------------------------------------------


async def test_read_events_is_a_range_by_seq(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    for i in range(20):
        job = await append(store, job, f"c{i}".encode())
    assert job.last_seq == 22
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 5)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.read_events(NS, "job-1", 10, 3)] == [11, 12, 13]
    assert [e.seq for e in await store.read_events(NS, "job-1", 20, 100)] == [21, 22]
    assert await store.read_events(NS, "job-1", 22, 100) == []
    assert await store.read_events(NS, "job-1", 99, 100) == []


async def test_chunks_by_version_and_index_keep_bytes_exact(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    every_byte = bytes(range(256))
    job = await append(store, job, every_byte, OutputFormat.BINARY)
    job = await append(store, job, b"\x00\xff" * 1000, OutputFormat.BINARY)
    job = await commit(store, job, lifecycle.start_version(job, T0 + 100, 10))
    job = await append(store, job, "v2 ✓".encode())
    first = await store.read_chunks(NS, "job-1", 1, -1, 10)
    assert [c.data for c in first] == [every_byte, b"\x00\xff" * 1000]
    assert [c.format for c in first] == ["binary", "binary"]
    assert [c.data for c in await store.read_chunks(NS, "job-1", 1, 0, 10)] == [b"\x00\xff" * 1000]
    assert [c.data for c in await store.read_chunks(NS, "job-1", 1, -1, 1)] == [every_byte]
    assert [c.data for c in await store.read_chunks(NS, "job-1", 2, -1, 10)] == ["v2 ✓".encode()]
    assert await store.read_chunks(NS, "job-1", 3, -1, 10) == []
    found = await store.find_chunk(NS, "job-1", 1, 1)
    assert found is not None and found.seq == first[1].seq and found.data == first[1].data
    assert await store.find_chunk(NS, "job-1", 1, 2) is None
    assert await store.find_chunk(NS, "job-1", 2, 0) is not None
    assert await store.find_chunk(NS, "other", 1, 0) is None


async def test_large_chunk_round_trips(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    data = bytes(range(256)) * 4096  # 1 MiB
    await append(store, job, data, OutputFormat.BINARY)
    [chunk] = await store.read_chunks(NS, "job-1", 1, -1, 10)
    assert chunk.data == data


# -- delete -------------------------------------------------------------------------


async def test_delete_is_conditional_and_removes_everything(store: StorageAdapter) -> None:
    job = await created(store, "job-1", tags=("t",))
    job = await append(store, job, b"data")
    done = await commit(store, job, lifecycle.cancel(job, T0 + 50))
    with pytest.raises(RevisionConflict):
        await store.delete_job(NS, "job-1", job.revision)
    await store.delete_job(NS, "job-1", done.revision)
    assert await store.get_job(NS, "job-1") is None
    assert await store.read_events(NS, "job-1", 0, 10) == []
    assert await store.read_chunks(NS, "job-1", 1, -1, 10) == []
    assert await store.list_jobs(NS, JobQuery(limit=10, tag="t")) == []
    with pytest.raises(NotFound):
        await store.delete_job(NS, "job-1", done.revision)
    # The id is free again, and the new job's log starts over.
    again = await created(store, "job-1", at=T0 + 100)
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 10)] == [1]
    assert await store.get_job(NS, "job-1") == again


# -- listing ------------------------------------------------------------------------


async def _populate(store: StorageAdapter) -> list[JobRecord]:
    jobs = []
    for i in range(12):
        tags = ("even",) if i % 2 == 0 else ("odd",)
        job = await created(store, f"job-{i:02d}", at=T0 + (i // 2) * 10, tags=(*tags, "all"))
        if i % 3 == 0:
            job = await commit(store, job, lifecycle.cancel(job, T0 + 1000 + i))
        jobs.append(job)
    await created(store, "elsewhere", ns="other-ns", at=T0)
    return jobs


async def _all_pages(store: StorageAdapter, query: JobQuery) -> list[JobRecord]:
    seen: list[JobRecord] = []
    while True:
        page = await store.list_jobs(NS, query)
        seen.extend(page)
        if len(page) < query.limit:
            return seen
        last = page[-1]
        query = dataclasses.replace(query, after=(last.created_at, last.job_id))


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("limit", [1, 5, 100])
async def test_list_orders_and_pages_by_creation(
    store: StorageAdapter, descending: bool, limit: int
) -> None:
    jobs = await _populate(store)
    expected = sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=descending)
    seen = await _all_pages(store, JobQuery(limit=limit, descending=descending))
    assert [j.job_id for j in seen] == [j.job_id for j in expected]
    assert seen == expected


async def test_list_filters(store: StorageAdapter) -> None:
    jobs = await _populate(store)

    async def ids(**kwargs: object) -> list[str]:
        query = JobQuery(limit=100, descending=False, **kwargs)  # type: ignore[arg-type]
        return [j.job_id for j in await _all_pages(store, query)]

    by_id = {j.job_id: j for j in jobs}
    assert await ids(statuses=frozenset({JobStatus.CANCELLED})) == [
        i for i in sorted(by_id) if by_id[i].status is JobStatus.CANCELLED
    ]
    assert await ids(statuses=frozenset({JobStatus.CANCELLED, JobStatus.QUEUED})) == sorted(by_id)
    assert await ids(tag="even") == [f"job-{i:02d}" for i in range(0, 12, 2)]
    assert await ids(tag="even", statuses=frozenset({JobStatus.QUEUED})) == [
        "job-02",
        "job-04",
        "job-08",
        "job-10",
    ]
    assert await ids(tag="nope") == []
    assert await ids(created_after=T0 + 10, created_before=T0 + 40) == [
        "job-04",
        "job-05",
        "job-06",
        "job-07",
    ]
    # Cancelled jobs expire an hour after they end; the rest never do.
    after_expiry = T0 + 1000 + 3600 * 1_000_000 + 100
    alive = await ids(alive_at=after_expiry)
    assert alive == [i for i in sorted(by_id) if by_id[i].status is JobStatus.QUEUED]
    assert await ids(alive_at=T0) == sorted(by_id)


async def test_list_pages_with_a_tag_filter(store: StorageAdapter) -> None:
    await _populate(store)
    seen = await _all_pages(store, JobQuery(limit=2, tag="all", descending=True))
    assert len(seen) == 12
    assert len({j.job_id for j in seen}) == 12


async def test_list_keyset_is_stable_under_concurrent_inserts(store: StorageAdapter) -> None:
    existing = {j.job_id for j in await _populate(store)}
    query = JobQuery(limit=3, descending=True)
    seen: list[str] = []
    counter = 0
    while True:
        page = await store.list_jobs(NS, query)
        seen.extend(j.job_id for j in page)
        counter += 1
        # New jobs land while we page: newer than everything, and at our position.
        await created(store, f"new-{counter}", at=T0 + 10_000 + counter)
        if len(page) < query.limit:
            break
        last = page[-1]
        query = dataclasses.replace(query, after=(last.created_at, last.job_id))
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


# -- namespaces and keys ------------------------------------------------------------


async def test_namespaces_upsert(store: StorageAdapter) -> None:
    assert await store.get_namespace("ns") is None
    first = NamespaceRecord("ns", {"defaultRetentionPolicy": None, "webhookUrl": None}, T0, T0)
    await store.put_namespace(first)
    assert await store.get_namespace("ns") == first
    second = NamespaceRecord(
        "ns", {"defaultRetentionPolicy": {"ttl": 60}, "webhookUrl": None}, T0, T0 + 1
    )
    await store.put_namespace(second)
    assert await store.get_namespace("ns") == second
    assert await store.get_namespace("ns2") is None


async def test_keys_are_created_once_and_scoped(store: StorageAdapter) -> None:
    key = KeyRecord("ns", "k1", "producer", "ab" * 32, T0)
    await store.create_key(key)
    assert await store.get_key("ns", "k1") == key
    assert await store.get_key("other", "k1") is None
    with pytest.raises(AlreadyExists):
        await store.create_key(dataclasses.replace(key, role="admin"))
    assert await store.get_key("ns", "k1") == key


# -- durability -----------------------------------------------------------------------


async def test_reopening_keeps_data_unless_the_store_is_ephemeral(
    store: StorageAdapter, store_url: str
) -> None:
    job = await created(store, "job-1", tags=("t",))
    job = await append(store, job, b"kept")
    await store.put_namespace(NamespaceRecord("ns", {"webhookUrl": None}, T0, T0))
    await store.close()
    reopened = adapter_for(store_url)
    await reopened.open()
    try:
        if Capability.EPHEMERAL in store.capabilities:
            assert await reopened.get_job(NS, "job-1") is None
            assert await reopened.get_namespace("ns") is None
            return
        assert await reopened.get_job(NS, "job-1") == job
        [chunk] = await reopened.read_chunks(NS, "job-1", 1, -1, 10)
        assert chunk.data == b"kept"
        assert await reopened.get_namespace("ns") is not None
    finally:
        await reopened.close()
        await store.open()  # the fixture closes it


async def test_compare_and_set_tells_a_recreated_job_apart(store: StorageAdapter) -> None:
    """A writer holding the row of a deleted job never writes into its successor,
    even when the successor is at the same revision."""
    old = await created(store, "job-1")
    await store.delete_job(NS, "job-1", old.revision)
    new = await created(store, "job-1", at=T0 + 10)
    assert new.revision == old.revision
    stale = lifecycle.append_chunk(old, as_is(b"late"), OutputFormat.TEXT, "text/plain", T0 + 20)
    with pytest.raises(RevisionConflict):
        await store.update_job(stale.job, stale.events, old.revision)
    assert await store.get_job(NS, "job-1") == new
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 10)] == [1]
