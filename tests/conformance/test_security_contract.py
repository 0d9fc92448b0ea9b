"""The storage contract of issue 9, for every store: key lifecycle fields,
listing namespaces and keys, the audit log, and a namespace's usage.

Runs against the in-memory store and every durable store (``tests/stores.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from service import lifecycle
from service.lifecycle import Chunk
from storage_adapters import (
    AuditQuery,
    AuditRecord,
    KeyRecord,
    NamespaceRecord,
    OutputFormat,
    StorageAdapter,
)

T0 = 1_700_000_000_000_000
DAY = 86_400_000_000


def key(namespace: str, key_id: str, **fields: object) -> KeyRecord:
    return KeyRecord(namespace, key_id, "consumer", "cd" * 32, T0, **fields)  # type: ignore[arg-type]


def entry(namespace: str, at: int, n: int, **fields: object) -> AuditRecord:
    values: dict[str, object] = {
        "namespace": namespace,
        "entry_id": f"{at:016x}{n:08x}",
        "at": at,
        "action": "job.submit",
        "actor": "key:k1",
        "outcome": "success",
        "target": f"job-{n}",
        "request_id": f"req-{n}",
        "detail": {"n": n, "text": "Ünïcode ✓", "nested": {"list": [1, None]}},
        "expires_at": at + DAY,
    }
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


# -- keys --------------------------------------------------------------------------


async def test_key_fields_round_trip(store: StorageAdapter) -> None:
    full = key("ns", "k1", name="ci deploy ✓", expires_at=T0 + DAY)
    await store.create_key(full)
    assert await store.get_key("ns", "k1") == full
    bare = key("ns", "k2")
    await store.create_key(bare)
    got = await store.get_key("ns", "k2")
    assert got == bare and got is not None
    assert (got.name, got.expires_at, got.revoked_at, got.last_used_at) == (None,) * 4


async def test_list_keys_of_one_namespace_in_id_order(store: StorageAdapter) -> None:
    assert await store.list_keys("ns") == []
    for key_id in ("kc", "ka", "kb"):
        await store.create_key(key("ns", key_id))
    await store.create_key(key("other", "kz"))
    await store.update_key("ns", "kb", {"revoked_at": T0 + 5})
    listed = await store.list_keys("ns")
    assert [k.key_id for k in listed] == ["ka", "kb", "kc"]
    assert listed[1].revoked_at == T0 + 5, "revoked keys are listed too"
    assert [k.key_id for k in await store.list_keys("other")] == ["kz"]


async def test_update_key_sets_only_the_given_fields(store: StorageAdapter) -> None:
    await store.create_key(key("ns", "k1", name="n", expires_at=T0 + DAY))
    assert await store.update_key("ns", "k1", {"last_used_at": T0 + 1}) is True
    assert await store.update_key("ns", "k1", {"revoked_at": T0 + 2}) is True
    got = await store.get_key("ns", "k1")
    assert got is not None
    assert (got.name, got.expires_at, got.revoked_at, got.last_used_at) == (
        "n",
        T0 + DAY,
        T0 + 2,
        T0 + 1,
    )
    assert got.secret_hash == "cd" * 32 and got.role == "consumer"
    # None clears a field
    assert await store.update_key("ns", "k1", {"expires_at": None}) is True
    got = await store.get_key("ns", "k1")
    assert got is not None and got.expires_at is None and got.revoked_at == T0 + 2


async def test_update_of_a_missing_key_writes_nothing(store: StorageAdapter) -> None:
    assert await store.update_key("ns", "nope", {"revoked_at": T0}) is False
    assert await store.get_key("ns", "nope") is None
    assert await store.list_keys("ns") == []
    await store.create_key(key("other", "k1"))
    assert await store.update_key("ns", "k1", {"last_used_at": T0}) is False
    assert await store.get_key("ns", "k1") is None


async def test_concurrent_updates_of_different_fields_are_both_kept(
    store: StorageAdapter,
) -> None:
    await store.create_key(key("ns", "k1"))
    for i in range(5):
        await asyncio.gather(
            store.update_key("ns", "k1", {"last_used_at": T0 + i}),
            store.update_key("ns", "k1", {"revoked_at": T0 + 100 + i}),
        )
        got = await store.get_key("ns", "k1")
        assert got is not None
        assert (got.last_used_at, got.revoked_at) == (T0 + i, T0 + 100 + i)


def test_update_key_refuses_fields_it_may_not_change() -> None:
    from storage_adapters import adapter_for

    store = adapter_for("memory://")
    with pytest.raises(ValueError, match="role"):
        asyncio.run(store.update_key("ns", "k1", {"role": 1}))
    with pytest.raises(ValueError, match="nothing"):
        asyncio.run(store.update_key("ns", "k1", {}))


# -- namespaces --------------------------------------------------------------------


async def test_list_namespaces_pages_in_name_order(store: StorageAdapter) -> None:
    assert await store.list_namespaces(None, 10) == []
    names = ["b-ns", "a-ns", "c.ns", "a0", "z_9"]
    for i, name in enumerate(names):
        await store.put_namespace(NamespaceRecord(name, {"i": i}, T0, T0 + i))
    expected = sorted(names)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_namespaces(after, 2)
        assert len(page) <= 2
        seen += [n.name for n in page]
        if len(page) < 2:
            break
        after = page[-1].name
    assert seen == expected
    first = await store.list_namespaces(None, 1)
    assert first == [NamespaceRecord("a-ns", {"i": 1}, T0, T0 + 1)]
    assert await store.list_namespaces("z_9", 5) == []


# -- audit log ---------------------------------------------------------------------


async def test_audit_entries_round_trip_newest_first(store: StorageAdapter) -> None:
    entries = [entry("ns", T0 + i * 1000, i) for i in range(5)]
    await store.append_audit(entries[:2])
    await store.append_audit(entries[2:])
    await store.append_audit([entry("other", T0, 99)])
    got = await store.list_audit("ns", AuditQuery(limit=10))
    assert got == list(reversed(entries))
    assert [e.entry_id for e in await store.list_audit("other", AuditQuery(limit=10))] == [
        f"{T0:016x}{99:08x}"
    ]
    assert await store.list_audit("none", AuditQuery(limit=10)) == []


async def test_audit_entry_with_empty_fields(store: StorageAdapter) -> None:
    bare = entry("ns", T0, 1, target=None, request_id=None, detail={})
    await store.append_audit([bare])
    assert await store.list_audit("ns", AuditQuery(limit=1)) == [bare]


async def test_audit_pages_by_id_bounds(store: StorageAdapter) -> None:
    entries = [entry("ns", T0 + i * 1000, i) for i in range(7)]
    await store.append_audit(entries)
    ids = [e.entry_id for e in entries]
    # page backwards: max_id is the last id of the previous page
    seen: list[str] = []
    query = AuditQuery(limit=3)
    while True:
        page = await store.list_audit("ns", query)
        seen += [e.entry_id for e in page]
        if len(page) < 3:
            break
        query = dataclasses.replace(query, max_id=page[-1].entry_id)
    assert seen == ids[::-1]
    window = await store.list_audit("ns", AuditQuery(limit=10, min_id=ids[2], max_id=ids[5]))
    assert [e.entry_id for e in window] == [ids[4], ids[3], ids[2]]


async def test_a_retried_audit_batch_is_stored_once(store: StorageAdapter) -> None:
    batch = [entry("ns", T0 + i, i) for i in range(3)]
    await store.append_audit(batch)
    await store.append_audit(batch)
    assert len(await store.list_audit("ns", AuditQuery(limit=10))) == 3


async def test_expired_audit_entries_are_hidden_and_purged(store: StorageAdapter) -> None:
    now = T0 + 10 * DAY
    old = [entry("ns", T0 + i, i, expires_at=now - 1 - i) for i in range(3)]
    young = [entry("ns", T0 + 100 + i, 10 + i, expires_at=now + DAY) for i in range(2)]
    await store.append_audit([*old, *young])
    alive = await store.list_audit("ns", AuditQuery(limit=10, alive_at=now))
    assert alive == list(reversed(young))
    purged = 0
    for _ in range(10):
        removed = await store.purge_audit(now, 2)
        assert 0 <= removed <= 2
        purged += removed
        if removed == 0:
            break
    assert purged in (0, 3), "a store purges all expired entries, or leaves them to native TTL"
    everything = await store.list_audit("ns", AuditQuery(limit=10))
    assert young[0] in everything and young[1] in everything
    if purged:
        assert everything == list(reversed(young))


# -- usage -------------------------------------------------------------------------


async def test_namespace_usage_counts_jobs_and_stored_bytes(store: StorageAdapter) -> None:
    assert await store.namespace_usage("ns") == (0, 0)
    total = 0
    for i in range(3):
        change = lifecycle.new_job(
            namespace="ns",
            job_id=f"job-{i}",
            now=T0 + i,
            fingerprint="f" * 64,
            metadata={},
            webhook_url=None,
            ttl=3600,
        )
        await store.create_job(change.job, change.events)
        job = change.job
        for n in range(i):
            data = b"x" * (100 + n)
            step = lifecycle.append_chunk(
                job,
                Chunk.stored_as_is(data),
                OutputFormat.BINARY,
                "application/octet-stream",
                T0 + 10 + n,
            )
            await store.update_job(step.job, step.events, job.revision)
            job = step.job
            total += len(data)
    other = lifecycle.new_job(
        namespace="other",
        job_id="x",
        now=T0,
        fingerprint="f" * 64,
        metadata={},
        webhook_url=None,
        ttl=None,
    )
    await store.create_job(other.job, other.events)
    assert await store.namespace_usage("ns") == (3, total)
    assert await store.namespace_usage("other") == (1, 0)
