"""Large outputs, compression, integrity and retention, over HTTP, on every durable store.

Each test runs its own ``aos serve`` with small upload chunks (64 KiB) and a
small read budget, so a body of a few hundred KiB already spans many chunks
and many batches.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from storage_adapters import StorageAdapter, adapter_for

from ..stores import overwrite_event_data
from ..support import Server, Tenant, chunk_data, sse_events

CHUNK = 64 * 1024
ENV = {
    "AOS_UPLOAD_CHUNK_BYTES": str(CHUNK),
    "AOS_READ_BATCH_BYTES": str(4 * CHUNK),
    "AOS_JANITOR_INTERVAL": "0.2",
}
# Multi-byte characters land on chunk boundaries; the text compresses well.
TEXT = "".join(f"{i:07d} héllo wörld ✓ — output line\n" for i in range(12_000)).encode()


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(store_url, tmp_path, env=ENV).start()
    yield running
    running.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def tenant(client: httpx.AsyncClient) -> Tenant:
    return await Tenant(client, "out").setup()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StorageAdapter]:
    """The service's store, opened by the test too, to look behind the API."""
    opened = adapter_for(store_url)
    await opened.open()
    yield opened
    await opened.close()


def digest_header(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def upload(
    tenant: Tenant, job_id: str, data: bytes, content_type: str = "text/plain", **headers: str
) -> httpx.Response:
    return await tenant.client.put(
        f"/api/v1/jobs/{job_id}/output",
        content=data,
        headers={**tenant.headers(), "Content-Type": content_type, **headers},
    )


async def versions(tenant: Tenant, job_id: str) -> list[dict[str, Any]]:
    r = await tenant.client.get(f"/api/v1/jobs/{job_id}/versions", headers=tenant.headers())
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def raw(tenant: Tenant, job_id: str, **headers: str) -> httpx.Response:
    """``GET …/output/raw``; identity unless the test asks otherwise (httpx
    itself would accept zstd, and undo it)."""
    return await tenant.client.get(
        f"/api/v1/jobs/{job_id}/output/raw",
        headers={**tenant.headers("consumer"), "Accept-Encoding": "identity", **headers},
    )


async def test_upload_then_download_with_ranges_digests_and_zstd(tenant: Tenant) -> None:
    await tenant.job("big")
    r = await upload(tenant, "big", TEXT, "text/plain; charset=utf-8")
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["size"] == len(TEXT) and stored["chunks"] >= len(TEXT) // CHUNK
    assert stored["complete"] is True and stored["current"] is True
    assert stored["sha256"] == hashlib.sha256(TEXT).hexdigest()
    assert stored["storedSize"] < len(TEXT) // 4  # compressed
    assert r.headers["location"].endswith("/output/raw?version=1")

    whole = await raw(tenant, "big")
    assert whole.status_code == 200
    assert whole.content == TEXT
    assert whole.headers["content-length"] == str(len(TEXT))
    assert whole.headers["content-type"] == "text/plain; charset=utf-8"
    assert whole.headers["repr-digest"] == digest_header(TEXT)
    assert whole.headers["accept-ranges"] == "bytes"
    assert "accept-encoding" in whole.headers["vary"].lower()
    etag = whole.headers["etag"]
    assert (await raw(tenant, "big", **{"If-None-Match": etag})).status_code == 304

    head = await tenant.client.head(
        "/api/v1/jobs/big/output/raw",
        headers={**tenant.headers("consumer"), "Accept-Encoding": "identity"},
    )
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(TEXT))

    size = len(TEXT)
    for spec, (first, last) in {
        "bytes=0-9": (0, 9),
        f"bytes={CHUNK - 7}-{CHUNK + 7}": (CHUNK - 7, CHUNK + 7),  # across a chunk boundary
        f"bytes={3 * CHUNK}-{5 * CHUNK + 100}": (3 * CHUNK, 5 * CHUNK + 100),
        "bytes=-100": (size - 100, size - 1),
        f"bytes={size - 10}-": (size - 10, size - 1),
        f"bytes=5-{size * 2}": (5, size - 1),
    }.items():
        part = await raw(tenant, "big", Range=spec)
        assert part.status_code == 206, (spec, part.text)
        assert part.content == TEXT[first : last + 1], spec
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.headers["content-length"] == str(last - first + 1)
        assert part.headers["etag"] == etag
    refused = await raw(tenant, "big", Range=f"bytes={size}-")
    assert refused.status_code == 416
    assert refused.headers["content-range"] == f"bytes */{size}"
    assert refused.headers["content-type"] == "application/problem+json"
    stale = await raw(tenant, "big", Range="bytes=0-9", **{"If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == TEXT
    fresh = await raw(tenant, "big", Range="bytes=0-9", **{"If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == TEXT[:10]

    # zstd: the stored frames, not recompressed, under their own entity tag.
    async with tenant.client.stream(
        "GET",
        "/api/v1/jobs/big/output/raw",
        headers={**tenant.headers("consumer"), "Accept-Encoding": "zstd"},
    ) as packed:
        frames = b"".join([piece async for piece in packed.aiter_raw()])
    assert packed.headers["content-encoding"] == "zstd"
    assert packed.headers["content-length"] == str(stored["storedSize"]) == str(len(frames))
    assert packed.headers["etag"] != etag
    assert "repr-digest" not in packed.headers
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == TEXT
    unchanged = await raw(
        tenant, "big", **{"Accept-Encoding": "zstd", "If-None-Match": packed.headers["etag"]}
    )
    assert unchanged.status_code == 304
    ranged = await raw(tenant, "big", Range="bytes=0-3", **{"Accept-Encoding": "zstd"})
    assert ranged.status_code == 206 and "content-encoding" not in ranged.headers

    # The JSON route and the SSE replay decode the same chunks.
    as_json = await tenant.client.get("/api/v1/jobs/big/output", headers=tenant.headers())
    assert as_json.json()["output"] == TEXT.decode()
    assert as_json.json()["sha256"] == stored["sha256"]
    await tenant.patch("big", status="Succeeded")
    async with tenant.client.stream(
        "GET", "/api/v1/jobs/big/stream", headers=tenant.headers("consumer")
    ) as r:
        streamed = await chunk_data(r)
    assert "".join(streamed).encode() == TEXT


async def test_a_complete_version_takes_nothing_more_and_versions_are_listed(
    tenant: Tenant,
) -> None:
    await tenant.job("multi")
    assert (await upload(tenant, "multi", TEXT[:1000])).status_code == 201
    again = await upload(tenant, "multi", b"more")
    assert again.status_code == 409
    assert again.json()["type"] == "urn:aos:problem:version-complete"
    assert (await tenant.append("multi", "more")).status_code == 409
    r = await tenant.client.post("/api/v1/jobs/multi/versions", headers=tenant.headers())
    assert r.status_code == 201
    noise = os.urandom(5 * CHUNK + 123)
    assert (await upload(tenant, "multi", noise, "application/octet-stream")).status_code == 201
    first, second = await versions(tenant, "multi")
    assert (first["version"], first["size"], first["chunks"]) == (1, 1000, 1)
    assert first["sha256"] == hashlib.sha256(TEXT[:1000]).hexdigest()
    assert first["complete"] and not first["current"]
    assert (second["version"], second["format"], second["size"]) == (2, "binary", len(noise))
    assert second["chunks"] == 6 and second["storedSize"] >= len(noise)  # noise does not shrink
    assert second["sha256"] == hashlib.sha256(noise).hexdigest()
    assert second["createdAt"] and second["completedAt"]
    # Noise does not compress: zstd would be larger, so identity, with the digest.
    body = await raw(tenant, "multi", **{"Accept-Encoding": "zstd"})
    assert "content-encoding" not in body.headers
    assert body.content == noise and body.headers["repr-digest"] == digest_header(noise)
    v1 = await tenant.client.get(
        "/api/v1/jobs/multi/output/raw?version=1", headers=tenant.headers()
    )
    assert v1.content == TEXT[:1000]  # httpx accepts zstd, and decodes it
    # An empty upload completes an empty version.
    await tenant.client.post("/api/v1/jobs/multi/versions", headers=tenant.headers())
    empty = await upload(tenant, "multi", b"")
    assert empty.status_code == 201
    assert (empty.json()["size"], empty.json()["sha256"]) == (0, hashlib.sha256().hexdigest())
    assert (await raw(tenant, "multi")).content == b""


async def test_zstd_clients_get_mixed_output_as_one_zstd_stream(tenant: Tenant) -> None:
    """Compressed chunks as stored, the others framed as raw zstd blocks."""
    await tenant.job("mixed")
    parts = [TEXT[: 2 * CHUNK], os.urandom(CHUNK), b"\x00" * 100, TEXT[: 3 * CHUNK]]
    for part in parts:
        r = await tenant.append("mixed", part, "application/octet-stream")
        assert r.status_code == 201, r.text
    whole = b"".join(parts)
    [version] = await versions(tenant, "mixed")
    async with tenant.client.stream(
        "GET",
        "/api/v1/jobs/mixed/output/raw",
        headers={**tenant.headers("consumer"), "Accept-Encoding": "gzip, zstd"},
    ) as packed:
        frames = b"".join([piece async for piece in packed.aiter_raw()])
    assert packed.headers["content-encoding"] == "zstd"
    assert int(packed.headers["content-length"]) == len(frames) < len(whole)
    assert len(frames) < version["size"]
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == whole


async def test_an_upload_resumes_after_a_dropped_connection(tenant: Tenant, server: Server) -> None:
    await tenant.job("resume")
    body = os.urandom(10 * CHUNK + 999)
    sent = 3 * CHUNK + 5000
    # Start the upload by hand and hang up part way through.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = (
            f"PUT /api/v1/jobs/resume/output HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {tenant.keys['producer']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:sent])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [version] = await versions(tenant, "resume")
            if version["chunks"] == 3:
                break
            await asyncio.sleep(0.05)
    # Every whole chunk received was stored; the part chunk was not.
    await asyncio.sleep(0.3)
    [version] = await versions(tenant, "resume")
    assert (version["chunks"], version["size"], version["complete"]) == (3, 3 * CHUNK, False)

    plain = await upload(tenant, "resume", body, "application/octet-stream")
    assert plain.status_code == 409
    problem = plain.json()
    assert problem["type"] == "urn:aos:problem:chunk-index-conflict"
    assert (problem["nextChunkIndex"], problem["size"]) == (3, 3 * CHUNK)
    wrong = await upload(
        tenant, "resume", body[2 * CHUNK :], "application/octet-stream", **{"X-Chunk-Index": "2"}
    )
    assert wrong.status_code == 409 and wrong.json()["nextChunkIndex"] == 3
    resumed = await upload(
        tenant, "resume", body[3 * CHUNK :], "application/octet-stream", **{"X-Chunk-Index": "3"}
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert resumed.json()["chunks"] == 11
    assert (await raw(tenant, "resume")).content == body


async def test_text_that_is_not_utf8_stops_the_upload_where_it_is(tenant: Tenant) -> None:
    await tenant.job("bad")
    body = b"a" * (2 * CHUNK + 10) + b"\xff" + b"b" * 10
    r = await upload(tenant, "bad", body)
    assert r.status_code == 422
    assert f"byte {2 * CHUNK + 10}" in r.json()["detail"]
    [version] = await versions(tenant, "bad")
    assert version["size"] == r.json()["nextChunkIndex"] * CHUNK
    assert not version["complete"]


async def test_a_version_built_chunk_by_chunk_is_digested_when_it_closes(tenant: Tenant) -> None:
    await tenant.job("posted")
    cut = TEXT.index(b"\n", 70_000) + 1
    parts = [TEXT[:cut], b"tail", TEXT[cut : 2 * cut]]
    for part in parts:
        assert (await tenant.append("posted", part)).status_code == 201
    [version] = await versions(tenant, "posted")
    assert version["sha256"] is None and not version["complete"]
    assert "repr-digest" not in (await raw(tenant, "posted")).headers
    await tenant.patch("posted", status="Succeeded")
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    deadline = time.monotonic() + 10
    while (await versions(tenant, "posted"))[0]["sha256"] != expected:
        assert time.monotonic() < deadline, "the closed version was never digested"
        await asyncio.sleep(0.05)
    assert (await raw(tenant, "posted")).headers["repr-digest"] == digest_header(b"".join(parts))


async def test_damaged_output_is_an_error_never_wrong_bytes(
    tenant: Tenant, store: StorageAdapter, store_url: str
) -> None:
    await tenant.job("rot")
    assert (await upload(tenant, "rot", TEXT[: 6 * CHUNK])).status_code == 201
    chunks = await store.read_chunks("out", "rot", 1, -1, 100)
    assert len(chunks) == 6

    async def damage(seq: int, data: bytes) -> None:
        await overwrite_event_data(store_url, "out", "rot", seq, data)

    def flipped(data: bytes) -> bytes:
        out = bytearray(data)
        out[len(out) // 2] ^= 0x40
        return bytes(out)

    # The first chunk damaged: a problem response, before any byte is sent.
    await damage(chunks[0].seq, flipped(chunks[0].data))
    r = await raw(tenant, "rot")
    assert r.status_code == 500
    assert r.json()["type"] == "urn:aos:problem:data-corrupt"
    r = await tenant.client.get("/api/v1/jobs/rot/output", headers=tenant.headers())
    assert r.json()["type"] == "urn:aos:problem:data-corrupt"
    await damage(chunks[0].seq, chunks[0].data)
    assert (await raw(tenant, "rot")).content == TEXT[: 6 * CHUNK]

    # A later chunk damaged: the download is cut short, never completed.
    await damage(chunks[4].seq, flipped(chunks[4].data))
    with pytest.raises(httpx.RemoteProtocolError):
        await raw(tenant, "rot")
    part = await raw(tenant, "rot", Range=f"bytes={4 * CHUNK}-{4 * CHUNK + 10}")
    assert part.status_code == 500
    await damage(chunks[4].seq, chunks[4].data)

    # Output stored as it came (noise does not compress) is caught the same way.
    await tenant.job("noise")
    noise = os.urandom(4 * CHUNK)
    assert (await upload(tenant, "noise", noise, "application/octet-stream")).status_code == 201
    stored = await store.read_chunks("out", "noise", 1, -1, 100)
    assert [c.codec for c in stored] == [""] * 4
    await overwrite_event_data(store_url, "out", "noise", stored[2].seq, flipped(stored[2].data))
    with pytest.raises(httpx.RemoteProtocolError):
        await raw(tenant, "noise")
    assert (await raw(tenant, "noise", Range=f"bytes={2 * CHUNK}-")).status_code == 500

    # Chunks intact but the recorded digest wrong: cut short before the last byte.
    job = await store.get_job("out", "rot")
    assert job is not None
    wrong = dataclasses_replace_version_sha(job, "00" * 32)
    await store.update_job(wrong, (), job.revision)
    with pytest.raises(httpx.RemoteProtocolError):
        await raw(tenant, "rot")


def dataclasses_replace_version_sha(job: Any, sha256: str) -> Any:
    import dataclasses

    version = dataclasses.replace(job.versions[0], sha256=sha256)
    return dataclasses.replace(
        job, versions=(version, *job.versions[1:]), revision=job.revision + 1
    )


async def test_expired_jobs_answer_404_and_the_janitor_purges_them(
    client: httpx.AsyncClient, tenant: Tenant, store: StorageAdapter
) -> None:
    await tenant.job("short", retentionPolicy={"ttl": 1})
    await tenant.job("long", retentionPolicy={"ttl": "P1D"})
    await tenant.job("running", retentionPolicy={"ttl": 1})
    defaulted = await Tenant(client, "brief").setup({"defaultRetentionPolicy": {"ttl": "PT1S"}})
    await defaulted.job("inherits")
    for who, job_id in ((tenant, "short"), (tenant, "long"), (defaulted, "inherits")):
        assert (await upload(who, job_id, TEXT[: 3 * CHUNK])).status_code == 201
        assert (await who.patch(job_id, status="Succeeded")).status_code == 200
    r = await tenant.client.get("/api/v1/jobs/short", headers=tenant.headers())
    assert r.json()["retentionPolicy"] == {"ttl": 1} and r.json()["expiresAt"] is not None

    deadline = time.monotonic() + 15
    while await store.get_job("out", "short") or await store.get_job("brief", "inherits"):
        assert time.monotonic() < deadline, "the janitor did not purge the expired jobs"
        await asyncio.sleep(0.1)
    for who, job_id in ((tenant, "short"), (defaulted, "inherits")):
        for path in ("", "/status", "/output", "/output/raw", "/versions", "/stream"):
            r = await who.client.get(f"/api/v1/jobs/{job_id}{path}", headers=who.headers())
            assert r.status_code == 404, (job_id, path)
        assert await store.read_events(who.name, job_id, 0, 10) == []
        assert await store.read_chunks(who.name, job_id, 1, -1, 10) == []
    assert (
        await tenant.client.get("/api/v1/jobs/long", headers=tenant.headers())
    ).status_code == 200
    assert await store.get_job("out", "running") is not None  # never ended: never expires
    listed = await tenant.client.get("/api/v1/jobs", headers=tenant.headers())
    assert sorted(j["jobId"] for j in listed.json()["items"]) == ["long", "running"]

    # The id is free again.
    again = await tenant.job("short")
    assert again["lastSeq"] == 1
    metrics = (await client.get("/metrics")).text
    assert "aos_purged_jobs_total 2.0" in metrics

    # Deleting a finished job removes it the same way, at once.
    r = await tenant.client.delete("/api/v1/jobs/long", headers=tenant.headers())
    assert r.status_code == 204
    assert await store.get_job("out", "long") is None
    assert await store.read_events("out", "long", 0, 10) == []


async def test_a_resume_into_a_purged_range_gets_a_reset_first(
    tenant: Tenant, store: StorageAdapter
) -> None:
    await tenant.job("cut")
    for n in range(5):
        await tenant.append("cut", f"chunk {n}\n")
    job = await store.get_job("out", "cut")
    assert job is not None and job.last_seq == 7
    # A purge caught half way: the oldest entries are gone, the job is not.
    assert await store.purge_job("out", "cut", job.created_at, 3) is False
    await tenant.patch("cut", status="Succeeded")
    seen: list[tuple[str, Any]] = []
    headers = {**tenant.headers("consumer"), "Last-Event-ID": "1"}
    async with tenant.client.stream("GET", "/api/v1/jobs/cut/stream", headers=headers) as r:
        async for event in sse_events(r):
            seen.append((event.event, event.json()))
            if event.event == "end":
                break
    kinds = [kind for kind, _ in seen]
    assert kinds == ["reset", "chunk", "chunk", "chunk", "chunk", "progress", "status", "end"]
    reset = seen[0][1]
    assert (reset["reason"], reset["nextSeq"]) == ("purged", 4)
    assert [data["seq"] for kind, data in seen if kind == "chunk"] == [4, 5, 6, 7]
    # From a cursor past the purged range, nothing is reset.
    headers["Last-Event-ID"] = "5"
    async with tenant.client.stream("GET", "/api/v1/jobs/cut/stream", headers=headers) as r:
        first = await anext(sse_events(r))
    assert (first.event, first.id) == ("chunk", "6")
