"""Live delivery over real HTTP: SSE with resume, and long-polling with ETags."""

from __future__ import annotations

import asyncio
import time

import httpx

from ..support import Tenant, sse_events


async def _stream_until(
    client: httpx.AsyncClient,
    tenant: Tenant,
    job_id: str,
    received: list[tuple[int, str, str]],
    *,
    last_event_id: int | None = None,
    stop_after: int | None = None,
) -> bool:
    """Read the stream into ``received``; True when ``end`` arrived."""
    headers = tenant.headers("consumer")
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    count = 0
    async with client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for event in sse_events(r):
            if event.event == "end":
                return True
            assert event.id is not None
            data = event.json()
            received.append((int(event.id), event.event, data.get("data", "")))
            count += 1
            if stop_after is not None and count >= stop_after:
                return False
    return False


async def test_resuming_consumer_gets_every_chunk_once_in_order(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await tenant.job("big")
    total = 1000

    async def produce() -> None:
        for i in range(total):
            r = await tenant.append("big", f"chunk-{i};")
            assert r.status_code == 201, r.text
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # let the consumer come and go mid-stream
        r = await tenant.patch("big", status="Succeeded")
        assert r.status_code == 200

    async def consume() -> list[tuple[int, str, str]]:
        received: list[tuple[int, str, str]] = []
        cursor: int | None = None
        reconnects = 0
        while True:
            # Drop the connection every 137 events and resume from the last id seen.
            ended = await _stream_until(
                client, tenant, "big", received, last_event_id=cursor, stop_after=137
            )
            if ended:
                return received
            cursor = received[-1][0]
            reconnects += 1
            assert reconnects < 100

    producer = asyncio.create_task(produce())
    received = await asyncio.wait_for(consume(), 120)
    await producer

    seqs = [seq for seq, _, _ in received]
    assert seqs == list(range(1, len(seqs) + 1)), "every seq exactly once, in order"
    chunks = [data for _, kind, data in received if kind == "chunk"]
    assert chunks == [f"chunk-{i};" for i in range(total)]
    assert received[-1][1] == "status"


async def test_stream_starts_from_the_beginning_or_latest(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await tenant.job("live")
    await tenant.append("live", "old")
    received: list[tuple[int, str, str]] = []

    async def watch_latest() -> None:
        async with client.stream(
            "GET", "/api/v1/jobs/live/stream?from=latest", headers=tenant.headers("consumer")
        ) as r:
            async for event in sse_events(r):
                if event.event == "end":
                    return
                received.append((int(event.id or 0), event.event, event.json().get("data", "")))

    watcher = asyncio.create_task(watch_latest())
    await asyncio.sleep(0.3)
    await tenant.append("live", "new")
    await tenant.patch("live", status="Succeeded")
    await asyncio.wait_for(watcher, 10)
    assert [(kind, data) for _, kind, data in received] == [
        ("chunk", "new"),
        ("progress", ""),
        ("status", ""),
    ]
    # A finished job with the cursor at its end has nothing more to say: 204,
    # which also stops EventSource from reconnecting.
    last = received[-1][0]
    r = await client.get(
        "/api/v1/jobs/live/stream", headers={**tenant.headers(), "Last-Event-ID": str(last)}
    )
    assert r.status_code == 204


async def test_cursor_from_the_future_gets_a_reset(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await tenant.job("r")
    await tenant.patch("r", status="Cancelled")
    async with client.stream(
        "GET", "/api/v1/jobs/r/stream?lastEventId=999", headers=tenant.headers()
    ) as r:
        events = [e async for e in sse_events(r)]
    assert events[0].event == "reset" and events[0].json()["lastSeq"] == 2
    assert events[0].json()["nextSeq"] == 1
    assert [e.event for e in events[1:]] == ["status", "status", "end"]


async def test_bad_cursor_is_400(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("c")
    r = await client.get(
        "/api/v1/jobs/c/stream", headers={**tenant.headers(), "Last-Event-ID": "abc"}
    )
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


async def test_long_poll_wakes_on_change(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("poll")
    first = await client.get("/api/v1/jobs/poll/status", headers=tenant.headers("consumer"))
    etag = first.headers["etag"]

    async def poll() -> tuple[httpx.Response, float]:
        r = await client.get(
            "/api/v1/jobs/poll/status?wait=30",
            headers={**tenant.headers("consumer"), "If-None-Match": etag},
        )
        return r, time.monotonic()

    waiting = asyncio.create_task(poll())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    changed_at = time.monotonic()
    r = await tenant.patch("poll", progress=42)
    assert r.status_code == 200
    acknowledged_at = time.monotonic()
    response, woke_at = await asyncio.wait_for(waiting, 5)
    assert response.status_code == 200
    assert response.json()["progress"] == 42 and response.headers["etag"] != etag
    # Woken by the change itself, not by a timer: within 100 ms of the write's ack.
    assert woke_at - acknowledged_at < 0.1, (woke_at - changed_at, acknowledged_at - changed_at)


async def test_long_poll_answers_304_when_nothing_changes(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await tenant.job("quiet")
    etag = (await client.get("/api/v1/jobs/quiet/status", headers=tenant.headers())).headers["etag"]
    started = time.monotonic()
    r = await client.get(
        "/api/v1/jobs/quiet/status?wait=1", headers={**tenant.headers(), "If-None-Match": etag}
    )
    assert r.status_code == 304 and r.headers["etag"] == etag
    assert time.monotonic() - started >= 0.9
    # Without a wait the answer is immediate; a stale ETag gets the new state at once.
    r = await client.get(
        "/api/v1/jobs/quiet/status", headers={**tenant.headers(), "If-None-Match": etag}
    )
    assert r.status_code == 304
    r = await client.get(
        "/api/v1/jobs/quiet/status?wait=10",
        headers={**tenant.headers(), "If-None-Match": '"stale"'},
    )
    assert r.status_code == 200
    for bad in ("-1", "61", "soon"):
        r = await client.get(f"/api/v1/jobs/quiet/status?wait={bad}", headers=tenant.headers())
        assert r.status_code == 400


async def test_many_long_polls_wake_together(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("crowd")
    etag = (await client.get("/api/v1/jobs/crowd/status", headers=tenant.headers())).headers["etag"]
    polls = [
        asyncio.create_task(
            client.get(
                "/api/v1/jobs/crowd/status?wait=20",
                headers={**tenant.headers(), "If-None-Match": etag},
            )
        )
        for _ in range(50)
    ]
    await asyncio.sleep(0.5)
    await tenant.append("crowd", "x")
    responses = await asyncio.wait_for(asyncio.gather(*polls), 10)
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["status"] for r in responses} == {"Running"}


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_streams_that_go_away_release_everything(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await tenant.job("many")
    baseline = _gauge((await client.get("/metrics")).text, "aos_open_streams")
    opened = asyncio.Event()
    count = 0

    async def watch() -> None:
        nonlocal count
        async with client.stream(
            "GET", "/api/v1/jobs/many/stream", headers=tenant.headers("consumer")
        ) as r:
            async for _ in sse_events(r):
                count += 1
                if count == 20:
                    opened.set()
                await asyncio.sleep(3600)

    watchers = [asyncio.create_task(watch()) for _ in range(20)]
    await asyncio.wait_for(opened.wait(), 10)
    assert _gauge((await client.get("/metrics")).text, "aos_open_streams") == baseline + 20
    for w in watchers:
        w.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _gauge((await client.get("/metrics")).text, "aos_open_streams") == baseline:
            break
        await asyncio.sleep(0.05)
    assert _gauge((await client.get("/metrics")).text, "aos_open_streams") == baseline
