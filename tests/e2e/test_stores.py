"""Each durable store under the service, over real HTTP: crashes, outages, races.

* durability: SIGKILL the service mid-write; after a restart every
  acknowledged chunk is there and streams resume from their cursors;
* outage (server stores): stop the database under load; the API answers 503,
  never 500; start it again; the service recovers by itself and nothing
  acknowledged is lost;
* concurrency: 50 producers append to one job and to their own jobs at once,
  through two nodes on the same database where the store allows it; every
  job's seqs are unique and contiguous and no chunk is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ..stores import SERVERS, STORES
from ..support import ADMIN_TOKEN, Server, Tenant, aos_executable, auth, sse_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(SERVERS))
async def server_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """A fresh database on a server store, and the script that stops and starts it."""
    async with STORES[request.param](tmp_path) as url:
        yield url, str(ROOT / SERVERS[request.param])


def control(script: str, action: str) -> None:
    subprocess.run(
        [script, action],
        check=True,
        timeout=120,
        env=os.environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def read_log(
    client: httpx.AsyncClient, tenant: Tenant, job_id: str, after: int = 0
) -> list[tuple[int, str, str]]:
    """Every entry after ``after`` of a finished job, through its SSE stream."""
    headers = {**tenant.headers("consumer"), "Last-Event-ID": str(after)}
    entries: list[tuple[int, str, str]] = []
    async with client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers) as r:
        assert r.status_code == 200
        async for event in sse_events(r):
            if event.event == "end":
                return entries
            entries.append((int(event.id or 0), event.event, event.json().get("data", "")))
    raise AssertionError("the stream ended without an end event")


async def test_sigkill_loses_nothing_acknowledged(store_url: str, tmp_path: Path) -> None:
    server = Server(store_url, tmp_path).start()
    acknowledged: list[str] = []
    enough = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        tenant = await Tenant(client, "durable").setup()
        await tenant.job("keep")

        async def writer() -> None:
            for i in range(100_000):
                try:
                    r = await tenant.append("keep", f"{i};", **{"X-Chunk-Index": str(i)})
                except httpx.TransportError:
                    return
                if r.status_code != 201:
                    return
                acknowledged.append(f"{i};")
                if len(acknowledged) == 150:
                    enough.set()

        task = asyncio.create_task(writer())
        await asyncio.wait_for(enough.wait(), 60)
        server.kill()
        await asyncio.wait_for(task, 30)

    restarted = Server(store_url, tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
            tenant.client = client
            out = (await client.get("/api/v1/jobs/keep/output", headers=tenant.headers())).json()
            assert out["output"].startswith("".join(acknowledged))
            assert out["chunks"] - len(acknowledged) in (0, 1), "at most the write in flight"
            # The producer carries on where its acknowledgements stopped.
            next_index = len(acknowledged)
            for _ in range(60):
                # A store may hold the killed node's write lock a while (FerretDB's
                # guard mode: LOCK_STALE): a producer retries a 503.
                r = await tenant.append(
                    "keep", f"{next_index};", **{"X-Chunk-Index": str(next_index)}
                )
                if r.status_code != 503:
                    break
                await asyncio.sleep(1)
            assert r.status_code in (200, 201)
            assert (await tenant.patch("keep", status="Succeeded")).status_code == 200
            resumed = await read_log(client, tenant, "keep", after=50)
            assert [seq for seq, _, _ in resumed] == list(range(51, 51 + len(resumed)))
            full = await read_log(client, tenant, "keep")
            chunks = [data for _, kind, data in full if kind == "chunk"]
            assert chunks == [f"{i};" for i in range(next_index + 1)]
    finally:
        restarted.stop()


async def test_database_outage_gives_503_and_recovers(
    server_store: tuple[str, str], tmp_path: Path
) -> None:
    url, script = server_store
    server = Server(url, tmp_path, env={"AOS_STORE_CHECK_INTERVAL": "0.5"}).start()
    statuses: dict[int, int] = {}
    acknowledged: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            tenant = await Tenant(client, "outage").setup()
            for w in range(4):
                await tenant.job(f"w{w}")
            stop = asyncio.Event()

            async def producer(job_id: str) -> None:
                """A well-behaved producer: indexed appends, retried until acknowledged."""
                index = 0
                while not stop.is_set():
                    r = await tenant.append(job_id, f"{index};", **{"X-Chunk-Index": str(index)})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code in (200, 201):
                        index += 1
                        acknowledged[job_id] = index
                    else:
                        await asyncio.sleep(0.05)

            async def reader() -> None:
                while not stop.is_set():
                    r = await client.get("/api/v1/jobs/w0/status", headers=tenant.headers())
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    await asyncio.sleep(0.02)

            tasks = [asyncio.create_task(producer(f"w{w}")) for w in range(4)]
            tasks.append(asyncio.create_task(reader()))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(control, script, "stop")
            await asyncio.sleep(2.0)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/problem+json"
            during = dict(statuses)
            await asyncio.to_thread(control, script, "start")
            deadline = time.monotonic() + 30
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the service did not recover"
                await asyncio.sleep(0.2)
            before = dict(acknowledged)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*tasks)

            assert 500 not in statuses, statuses
            assert set(statuses) <= {200, 201, 503}, statuses
            assert during.get(503, 0) > 0, "the outage was seen"
            assert all(acknowledged[j] > before.get(j, 0) for j in acknowledged), "writes resumed"
            for job_id, count in acknowledged.items():
                out = (
                    await client.get(f"/api/v1/jobs/{job_id}/output", headers=tenant.headers())
                ).json()
                assert out["output"] == "".join(f"{i};" for i in range(count)), job_id
    finally:
        control(script, "start")
        server.stop()
    assert "Traceback" not in server.log() or "StoreUnavailable" in server.log()


async def test_a_node_waits_for_its_database_at_start(
    server_store: tuple[str, str], tmp_path: Path
) -> None:
    url, script = server_store
    control(script, "stop")
    try:
        server = Server(url, tmp_path)
        starting = asyncio.get_running_loop().run_in_executor(None, server.start, 90)
        deadline = time.monotonic() + 30
        while not (server.log_path and server.log_path.exists()) or (
            "store.waiting" not in server.log()
        ):
            assert time.monotonic() < deadline, "the node did not say it waits for its store"
            await asyncio.sleep(0.2)
        control(script, "start")
        await asyncio.wait_for(starting, 90)
    finally:
        control(script, "start")
    try:
        assert "store.waiting" in server.log()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/readyz")).status_code == 200
    finally:
        server.stop()


async def test_fifty_producers_at_once(store_url: str, tmp_path: Path) -> None:
    nodes = [Server(store_url, tmp_path).start()]
    if not store_url.startswith("sqlite"):
        nodes.append(Server(store_url, tmp_path).start())  # two nodes racing on one database
    try:
        clients = [httpx.AsyncClient(base_url=n.url, timeout=30) for n in nodes]
        setup = await Tenant(clients[0], "race").setup()
        await setup.job("shared")
        per_producer = 20
        producers = 50

        async def produce(p: int) -> None:
            tenant = Tenant(clients[p % len(clients)], "race")
            tenant.keys = setup.keys
            own = f"own-{p}"
            r = await tenant.client.post(
                "/api/v1/jobs", json={"jobId": own}, headers=tenant.headers()
            )
            assert r.status_code == 201, r.text
            for i in range(per_producer):
                for job_id in ("shared", own):
                    r = await tenant.append(job_id, f"p{p}-{i};")
                    assert r.status_code == 201, r.text

        await asyncio.gather(*(produce(p) for p in range(producers)))
        client = clients[0]
        for job_id in ["shared", *(f"own-{p}" for p in range(producers))]:
            assert (await setup.patch(job_id, status="Succeeded")).status_code == 200
            log = await read_log(client, setup, job_id)
            assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1)), job_id
            chunks = [data for _, kind, data in log if kind == "chunk"]
            if job_id == "shared":
                expected = {f"p{p}-{i};" for p in range(producers) for i in range(per_producer)}
                assert len(chunks) == len(expected) and set(chunks) == expected
                for p in range(producers):  # each producer's chunks in its own order
                    mine = [c for c in chunks if c.startswith(f"p{p}-")]
                    assert mine == [f"p{p}-{i};" for i in range(per_producer)]
            else:
                p = int(job_id.split("-")[1])
                assert chunks == [f"p{p}-{i};" for i in range(per_producer)]
        for c in clients:
            await c.aclose()
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_aos_migrate_and_refusing_an_old_schema(name: str, tmp_path: Path) -> None:
    async with STORES[name](tmp_path, empty=True) as url:
        refused = Server(url, tmp_path, env={"AOS_MIGRATE": "false"})
        with pytest.raises(RuntimeError, match="aos migrate"):
            refused.start()
        env = {**os.environ, "AOS_STORAGE_URL": url}
        runs = [
            await asyncio.to_thread(
                subprocess.run,
                [*aos_executable(), "migrate"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for _ in range(2)
        ]
        assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
        applied = [
            json.loads(line)["applied"]
            for r in runs
            for line in r.stderr.splitlines()
            if '"store.migrated"' in line
        ]
        assert applied[0] == list(range(1, len(applied[0]) + 1)) and applied[0], runs[0].stderr
        assert applied[1] == [], runs[1].stderr
        started = Server(url, tmp_path, env={"AOS_MIGRATE": "false"}).start()
        try:
            async with httpx.AsyncClient(base_url=started.url) as client:
                r = await client.put("/api/v1/namespaces/m", headers=auth(ADMIN_TOKEN))
                assert r.status_code == 201
        finally:
            started.stop()
