"""The webhook outbox part of the ``StorageAdapter`` contract, on every store."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from service import lifecycle
from service.lifecycle import Chunk
from storage_adapters import (
    AttemptRecord,
    DeliveryQuery,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    JobRecord,
    OutputFormat,
    RevisionConflict,
    StorageAdapter,
)

from .test_store_contract import NS, T0, new

as_is = Chunk.stored_as_is

LEASE = 60_000_000


def delivery(
    job: JobRecord, n: int, *, due: int = T0, shard: int = 7, event: str = "job.status"
) -> DeliveryRecord:
    return DeliveryRecord(
        namespace=job.namespace,
        delivery_id=f"msg_{job.job_id}_{n:04d}",
        job_id=job.job_id,
        event_type=event,
        payload=b'{"type":"%s","n":%d}' % (event.encode(), n),
        url="https://hooks.example.com/aos",
        shard=shard,
        state=DeliveryState.PENDING,
        next_attempt_at=due,
        created_at=T0 + n,
        updated_at=T0 + n,
    )


async def queued(
    store: StorageAdapter, job_id: str, count: int, **kwargs: object
) -> tuple[JobRecord, list[DeliveryRecord]]:
    change = new(job_id)
    rows = [delivery(change.job, n, **kwargs) for n in range(count)]  # type: ignore[arg-type]
    await store.create_job(change.job, change.events, rows)
    return change.job, rows


async def test_deliveries_are_written_with_the_job(store: StorageAdapter) -> None:
    job, rows = await queued(store, "job-1", 2)
    for row in rows:
        assert await store.get_delivery(NS, row.delivery_id) == row
    change = lifecycle.cancel(job, T0 + 10)
    more = [delivery(change.job, 2, event="job.completed")]
    await store.update_job(change.job, change.events, job.revision, more)
    assert await store.get_delivery(NS, more[0].delivery_id) == more[0]
    assert await store.get_delivery("other", more[0].delivery_id) is None


async def test_a_lost_compare_and_set_queues_nothing(store: StorageAdapter) -> None:
    job, _ = await queued(store, "job-1", 1)
    winner = lifecycle.append_chunk(job, as_is(b"a"), OutputFormat.TEXT, "text/plain", T0 + 1)
    await store.update_job(winner.job, winner.events, job.revision)
    loser = lifecycle.cancel(job, T0 + 2)
    with pytest.raises(RevisionConflict):
        await store.update_job(loser.job, loser.events, job.revision, [delivery(loser.job, 9)])
    assert await store.get_delivery(NS, "msg_job-1_0009") is None


async def test_claims_take_due_rows_once_under_a_lease(store: StorageAdapter) -> None:
    await queued(store, "early", 3, due=T0)
    await queued(store, "later", 2, due=T0 + 1_000_000)
    first = await store.claim_deliveries(now=T0, limit=2, owner="a", lease_until=T0 + LEASE)
    assert [d.delivery_id for d in first] == ["msg_early_0000", "msg_early_0001"]
    assert all(d.lease_owner == "a" and d.lease_until == T0 + LEASE for d in first)
    second = await store.claim_deliveries(now=T0, limit=10, owner="b", lease_until=T0 + LEASE)
    assert [d.delivery_id for d in second] == ["msg_early_0002"]
    assert await store.claim_deliveries(now=T0, limit=10, owner="c", lease_until=T0 + LEASE) == []
    # The later rows fall due; the leased ones stay with their holders.
    due = await store.claim_deliveries(
        now=T0 + 1_000_000, limit=10, owner="c", lease_until=T0 + 1_000_000 + LEASE
    )
    assert [d.delivery_id for d in due] == ["msg_later_0000", "msg_later_0001"]
    # A lease that runs out makes its rows claimable again (a crashed node).
    after = T0 + LEASE + 1
    again = await store.claim_deliveries(now=after, limit=10, owner="d", lease_until=after + LEASE)
    assert {d.delivery_id for d in again} == {d.delivery_id for d in first + second}


async def test_claims_by_shard(store: StorageAdapter) -> None:
    await queued(store, "s1", 2, shard=1)
    await queued(store, "s2", 2, shard=2)
    mine = await store.claim_deliveries(
        now=T0, limit=10, owner="a", lease_until=T0 + LEASE, shards={2, 3}
    )
    assert {d.shard for d in mine} == {2} and len(mine) == 2
    assert (
        await store.claim_deliveries(
            now=T0, limit=10, owner="a", lease_until=T0 + LEASE, shards=set()
        )
        == []
    )


async def test_concurrent_claims_are_disjoint(store: StorageAdapter) -> None:
    for j in range(5):
        await queued(store, f"job-{j}", 10)
    batches = await asyncio.gather(
        *(
            store.claim_deliveries(now=T0, limit=7, owner=f"node-{i}", lease_until=T0 + LEASE)
            for i in range(8)
        )
    )
    ids = [d.delivery_id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 50


async def test_only_the_lease_holder_finishes(store: StorageAdapter) -> None:
    await queued(store, "job-1", 2)
    claimed = await store.claim_deliveries(now=T0, limit=10, owner="a", lease_until=T0 + LEASE)
    attempt = AttemptRecord(at=T0 + 5, status=200, latency_ms=12.5, response="ok ✓")
    done = dataclasses.replace(
        claimed[0],
        state=DeliveryState.SUCCEEDED,
        attempts=1,
        last_status=200,
        lease_owner=None,
        lease_until=None,
        updated_at=T0 + 5,
        log=(attempt,),
    )
    retry = dataclasses.replace(
        claimed[1],
        attempts=1,
        last_status=503,
        last_error="HTTP 503",
        next_attempt_at=T0 + 5_000_000,
        lease_owner=None,
        lease_until=None,
        updated_at=T0 + 5,
        log=(AttemptRecord(T0 + 5, 503, 3.0, "HTTP 503", None),),
    )
    assert await store.finish_deliveries([done, retry], owner="b") == [False, False]
    assert (await store.get_delivery(NS, done.delivery_id)).lease_owner == "a"  # type: ignore[union-attr]
    assert await store.finish_deliveries([done, retry], owner="a") == [True, True]
    assert await store.get_delivery(NS, done.delivery_id) == done
    assert await store.get_delivery(NS, retry.delivery_id) == retry
    # Finished rows are not due (succeeded) or not yet due (retry).
    assert (
        await store.claim_deliveries(now=T0 + 10, limit=10, owner="a", lease_until=T0 + LEASE) == []
    )
    [again] = await store.claim_deliveries(
        now=T0 + 5_000_000, limit=10, owner="a", lease_until=T0 + LEASE * 2
    )
    assert again.delivery_id == retry.delivery_id and again.attempts == 1


async def test_requeue_replays_with_a_fresh_budget(store: StorageAdapter) -> None:
    await queued(store, "job-1", 3)
    claimed = await store.claim_deliveries(now=T0, limit=3, owner="a", lease_until=T0 + LEASE)
    dead = [
        dataclasses.replace(
            d, state=DeliveryState.DEAD, attempts=8, lease_owner=None, lease_until=None
        )
        for d in claimed[:2]
    ]
    await store.finish_deliveries(dead, owner="a")
    ids = [d.delivery_id for d in claimed]
    # The third is still leased (in flight): left alone.
    assert await store.requeue_deliveries(NS, [*ids, "msg_missing"], T0 + 100) == 2
    for d in dead:
        stored = await store.get_delivery(NS, d.delivery_id)
        assert stored is not None
        assert (stored.state, stored.attempts, stored.next_attempt_at) == (
            DeliveryState.PENDING,
            0,
            T0 + 100,
        )
        assert stored.lease_owner is None
    assert (await store.get_delivery(NS, ids[2])).lease_owner == "a"  # type: ignore[union-attr]


async def test_listing_deliveries(store: StorageAdapter) -> None:
    await queued(store, "a", 3)
    await queued(store, "b", 2)
    claimed = await store.claim_deliveries(now=T0, limit=1, owner="x", lease_until=T0 + LEASE)
    await store.finish_deliveries(
        [
            dataclasses.replace(
                claimed[0], state=DeliveryState.DEAD, lease_owner=None, lease_until=None
            )
        ],
        owner="x",
    )

    async def ids(**kwargs: object) -> list[str]:
        out: list[str] = []
        query = DeliveryQuery(limit=2, **kwargs)  # type: ignore[arg-type]
        while True:
            page = await store.list_deliveries(NS, query)
            out.extend(d.delivery_id for d in page)
            if len(page) < query.limit:
                return out
            query = dataclasses.replace(query, after=(page[-1].created_at, page[-1].delivery_id))

    assert await ids(job_id="a") == ["msg_a_0002", "msg_a_0001", "msg_a_0000"]
    assert await ids(state=DeliveryState.DEAD) == [claimed[0].delivery_id]
    assert await ids(created_since=T0 + 2) == ["msg_a_0002"]
    assert len(await ids()) == 5
    assert await store.list_deliveries("other", DeliveryQuery(limit=10)) == []


async def test_outbox_stats(store: StorageAdapter) -> None:
    assert (await store.outbox_stats(T0)).pending == 0
    await queued(store, "a", 3, due=T0 + 50, shard=1)
    await queued(store, "b", 1, due=T0 + 20, shard=2)
    stats = await store.outbox_stats(T0)
    assert (stats.pending, stats.oldest_due_at) == (4, T0 + 20)
    one = await store.outbox_stats(T0, shards={1})
    assert (one.pending, one.oldest_due_at) == (3, T0 + 50)


async def test_endpoints(store: StorageAdapter) -> None:
    url = "https://hooks.example.com/" + "x" * 1500  # long URLs are fine
    assert await store.get_endpoint(NS, url) is None
    await store.put_endpoint(EndpointRecord(NS, url))
    await store.put_endpoint(EndpointRecord(NS, "https://b.example.com/", T0, "HTTP 410"))
    assert await store.get_endpoint(NS, url) == EndpointRecord(NS, url)
    await store.put_endpoint(EndpointRecord(NS, url, T0 + 1, "HTTP 410 Gone"))
    assert await store.get_endpoint(NS, url) == EndpointRecord(NS, url, T0 + 1, "HTTP 410 Gone")
    listed = await store.list_endpoints(NS)
    assert [e.url for e in listed] == sorted([url, "https://b.example.com/"])
    assert await store.list_endpoints("other") == []
