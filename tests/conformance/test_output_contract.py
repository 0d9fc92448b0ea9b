"""Output storage and retention in the ``StorageAdapter`` contract, on every store:
encoded chunks round-trip, changes that log nothing, expiry, and purges in
bounded batches that never touch a job created again under the same id."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from service import lifecycle
from service.codec import Codec
from service.lifecycle import Chunk
from sharding import shard_of
from storage_adapters import (
    DeliveryQuery,
    EventKind,
    JobQuery,
    JobRecord,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
)

from .test_outbox_contract import delivery
from .test_store_contract import NS, T0, commit, created

TEXT = b"".join(b"%06d: the same words again and again\n" % i for i in range(30_000))


async def test_encoded_chunks_round_trip_with_codec_digest_and_offset(
    store: StorageAdapter,
) -> None:
    codec = Codec(max_chunk=4 << 20)
    job = await created(store, "job-1")
    parts = [TEXT, b"short", bytes(range(256)) * 8]
    for part in parts:
        change = lifecycle.append_chunk(
            job, codec.encode(part), OutputFormat.BINARY, "a/b", job.updated_at + 1
        )
        job = await commit(store, job, change)
    chunks = await store.read_chunks(NS, "job-1", 1, -1, 10)
    assert [c.codec for c in chunks] == ["zstd", "", "zstd"]
    assert [c.offset for c in chunks] == [0, len(TEXT), len(TEXT) + 5]
    assert [c.digest for c in chunks] == [hashlib.sha256(p).digest() for p in parts]
    assert [codec.decode(c) for c in chunks] == parts
    logged = [e for e in await store.read_events(NS, "job-1", 0, 10) if e.kind is EventKind.CHUNK]
    assert logged == chunks
    assert await store.find_chunk(NS, "job-1", 1, 1) == chunks[1]
    version = (await store.get_job(NS, "job-1")).versions[0]
    assert version.size == sum(map(len, parts))
    assert version.stored_size == sum(len(c.data) for c in chunks)
    assert (version.raw_chunks, version.max_chunk) == (1, max(len(c.data) for c in chunks))


async def test_a_change_that_logs_nothing_moves_only_the_revision(store: StorageAdapter) -> None:
    job = await created(store, "job-1")
    job = await commit(
        store,
        job,
        lifecycle.append_chunk(
            job, Chunk.stored_as_is(b"abc"), OutputFormat.TEXT, "t", job.updated_at + 1
        ),
    )
    sealed = lifecycle.seal_version(job, 1, 1, "ab" * 32, T0 + 99)
    assert sealed.events == ()
    await store.update_job(sealed.job, sealed.events, job.revision)
    assert await store.get_job(NS, "job-1") == sealed.job
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 10)] == [1, 2, 3]
    with pytest.raises(RevisionConflict):  # still a compare-and-set
        await store.update_job(sealed.job, (), job.revision)


async def finished(store: StorageAdapter, job_id: str, *, ended: int, ttl: int | None) -> JobRecord:
    job = await created(store, job_id, ttl=ttl, tags=("keep",))
    return await commit(store, job, lifecycle.cancel(job, ended))


async def test_expired_jobs_come_earliest_first_within_shards(store: StorageAdapter) -> None:
    early = await finished(store, "early", ended=T0 + 10, ttl=5)
    late = await finished(store, "late", ended=T0 + 20, ttl=5)
    await finished(store, "not-yet", ended=T0 + 20, ttl=3600)
    await finished(store, "forever", ended=T0 + 20, ttl=None)
    await created(store, "running", ttl=1)
    now = T0 + 40_000_000
    assert [j.job_id for j in await store.expired_jobs(now, 10)] == ["early", "late"]
    assert await store.expired_jobs(now, 1) == [early]
    assert await store.expired_jobs(T0 + 5_000_009, 10) == []
    assert await store.expired_jobs(early.expires_at, 10) == [early]
    shard = shard_of(NS)
    assert await store.expired_jobs(now, 10, [shard]) == [early, late]
    assert await store.expired_jobs(now, 10, [(shard + 1) % 1024]) == []
    assert await store.expired_jobs(now, 10, []) == []


async def test_purge_goes_in_bounded_batches_oldest_first(store: StorageAdapter) -> None:
    job = await created(store, "big", ttl=1, tags=("keep",))
    for n in range(7):
        chunk = Chunk.stored_as_is(b"chunk %d" % n)
        job = await commit(
            store,
            job,
            lifecycle.append_chunk(job, chunk, OutputFormat.TEXT, "t", job.updated_at + 1),
        )
    change = lifecycle.cancel(job, job.updated_at + 1)
    rows = [delivery(change.job, n) for n in range(4)]
    await store.update_job(change.job, change.events, job.revision, rows)
    job = change.job
    assert job.last_seq == 10
    other = await finished(store, "other", ended=T0 + 5, ttl=1)

    assert await store.purge_job(NS, "big", job.created_at, 4) is False
    assert [e.seq for e in await store.read_events(NS, "big", 0, 100)] == [5, 6, 7, 8, 9, 10]
    assert await store.get_job(NS, "big") == job  # the row goes last
    assert await store.purge_job(NS, "big", job.created_at, 4) is False
    assert await store.purge_job(NS, "big", job.created_at, 4) is False  # 2 entries, 2 deliveries
    assert await store.read_events(NS, "big", 0, 100) == []
    assert len(await store.list_deliveries(NS, DeliveryQuery(limit=10, job_id="big"))) == 2
    assert await store.purge_job(NS, "big", job.created_at, 4) is True
    assert await store.get_job(NS, "big") is None
    assert await store.read_chunks(NS, "big", 1, -1, 100) == []
    assert await store.list_deliveries(NS, DeliveryQuery(limit=10, job_id="big")) == []
    assert [j.job_id for j in await store.list_jobs(NS, JobQuery(limit=10, tag="keep"))] == [
        "other"
    ]
    assert await store.purge_job(NS, "big", job.created_at, 4) is True  # gone: done
    assert await store.get_job(NS, "other") == other


async def test_purge_leaves_a_job_created_again_alone(store: StorageAdapter) -> None:
    old = await finished(store, "job-1", ended=T0 + 5, ttl=1)
    assert await store.purge_job(NS, "job-1", old.created_at, 100) is True
    again = await created(store, "job-1", at=T0 + 100)
    assert await store.purge_job(NS, "job-1", old.created_at, 100) is True
    assert await store.get_job(NS, "job-1") == again
    assert [e.seq for e in await store.read_events(NS, "job-1", 0, 10)] == [1]


async def test_purge_and_expiry_are_kept_per_namespace(store: StorageAdapter) -> None:
    mine = await finished(store, "job-1", ended=T0 + 5, ttl=1)
    theirs = await created(store, "job-1", ns="other-ns")
    theirs = await commit(store, theirs, lifecycle.cancel(theirs, T0 + 5))
    assert await store.purge_job(NS, "job-1", mine.created_at, 100) is True
    assert await store.get_job("other-ns", "job-1") == theirs
    assert [e.seq for e in await store.read_events("other-ns", "job-1", 0, 10)] == [1, 2]
    expired = await store.expired_jobs(T0 + 10**12, 10)
    assert [(j.namespace, j.job_id) for j in expired] == [("other-ns", "job-1")]
    assert dataclasses.replace(expired[0]) == theirs
