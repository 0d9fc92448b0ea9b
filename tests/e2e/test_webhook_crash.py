"""No webhook is lost when the service dies: SIGKILL at random, thousands of
transitions, every acknowledged one delivered."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from ..receiver import Receiver
from ..support import Server, Tenant

JOBS = 700  # three transitions each: 2,100 transitions
#: seconds of load at most: a slow test server (DynamoDB Local serialises its
#: requests) runs fewer jobs, under as many kills
LOAD_SECONDS = 40


def hook_server(url: str, workdir: Path, port: int = 0) -> Server:
    return Server(
        url,
        workdir,
        port=port,
        env={
            "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "AOS_WEBHOOK_LEASE": "2",  # a dead node's claims come back quickly
            "AOS_WEBHOOK_POLL": "0.2",
            "AOS_ACCESS_LOG": "false",
        },
    )


def delivered(receiver: Receiver) -> set[tuple[str, str]]:
    out = set()
    for request in receiver.received:
        body = request.json()
        if body["type"] == "job.status":
            out.add((body["data"]["jobId"], body["data"]["status"]))
    return out


async def test_a_kill_between_the_change_and_its_delivery(tmp_path: Path) -> None:
    """The event is committed, the receiver is down, the node dies: still delivered."""
    receiver = await Receiver().start()
    url = receiver.url
    server = hook_server(f"sqlite:///{tmp_path}/aos.db", tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            tenant = await Tenant(client, "crash").setup({"webhookUrl": f"{url}/h"})
            await receiver.stop()  # deliveries now fail and wait for a retry
            await tenant.job("k1")
            await asyncio.sleep(0.3)
            server.kill()
        receiver = await Receiver().start(port=int(url.rsplit(":", 1)[1]))
        server = hook_server(f"sqlite:///{tmp_path}/aos.db", tmp_path, server.port).start()
        # The first attempt failed before the kill; the retry (5 s) or the
        # lease (2 s) brings it back after the restart.
        await receiver.wait_for(lambda got: ("k1", "Queued") in delivered(receiver), seconds=20)
    finally:
        server.stop()
        await receiver.stop()


@pytest.mark.timeout(300)
async def test_random_kills_lose_no_acknowledged_event(store_url: str, tmp_path: Path) -> None:
    receiver = await Receiver().start()
    server = hook_server(store_url, tmp_path).start()
    expected: set[tuple[str, str]] = set()
    rng = random.Random(20261123)
    kills = 0
    done = asyncio.Event()

    async def killer() -> None:
        nonlocal server, kills
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            if done.is_set():
                return
            server.kill()
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            server = await asyncio.to_thread(hook_server(store_url, tmp_path, server.port).start)

    async def until_acknowledged(
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: dict[str, str],
        headers: dict[str, str],
    ) -> int:
        while True:
            try:
                r = await client.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # the node is down: as a producer would, retry
                continue
            if r.status_code == 503:
                await asyncio.sleep(0.05)
                continue
            return r.status_code

    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            tenant = await Tenant(client, "kills").setup({"webhookUrl": f"{receiver.url}/h"})
            headers = tenant.headers()
            kill_task = asyncio.create_task(killer())

            async def one_job(i: int) -> None:
                job_id = f"j{i}"
                status = await until_acknowledged(
                    client, "POST", "/api/v1/jobs", {"jobId": job_id}, headers
                )
                assert status in (200, 201)
                expected.add((job_id, "Queued"))
                for target in ("Running", "Succeeded"):
                    status = await until_acknowledged(
                        client,
                        "PATCH",
                        f"/api/v1/jobs/{job_id}/status",
                        {"status": target},
                        headers,
                    )
                    # 409 job-terminal: a retry of a transition that had landed
                    assert status in (200, 409), status
                    expected.add((job_id, target))

            jobs = 0
            deadline = asyncio.get_running_loop().time() + LOAD_SECONDS
            while jobs < JOBS and (jobs < 60 or asyncio.get_running_loop().time() < deadline):
                await asyncio.gather(*(one_job(i) for i in range(jobs, jobs + 20)))
                jobs += 20
            done.set()
            await kill_task
        assert kills >= 3, "the node was killed during the run"
        assert len(expected) == 3 * jobs
        await receiver.wait_for(lambda got: expected <= delivered(receiver), seconds=90)
    finally:
        done.set()
        server.stop()
        await receiver.stop()
    missing = expected - delivered(receiver)
    assert not missing
