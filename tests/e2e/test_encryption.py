"""Encryption at rest over HTTP, on SQLite and PostgreSQL: ``aos serve`` with a
master key file, the store's raw rows read behind its back, a master key
rotation without a restart, ``aos rewrap``, and the output read back after the
old key is gone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from webhooks import verify

from ..receiver import Receiver
from ..stores import STORES, fetch_sql
from ..support import ADMIN_TOKEN, Server, Tenant, aos_executable, auth, chunk_data

CHUNK = 64 * 1024
TEXT = "".join(f"{i:07d} héllo wörld ✓ — private line\n" for i in range(12_000)).encode()
#: small enough to be stored as it came (not compressed): only encryption hides it
MARKER = b"card 4111-1111-1111-1111 exp 12/29"
NAMESPACE = "vault"
ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")


def master(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with STORES[request.param](tmp_path) as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    yield running
    await running.stop()


def serve(store_url: str, tmp_path: Path, key_file: Path | None) -> Server:
    env = {
        "AOS_UPLOAD_CHUNK_BYTES": str(CHUNK),
        "AOS_READ_BATCH_BYTES": str(4 * CHUNK),
        "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "AOS_WEBHOOK_POLL": "0.2",
    }
    if key_file is not None:
        env["AOS_MASTER_KEY_FILE"] = str(key_file)
    return Server(store_url, tmp_path, env=env)


def rewrap(store_url: str, tmp_path: Path, key_file: Path) -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AOS_")},
        "AOS_STORAGE_URL": store_url,
        "AOS_MASTER_KEY_FILE": str(key_file),
    }
    done = subprocess.run(
        [*aos_executable(), "rewrap"], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


async def chunk_rows(store_url: str) -> list[tuple[bytes, str]]:
    rows = await fetch_sql(
        store_url,
        "SELECT data, codec FROM events WHERE namespace = ? AND kind = ? ORDER BY job_id, seq",
        (NAMESPACE, "chunk"),
    )
    return [(bytes(data), str(codec)) for data, codec in rows]  # type: ignore[call-overload]


async def namespace_row(store_url: str) -> bytes:
    [(config,)] = await fetch_sql(
        store_url, "SELECT config FROM namespaces WHERE name = ?", (NAMESPACE,)
    )
    return config if isinstance(config, bytes) else bytes(config)  # type: ignore[call-overload]


async def secrets_of(client: httpx.AsyncClient) -> list[str]:
    r = await client.get(f"/api/v1/namespaces/{NAMESPACE}", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    return [s["secret"] for s in r.json()["webhookSecrets"]]


async def read_back(tenant: Tenant) -> None:
    """Every way of reading output gives the bytes written."""
    consumer = tenant.headers("consumer")
    as_json = await tenant.client.get("/api/v1/jobs/big/output", headers=consumer)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["output"] == TEXT.decode()
    assert as_json.json()["sha256"] == hashlib.sha256(TEXT).hexdigest()
    whole = await tenant.client.get(
        "/api/v1/jobs/big/output/raw", headers={**consumer, "Accept-Encoding": "identity"}
    )
    assert whole.content == TEXT
    digest = base64.b64encode(hashlib.sha256(TEXT).digest()).decode()
    assert whole.headers["repr-digest"] == f"sha-256=:{digest}:"
    start, end = 3 * CHUNK - 17, 5 * CHUNK + 100  # across chunk boundaries
    part = await tenant.client.get(
        "/api/v1/jobs/big/output/raw",
        headers={**consumer, "Accept-Encoding": "identity", "Range": f"bytes={start}-{end}"},
    )
    assert part.status_code == 206 and part.content == TEXT[start : end + 1]
    # zstd clients get the decrypted frames as they were compressed
    async with tenant.client.stream(
        "GET", "/api/v1/jobs/big/output/raw", headers={**consumer, "Accept-Encoding": "zstd"}
    ) as packed:
        frames = b"".join([piece async for piece in packed.aiter_raw()])
    assert packed.headers["content-encoding"] == "zstd"
    assert int(packed.headers["content-length"]) == len(frames) < len(TEXT)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == TEXT
    small = await tenant.client.get("/api/v1/jobs/small/output", headers=consumer)
    assert small.json()["output"] == MARKER.decode()
    # the SSE replay of a whole job
    async with tenant.client.stream("GET", "/api/v1/jobs/big/stream", headers=consumer) as r:
        streamed = await chunk_data(r)
    assert "".join(streamed).encode() == TEXT


async def signed_webhooks(tenant: Tenant, receiver: Receiver, job_id: str, secret: str) -> None:
    """A job's webhooks arrive signed with ``secret``."""
    before = len(receiver.received)
    await tenant.job(job_id)
    await receiver.wait_for(lambda got: len(got) > before)
    for request in receiver.received[before:]:
        assert verify(secret, request.headers, request.body) == request.json()


async def test_encrypted_output_survives_a_master_key_rotation(
    store_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    old, new = master("old"), master("new")
    key_file = tmp_path / "master-keys"
    key_file.write_text(f"# the primary first\n{old}\n")
    server = serve(store_url, tmp_path, key_file).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            tenant = await Tenant(client, NAMESPACE).setup({"webhookUrl": f"{receiver.url}/hooks"})
            [secret] = await secrets_of(client)
            await tenant.job("big")
            r = await client.put(
                "/api/v1/jobs/big/output",
                content=TEXT,
                headers={**tenant.headers(), "Content-Type": "text/plain"},
            )
            assert r.status_code == 201, r.text
            assert r.json()["chunks"] > 4 and r.json()["sha256"] == hashlib.sha256(TEXT).hexdigest()
            assert (await tenant.patch("big", status="Succeeded")).status_code == 200
            await tenant.job("small")
            assert (await tenant.append("small", MARKER)).status_code == 201
            await read_back(tenant)
            await signed_webhooks(tenant, receiver, "hooked", secret)

            # What the store holds: no plaintext, no zstd frame, and no secret.
            rows = await chunk_rows(store_url)
            assert len(rows) == r.json()["chunks"] + 1
            assert {codec for _, codec in rows} == {"aes", "aes+zstd"}
            for data, _ in rows:
                assert MARKER not in data and b"private line" not in data
                assert not data.startswith(ZSTD_MAGIC)
            config = await namespace_row(store_url)
            assert secret.encode() not in config
            assert secret.removeprefix("whsec_").encode() not in config
            assert b"enc:v1:dk-old:" in config and b'"dk-old"' in config

            # Rotation, live: the new key first, the old one kept. The running
            # node reads the file again and seals new data with the new key.
            key_file.write_text(f"{new}\n{old}\n")
            await asyncio.sleep(2.5)
            await tenant.job("later")
            assert (await tenant.append("later", MARKER)).status_code == 201
            assert b'"dk-new"' in await namespace_row(store_url)
            await read_back(tenant)
    finally:
        server.stop()

    report = rewrap(store_url, tmp_path, key_file)
    assert report["primary"] == "new" and report["failed"] == []
    assert report["rewrapped"] == 1 and report["updated"] == 1
    assert b'"masterKeyId":"old"' not in (await namespace_row(store_url)).replace(b" ", b"")
    key_file.write_text(f"{new}\n")  # the old master key is retired

    # Without any master key, encrypted data is a clear error, never a crash.
    keyless = serve(store_url, tmp_path, None).start()
    try:
        async with httpx.AsyncClient(base_url=keyless.url, timeout=30) as client:
            r = await client.get(f"/api/v1/namespaces/{NAMESPACE}", headers=auth(ADMIN_TOKEN))
            assert r.status_code == 503
            assert r.json()["type"] == "urn:aos:problem:encryption-key-missing"
            r = await client.get(
                f"/api/v1/namespaces/{NAMESPACE}/jobs/big/output/raw", headers=auth(ADMIN_TOKEN)
            )
            assert r.status_code == 503
            assert r.json()["type"] == "urn:aos:problem:encryption-key-missing"
            assert "dk-old" in r.json()["detail"]
    finally:
        keyless.stop()

    server = serve(store_url, tmp_path, key_file).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            tenant.client = client
            assert await secrets_of(client) == [secret]
            await read_back(tenant)
            later = await client.get("/api/v1/jobs/later/output", headers=tenant.headers())
            assert later.json()["output"] == MARKER.decode()
            await signed_webhooks(tenant, receiver, "hooked-again", secret)
    finally:
        server.stop()


def test_bad_key_material_stops_the_start(tmp_path: Path) -> None:
    short = base64.b64encode(os.urandom(16)).decode()
    key_file = tmp_path / "keys"
    key_file.write_text(f"{master('good')}\nweak:{short}\n")
    for variable, value in (
        ("AOS_MASTER_KEYS", f"weak:{short}"),
        ("AOS_MASTER_KEY_FILE", str(key_file)),
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AOS_")},
            "AOS_STORAGE_URL": f"sqlite:///{tmp_path}/aos.db",
            "AOS_ADMIN_TOKEN": ADMIN_TOKEN,
            variable: value,
        }
        done = subprocess.run(
            [*aos_executable(), "serve"], cwd=tmp_path, env=env, capture_output=True, timeout=60
        )
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert variable in stderr and "('weak') is 16 bytes" in stderr
        assert short not in stderr
