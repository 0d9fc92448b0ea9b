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
    AuditQuery,
    AuditRecord,
    ConfigurationError,
    JobQuery,
    KeyRecord,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
    StoreUnavailable,
    adapter_for,
)
from storage_adapters import cassandra as module
from storage_adapters.cassandra import AUDIT_MIN_TTL, INLINE_MAX, PART_BYTES, CassandraAdapter

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


# -- keys and the audit log ---------------------------------------------------------

DAY = 86_400_000_000


def _audit(at: int, n: int, expires_at: int | None = None) -> AuditRecord:
    return AuditRecord(
        NS,
        f"{at:016x}{n:08x}",
        at,
        "job.submit",
        "key:k1",
        "success",
        f"job-{n}",
        None,
        {"n": n},
        at + DAY if expires_at is None else expires_at,
    )


async def test_audit_walks_day_buckets_newest_first_and_only_as_far_as_needed(
    store: StorageAdapter,
) -> None:
    assert isinstance(store, CassandraAdapter)
    entries = [_audit(T0 + d * DAY + i, d * 10 + i) for d in range(5) for i in range(2)]
    await store.append_audit(entries[::-1])
    ids = [e.entry_id for e in entries]
    seen: list[str] = []
    query = AuditQuery(limit=3)
    while page := await store.list_audit(NS, query):
        seen += [e.entry_id for e in page]
        query = AuditQuery(limit=3, max_id=page[-1].entry_id)
    assert seen == ids[::-1]
    days = await store._rows(
        f"SELECT bucket FROM {store.keyspace}.buckets WHERE scope = %s", (f"a/{NS}",)
    )
    assert sorted(r[0] for r in days) == [T0 // DAY + d for d in range(5)]

    calls: list[str] = []
    run = store._run

    async def counted(name: str, *params: object) -> list[object]:
        calls.append(name)
        return await run(name, *params)

    store._run = counted  # type: ignore[method-assign]
    window = await store.list_audit(NS, AuditQuery(limit=10, min_id=ids[6]))
    assert [e.entry_id for e in window] == ids[:5:-1]
    assert calls.count("audit") == 2, "days 4 and 3 only: the walk stops at min_id's day"
    calls.clear()
    assert await store.list_audit("nobody", AuditQuery(limit=10)) == []
    assert calls == ["buckets_desc"], "a namespace with no audit days costs one query"


async def test_audit_entries_expire_natively(store: StorageAdapter) -> None:
    assert isinstance(store, CassandraAdapter)
    now = time.time_ns() // 1000
    live = _audit(now, 1, expires_at=now + 30 * DAY)
    late = _audit(now, 2, expires_at=now - DAY)  # arrives expired: kept a day, hidden
    await store.append_audit([live, late])
    rows = await store._rows(
        f"SELECT entry_id, TTL(doc) FROM {store.keyspace}.audit WHERE namespace = %s AND day = %s",
        (NS, now // DAY),
    )
    ttls = dict(rows)
    assert 30 * 86400 - 60 < ttls[live.entry_id] <= 30 * 86400
    assert AUDIT_MIN_TTL - 60 < ttls[late.entry_id] <= AUDIT_MIN_TTL
    assert await store.list_audit(NS, AuditQuery(limit=10, alive_at=now)) == [live]
    assert await store.purge_audit(now, 10) == 0


async def test_a_key_update_never_leaves_a_row_behind(store: StorageAdapter) -> None:
    assert isinstance(store, CassandraAdapter)
    ks = store.keyspace
    assert await store.update_key(NS, "ghost", {"last_used_at": T0}) is False
    assert await store.update_key(NS, "ghost", {"revoked_at": T0}) is False
    found = f"SELECT key_id FROM {ks}.api_keys WHERE namespace = %s AND key_id = %s"
    assert await store._rows(found, (NS, "ghost")) == []
    # A row that only an update wrote (the key was never created) is no key.
    await store._rows(
        f"UPDATE {ks}.api_keys SET last_used_at = 1 WHERE namespace = %s AND key_id = %s",
        (NS, "ghost"),
    )
    assert await store.get_key(NS, "ghost") is None
    assert await store.list_keys(NS) == []


async def test_upgrading_from_v1_keeps_keys_and_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with STORES["cassandra"](tmp_path, empty=True) as url:
        every = module._migrations
        monkeypatch.setattr(module, "_migrations", lambda ks: every(ks)[:1])
        monkeypatch.setattr(CassandraAdapter, "_prepare", lambda self: _nothing())
        old = adapter_for(url)
        assert isinstance(old, CassandraAdapter)
        assert await old.open() == [1]
        await old._rows(
            f"INSERT INTO {old.keyspace}.api_keys (namespace, key_id, role, secret_hash, "
            "created_at) VALUES (%s, %s, 'consumer', 'ab', %s)",
            (NS, "k1", T0),
        )
        await old.close()
        monkeypatch.undo()

        new = adapter_for(url)
        assert isinstance(new, CassandraAdapter)
        assert await new.open() == [2]
        try:
            before = KeyRecord(NS, "k1", "consumer", "ab", T0)
            assert await new.get_key(NS, "k1") == before
            assert await new.list_keys(NS) == [before]
            assert await new.update_key(NS, "k1", {"revoked_at": T0 + 1}) is True
            assert await new.list_keys(NS) == [
                KeyRecord(NS, "k1", "consumer", "ab", T0, None, None, T0 + 1)
            ]
            # A migration taken over half-way runs its ALTER again: that is no error.
            await new._ddl(every(new.keyspace)[1][1][0])
        finally:
            await new.close()


async def _nothing() -> None:
    pass
