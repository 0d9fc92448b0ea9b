"""What the conformance suite cannot see of the Cassandra adapter: URL options,
error translation, and the parts of its data model that span partitions."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("cassandra")

from service import lifecycle
from service.lifecycle import Chunk
from storage_adapters import (
    AlreadyExists,
    ConfigurationError,
    JobQuery,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
    StoreUnavailable,
    adapter_for,
)
from storage_adapters.cassandra import INLINE_MAX, PART_BYTES, CassandraAdapter

from ..stores import STORES
from ..stores_cassandra import overwrite_event_data

NS = "unit"
T0 = 1_700_000_000_000_000


def test_url_options_are_parsed() -> None:
    store = adapter_for(
        "cassandra://u:p%40ss@h1,h2:9142/aos?consistency=quorum&serial_consistency=SERIAL"
        "&local_dc=dc1&tls_ca=/etc/ca.pem&connect_timeout=2&request_timeout=3"
        "&replication=dc1:3,dc2:2"
    )
    assert isinstance(store, CassandraAdapter)
    assert store.hosts == ["h1", "h2"] and store.port == 9142 and store.keyspace == "aos"
    assert (store.connect_timeout, store.request_timeout) == (2.0, 3.0)
    assert store.tls and store.tls_ca == "/etc/ca.pem" and store.local_dc == "dc1"
    assert store.replication == ("{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}")
    simple = adapter_for("cassandra://h/ks?replication_factor=3")
    assert isinstance(simple, CassandraAdapter)
    assert simple.replication == "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    assert simple.port == 9042 and not simple.tls


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("cassandra://h", "needs a keyspace"),
        ("cassandra://h/bad-name", "letters, digits or underscores"),
        ("cassandra://h/ks?consistency=SOMETIMES", "not a consistency level"),
        ("cassandra://h/ks?serial_consistency=QUORUM", "SERIAL or LOCAL_SERIAL"),
        ("cassandra://h/ks?replication_factor=0", "positive integer"),
        ("cassandra://h/ks?replication=dc1", "dc1:3,dc2:3"),
        ("cassandra://h/ks?replication=dc1:1&replication_factor=1", "not both"),
        ("cassandra://h/ks?request_timeout=soon", "must be numbers"),
        ("cassandra://h/ks?tls=maybe", "true or false"),
        ("cassandra://h/ks?consistancy=ONE", "unknown cassandra URL options"),
    ],
)
def test_bad_options_are_named(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        adapter_for(url)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_no_server_is_unavailable_quickly() -> None:
    store = adapter_for(f"cassandra://127.0.0.1:{_unused_port()}/ks?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.open()
    assert time.monotonic() - started < 10


@pytest.fixture
async def store_url(tmp_path: Path) -> AsyncIterator[str]:
    async with STORES["cassandra"](tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StorageAdapter]:
    opened = adapter_for(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_keyspace_that_is_missing_without_replication_is_explained(
    store_url: str,
) -> None:
    url = store_url.split("?")[0] + "_missing"
    with pytest.raises(ConfigurationError, match="does not exist"):
        await adapter_for(url).open()


def _new(job_id: str, at: int = T0, tags: tuple[str, ...] = ()) -> lifecycle.Change:
    return lifecycle.new_job(
        namespace=NS,
        job_id=job_id,
        now=at,
        fingerprint="f" * 64,
        metadata={"tags": list(tags)},
        webhook_url=None,
        ttl=60,
    )


async def test_chunks_larger_than_a_part_go_out_of_line_and_round_trip(
    store: StorageAdapter, store_url: str
) -> None:
    change = _new("big")
    await store.create_job(change.job, change.events)
    small = bytes(range(256)) * 16
    large = bytes(range(251)) * (2 * PART_BYTES // 251 + 7)  # three parts
    job = change.job
    for data in (small, large):
        step = lifecycle.append_chunk(
            job, Chunk.stored_as_is(data), OutputFormat.BINARY, "a/b", job.updated_at + 1
        )
        await store.update_job(step.job, step.events, job.revision)
        job = step.job
    assert len(small) <= INLINE_MAX < len(large)
    chunks = await store.read_chunks(NS, "big", 1, -1, 10)
    assert [c.data for c in chunks] == [small, large]
    found = await store.find_chunk(NS, "big", 1, 1)
    assert found is not None and found.data == large
    # Damage behind the adapter's back is seen as different bytes, never as an error.
    flipped = bytes([large[0] ^ 1]) + large[1:]
    await overwrite_event_data(store_url, NS, "big", chunks[1].seq, flipped)
    assert (await store.find_chunk(NS, "big", 1, 1)).data == flipped  # type: ignore[union-attr]
    # Purging removes the out-of-line parts too.
    cancelled = lifecycle.cancel(job, job.updated_at + 1)
    await store.update_job(cancelled.job, cancelled.events, job.revision)
    assert await store.purge_job(NS, "big", job.created_at, 100) is True
    assert await store.read_chunks(NS, "big", 1, -1, 10) == []


async def test_a_lost_compare_and_set_leaves_nothing_visible(store: StorageAdapter) -> None:
    change = _new("job")
    await store.create_job(change.job, change.events)
    winner = lifecycle.append_chunk(
        change.job, Chunk.stored_as_is(b"w"), OutputFormat.TEXT, "t", T0 + 1
    )
    loser = lifecycle.append_chunk(
        change.job, Chunk.stored_as_is(b"L" * (INLINE_MAX * 2)), OutputFormat.TEXT, "t", T0 + 2
    )
    await store.update_job(winner.job, winner.events, change.job.revision)
    with pytest.raises(RevisionConflict):
        await store.update_job(loser.job, loser.events, change.job.revision)
    [chunk] = await store.read_chunks(NS, "job", 1, -1, 10)
    assert chunk.data == b"w"
    # A create that loses leaves index entries for a job that does not exist as
    # written: listing ignores them.
    again = _new("job", at=T0 + 50, tags=("x",))
    with pytest.raises(AlreadyExists):
        await store.create_job(again.job, again.events)
    assert await store.list_jobs(NS, JobQuery(limit=10, tag="x")) == []
    assert [j.job_id for j in await store.list_jobs(NS, JobQuery(limit=10))] == ["job"]


async def test_listing_walks_time_buckets_both_ways(store: StorageAdapter) -> None:
    hour = 3600 * 1_000_000
    ids = []
    for n in range(6):  # one job per hour: six buckets
        change = _new(f"j{n}", at=T0 + n * hour, tags=("t",))
        await store.create_job(change.job, change.events)
        ids.append(f"j{n}")
    for tag in (None, "t"):
        for descending in (True, False):
            seen: list[str] = []
            query = JobQuery(limit=2, tag=tag, descending=descending)
            while True:
                page = await store.list_jobs(NS, query)
                seen += [j.job_id for j in page]
                if len(page) < 2:
                    break
                query = JobQuery(
                    limit=2,
                    tag=tag,
                    descending=descending,
                    after=(page[-1].created_at, page[-1].job_id),
                )
            assert seen == (ids[::-1] if descending else ids)
    window = JobQuery(limit=10, created_after=T0 + hour, created_before=T0 + 4 * hour)
    assert [j.job_id for j in await store.list_jobs(NS, window)] == ["j3", "j2"]
