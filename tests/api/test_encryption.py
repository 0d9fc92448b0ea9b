"""Encryption at rest on ``memory://``, in process: output written before
encryption was turned on stays readable, a version carries on encrypted, the
store holds no plaintext, and a master key rotation with a rewrap keeps it all
readable by a node that only has the new key.

Several apps share one store here: the first runs the lifespan (which opens
the store), the others serve the same store as other nodes would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import zstandard

from service import Settings, create_app
from service.crypto import load_data_keys
from service.namespaces import rewrap_namespaces
from storage_adapters import StorageAdapter, adapter_for

from ..support import ADMIN_TOKEN, auth, chunk_data

CHUNK = 16 * 1024
TEXT = b"".join(b"%06d confidential line of output\n" % i for i in range(8000))
MARKER = b"patient 0042: diagnosis withheld"
HEADERS = {**auth(ADMIN_TOKEN), "X-Namespace": "vault"}
TEXT_HEADERS = {**HEADERS, "Content-Type": "text/plain"}


def master(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def settings(**values: Any) -> Settings:
    return Settings(
        storage_url="memory://",
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        access_log=False,
        upload_chunk_bytes=CHUNK,
        read_batch_bytes=4 * CHUNK,
        webhooks=False,
        janitor=False,
        **values,
    )


@asynccontextmanager
async def node(store: StorageAdapter, **values: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another node on the store, already open (no lifespan)."""
    app = create_app(settings(**values), store=store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aos") as client:
        yield client


async def read_back(client: httpx.AsyncClient) -> None:
    as_json = await client.get("/api/v1/jobs/big/output", headers=HEADERS)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["output"] == TEXT.decode()
    whole = await client.get(
        "/api/v1/jobs/big/output/raw", headers={**HEADERS, "Accept-Encoding": "identity"}
    )
    assert whole.content == TEXT
    start, end = 2 * CHUNK - 5, 4 * CHUNK + 7
    part = await client.get(
        "/api/v1/jobs/big/output/raw",
        headers={**HEADERS, "Accept-Encoding": "identity", "Range": f"bytes={start}-{end}"},
    )
    assert part.status_code == 206 and part.content == TEXT[start : end + 1]
    async with client.stream(
        "GET", "/api/v1/jobs/big/output/raw", headers={**HEADERS, "Accept-Encoding": "zstd"}
    ) as packed:
        frames = b"".join([piece async for piece in packed.aiter_raw()])
    assert packed.headers["content-encoding"] == "zstd"
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == TEXT
    # the job that was written in clear, then encrypted
    mixed = await client.get("/api/v1/jobs/mixed/output", headers=HEADERS)
    assert mixed.json()["output"] == (MARKER + MARKER).decode()
    async with client.stream("GET", "/api/v1/jobs/mixed/stream", headers=HEADERS) as r:
        streamed = await chunk_data(r)
    assert "".join(streamed).encode() == MARKER + MARKER


async def test_encryption_on_memory_with_rotation(tmp_path: Path) -> None:
    store = adapter_for("memory://")
    key_file = tmp_path / "keys"
    old, new = master("old"), master("new")
    first = create_app(settings(), store=store)
    async with first.router.lifespan_context(first):  # opens the store; no encryption
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://aos") as plain:
            assert (await plain.put("/api/v1/namespaces/vault", headers=HEADERS)).status_code == 201
            [secret] = [
                s["secret"]
                for s in (await plain.get("/api/v1/namespaces/vault", headers=HEADERS)).json()[
                    "webhookSecrets"
                ]
            ]
            await plain.post("/api/v1/jobs", json={"jobId": "mixed"}, headers=HEADERS)
            r = await plain.post("/api/v1/jobs/mixed/output", content=MARKER, headers=TEXT_HEADERS)
            assert r.status_code == 201

        key_file.write_text(f"{old}\n")
        async with node(store, master_key_file=str(key_file)) as client:
            # the version written in clear carries on encrypted
            r = await client.post("/api/v1/jobs/mixed/output", content=MARKER, headers=TEXT_HEADERS)
            assert r.status_code == 201
            assert (
                await client.patch(
                    "/api/v1/jobs/mixed/status", json={"status": "Succeeded"}, headers=HEADERS
                )
            ).status_code == 200
            await client.post("/api/v1/jobs", json={"jobId": "big"}, headers=HEADERS)
            r = await client.put(
                "/api/v1/jobs/big/output",
                content=TEXT,
                headers={**HEADERS, "Content-Type": "text/plain"},
            )
            assert r.status_code == 201 and r.json()["chunks"] > 4
            assert r.json()["sha256"] == hashlib.sha256(TEXT).hexdigest()
            await read_back(client)
            # the namespace's secret, sealed the first time encryption saw it
            shown = (await client.get("/api/v1/namespaces/vault", headers=HEADERS)).json()
            assert [s["secret"] for s in shown["webhookSecrets"]] == [secret]

            # What the store holds, read through the adapter (which decrypts nothing).
            [clear, sealed] = await store.read_chunks("vault", "mixed", 1, -1, 10)
            assert (clear.data, clear.codec) == (MARKER, "")
            assert sealed.codec == "aes" and MARKER not in sealed.data
            job = await store.get_job("vault", "mixed")
            assert job is not None and job.versions[0].key_id == "dk-old"
            for chunk in await store.read_chunks("vault", "big", 1, -1, 100):
                assert chunk.codec == "aes+zstd" and b"confidential" not in chunk.data
                assert chunk.digest is None
            record = await store.get_namespace("vault")
            assert record is not None and secret not in str(record.config)

            # Rotation: the new key first, the old one kept, read again live.
            key_file.write_text(f"{new}\n{old}\n")
            await asyncio.sleep(2.2)
            await client.post("/api/v1/jobs", json={"jobId": "later"}, headers=HEADERS)
            r = await client.post("/api/v1/jobs/later/output", content=MARKER, headers=TEXT_HEADERS)
            assert r.status_code == 201
            later = await store.get_job("vault", "later")
            assert later is not None and later.versions[0].key_id == "dk-new"

        keys = load_data_keys(None, str(key_file))
        assert keys is not None
        report = await rewrap_namespaces(store, keys)
        assert (report.rewrapped, report.updated, report.failed) == (1, 1, ())
        key_file.write_text(f"{new}\n")  # the old key is retired

        async with node(store, master_key_file=str(key_file)) as fresh:
            await read_back(fresh)
            r = await fresh.get("/api/v1/jobs/later/output", headers=HEADERS)
            assert r.json()["output"] == MARKER.decode()
            shown = (await fresh.get("/api/v1/namespaces/vault", headers=HEADERS)).json()
            assert [s["secret"] for s in shown["webhookSecrets"]] == [secret]
            assert "dataKeys" not in shown

        # a node with no master keys: a clear error, and plaintext still reads
        async with node(store) as keyless:
            r = await keyless.get("/api/v1/jobs/big/output", headers=HEADERS)
            assert r.status_code == 503
            assert r.json()["type"] == "urn:aos:problem:encryption-key-missing"
            r = await keyless.get(
                "/api/v1/jobs/mixed/output/raw",
                headers={**HEADERS, "Range": f"bytes=0-{len(MARKER) - 1}"},
            )
            assert r.status_code == 206 and r.content == MARKER


async def test_a_replay_from_an_older_job_row_decrypts_newer_versions() -> None:
    """A stream holds the job row it started with; chunks of a version made
    since (whose data key that row does not know) are decrypted all the same."""
    store = adapter_for("memory://")
    app = create_app(settings(master_keys=master("k1")), store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aos") as client:
            await client.put("/api/v1/namespaces/vault", headers=HEADERS)
            await client.post("/api/v1/jobs", json={"jobId": "j"}, headers=HEADERS)
            await client.post("/api/v1/jobs/j/output", content=b"one", headers=TEXT_HEADERS)
            jobs = app.state.aos.jobs
            before = await jobs.get("vault", "j")
            await client.post("/api/v1/jobs/j/versions", headers=HEADERS)
            for part in (b"two", b"three"):
                await client.post("/api/v1/jobs/j/output", content=part, headers=TEXT_HEADERS)
            assert before.version(2) is None
            stored = await store.read_chunks("vault", "j", 2, -1, 10)
            assert [c.codec for c in stored] == ["aes", "aes"]
            replayed = [e async for e in jobs.events_after(before, 0)]
            chunks = [(e.version, e.data, e.codec) for e in replayed if e.index >= 0]
            assert chunks == [(1, b"one", ""), (2, b"two", ""), (2, b"three", "")]
