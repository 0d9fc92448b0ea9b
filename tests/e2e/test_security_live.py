"""Live connections under the security features, over real HTTP (``aos serve``):
the concurrent-streams quota, and a browser-style stream with a subscriber token
in the query string receiving chunks as they are appended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ..support import Server, Tenant, chunk_data


async def test_concurrent_streams_quota_counts_streams_and_long_polls(
    client: httpx.AsyncClient,
) -> None:
    tenant = await Tenant(client, "streams-quota").setup({"quotas": {"maxConcurrentStreams": 1}})
    await tenant.job("j1")
    consumer = tenant.headers("consumer")
    async with client.stream("GET", "/api/v1/jobs/j1/stream", headers=consumer) as first:
        assert first.status_code == 200
        second = await client.get("/api/v1/jobs/j1/stream", headers=consumer)
        assert second.status_code == 429
        assert second.headers["content-type"] == "application/problem+json"
        assert second.json()["limit"] == "quota:maxConcurrentStreams"
        assert int(second.headers["retry-after"]) >= 1
        etag = (await client.get("/api/v1/jobs/j1/status", headers=consumer)).headers["etag"]
        waiting = await client.get(
            "/api/v1/jobs/j1/status?wait=1", headers={**consumer, "If-None-Match": etag}
        )
        assert waiting.status_code == 429, "a waiting long-poll holds a stream too"
    # the slot comes back when the first stream ends
    for _ in range(50):
        etag = (await client.get("/api/v1/jobs/j1/status", headers=consumer)).headers["etag"]
        poll = await client.get(
            "/api/v1/jobs/j1/status?wait=0.2", headers={**consumer, "If-None-Match": etag}
        )
        if poll.status_code == 304:
            break
        await asyncio.sleep(0.1)
    assert poll.status_code == 304


async def test_a_browser_streams_with_a_token_in_the_query(client: httpx.AsyncClient) -> None:
    tenant = await Tenant(client, "browser").setup()
    await tenant.job("live")
    minted = await client.post(
        f"/api/v1/namespaces/{tenant.name}/subscriber-tokens",
        json={"jobId": "live", "subject": "tab-1"},
        headers=tenant.headers("producer"),
    )
    assert minted.status_code == 201
    token = minted.json()["token"]
    url = f"/api/v1/namespaces/{tenant.name}/jobs/live/stream?access_token={token}"
    async with client.stream("GET", url) as response:  # no Authorization header at all
        assert response.status_code == 200
        for n in range(3):
            assert (await tenant.append("live", f"part {n};")).status_code == 201
        await tenant.patch("live", status="Succeeded")
        chunks = await chunk_data(response)
    assert chunks == ["part 0;", "part 1;", "part 2;"]


async def test_a_stream_ends_when_its_token_expires(tmp_path: Path) -> None:
    server = Server(f"sqlite:///{tmp_path}/aos.db", tmp_path, env={"AOS_TOKEN_LEEWAY": "0"}).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await _stream_until_expiry(client)
    finally:
        server.stop()


async def _stream_until_expiry(client: httpx.AsyncClient) -> None:
    tenant = await Tenant(client, "expiring").setup()
    await tenant.job("long")
    minted = await client.post(
        f"/api/v1/namespaces/{tenant.name}/subscriber-tokens",
        json={"jobId": "long", "ttl": 2},
        headers=tenant.headers("producer"),
    )
    token = minted.json()["token"]
    url = f"/api/v1/namespaces/{tenant.name}/jobs/long/stream?access_token={token}"
    started = asyncio.get_running_loop().time()
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass  # the job never ends: only the token's expiry ends the stream
    lasted = asyncio.get_running_loop().time() - started
    assert 1.5 <= lasted <= 6, lasted
    # and it cannot be reopened with the expired token
    assert (await client.get(url)).status_code == 401
