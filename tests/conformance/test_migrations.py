"""Schema migrations: versioned, applied once, safe when nodes start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service import lifecycle
from service.lifecycle import Chunk
from sharding import shard_of
from storage_adapters import (
    Capability,
    ConfigurationError,
    OutputFormat,
    adapter_for,
    mysql,
    postgresql,
    sqlite,
)
from storage_adapters.records import dumps, job_to_doc

from ..stores import STORES, execute_sql

T0 = 1_700_000_000_000_000


async def test_migrations_apply_once_even_when_raced(store_name: str, tmp_path: Path) -> None:
    async with STORES[store_name](tmp_path, empty=True) as url:
        checker = adapter_for(url)
        if Capability.EPHEMERAL in checker.capabilities:
            assert await checker.open(migrate=False) == []
            await checker.close()
            return
        with pytest.raises(ConfigurationError, match="aos migrate"):
            await checker.open(migrate=False)
        nodes = [adapter_for(url) for _ in range(3)]
        applied = await asyncio.gather(*(node.open(migrate=True) for node in nodes))
        try:
            flat = sorted(v for versions in applied for v in versions)
            assert flat == list(range(1, len(flat) + 1)), f"each version once: {applied}"
            assert await checker.open(migrate=False) == []
            await checker.ping()
            await checker.close()
        finally:
            for node in nodes:
                await node.close()


SQL_STORES = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql}


@pytest.mark.parametrize("name", sorted(SQL_STORES))
async def test_upgrading_to_v3_fills_in_offsets_and_shards(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written before chunks knew their offsets, and jobs their shard, get both."""
    module = SQL_STORES[name]
    async with STORES[name](tmp_path, empty=True) as url:
        monkeypatch.setattr(module, "MIGRATIONS", module.MIGRATIONS[:2])
        old = adapter_for(url)
        assert await old.open() == [1, 2]
        await old.close()
        monkeypatch.undo()

        job = lifecycle.new_job(
            namespace="up",
            job_id="old",
            now=T0,
            fingerprint="f",
            metadata={},
            webhook_url=None,
            ttl=1,
        ).job
        for data in (b"first", b"second!", b"third"):
            job = lifecycle.append_chunk(
                job, Chunk.stored_as_is(data), OutputFormat.TEXT, "t", job.updated_at + 1
            ).job
        job = lifecycle.cancel(job, job.updated_at + 1).job
        rows: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT INTO jobs (namespace, job_id, revision, status, created_at, expires_at, "
                "doc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    "up",
                    "old",
                    job.revision,
                    job.status.value,
                    T0,
                    job.expires_at,
                    dumps(job_to_doc(job)),
                ),
            )
        ]
        for index, data in enumerate((b"first", b"second!", b"third")):
            rows.append(
                (
                    "INSERT INTO events (namespace, job_id, seq, kind, at, version, chunk_index, "
                    "format, data) VALUES (?, ?, ?, 'chunk', ?, 1, ?, 'text', ?)",
                    ("up", "old", index + 3, T0, index, data),
                )
            )
        await execute_sql(url, rows)

        new = adapter_for(url)
        assert await new.open() == [v for v, _ in module.MIGRATIONS[2:]]  # 3 and later
        try:
            chunks = await new.read_chunks("up", "old", 1, -1, 10)
            assert [(c.offset, c.codec, c.digest) for c in chunks] == [
                (0, "", None),
                (5, "", None),
                (12, "", None),
            ]
            assert await new.expired_jobs(T0 + 10**10, 10, [shard_of("up")]) != []
        finally:
            await new.close()
