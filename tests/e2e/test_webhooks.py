"""Webhooks over real HTTP: aos serve delivering to a receiver on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from webhooks import verify

from ..receiver import Received, Receiver, Reply
from ..support import ADMIN_TOKEN, Server, Tenant, auth

_names = itertools.count()


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("aos-webhooks")
    running = Server(
        f"sqlite:///{workdir}/aos.db",
        workdir,
        env={
            "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "AOS_WEBHOOK_POLL": "0.2",
            "AOS_WEBHOOK_OUTPUT_INTERVAL": "60",
        },
    ).start()
    yield running
    running.stop()


@pytest.fixture
async def client(hook_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hook_server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    yield running
    await running.stop()


async def hooked_tenant(client: httpx.AsyncClient, receiver: Receiver, **config: Any) -> Tenant:
    tenant = Tenant(client, f"wh{next(_names)}")
    return await tenant.setup({"webhookUrl": f"{receiver.url}/hooks", **config})


async def secrets_of(client: httpx.AsyncClient, tenant: Tenant) -> list[str]:
    r = await client.get(f"/api/v1/namespaces/{tenant.name}", headers=auth(ADMIN_TOKEN))
    return [s["secret"] for s in r.json()["webhookSecrets"]]


def events(received: list[Received]) -> list[tuple[str, str | None]]:
    out = []
    for r in received:
        body = r.json()
        out.append((body["type"], body["data"].get("status")))
    return out


async def test_a_job_life_in_signed_webhooks(client: httpx.AsyncClient, receiver: Receiver) -> None:
    tenant = await hooked_tenant(client, receiver)
    [secret] = await secrets_of(client, tenant)
    await tenant.job("life")
    await tenant.append("life", "first")
    await tenant.append("life", "second")  # within the output interval: no second job.output
    await tenant.patch("life", status="Succeeded")
    await receiver.wait_for(lambda got: len(got) >= 5)
    await asyncio.sleep(0.5)
    got = sorted(receiver.received, key=lambda r: int(r.headers["webhook-timestamp"]))
    assert len(receiver.received) == 5
    kinds = sorted(events(got))
    assert kinds == sorted(
        [
            ("job.status", "Queued"),
            ("job.status", "Running"),
            ("job.output", None),
            ("job.status", "Succeeded"),
            ("job.completed", "Succeeded"),
        ]
    )
    reference = Webhook(secret)
    for request in receiver.received:
        assert request.path == "/hooks"
        assert request.headers["content-type"] == "application/json"
        assert request.webhook_id.startswith("msg_")
        reference.verify(request.body, request.headers)  # the spec's own implementation
        assert verify(secret, request.headers, request.body) == request.json()
    by_status = {
        r.json()["data"]["status"]: r.json()["data"]
        for r in receiver.received
        if r.json()["type"] == "job.status"
    }
    assert by_status["Queued"]["previousStatus"] is None
    assert by_status["Running"]["previousStatus"] == "Queued"
    assert by_status["Succeeded"]["previousStatus"] == "Running"
    output = next(r.json()["data"] for r in receiver.received if r.json()["type"] == "job.output")
    assert (output["seq"], output["index"], output["size"]) == (3, 0, 5)
    completed = next(
        r.json()["data"] for r in receiver.received if r.json()["type"] == "job.completed"
    )
    assert completed["jobId"] == "life" and completed["lastSeq"] == 6

    log = (await client.get("/api/v1/jobs/life/deliveries", headers=tenant.headers())).json()
    assert len(log["items"]) == 5
    assert {d["state"] for d in log["items"]} == {"succeeded"}
    assert all(d["attempts"] == 1 and d["log"][0]["status"] == 200 for d in log["items"])
    assert {d["deliveryId"] for d in log["items"]} == {r.webhook_id for r in receiver.received}


async def test_failures_then_success_keep_the_webhook_id(client: httpx.AsyncClient) -> None:
    failures: dict[str, int] = {}

    def flaky(request: Received) -> Reply:
        seen = failures.get(request.webhook_id, 0)
        failures[request.webhook_id] = seen + 1
        return (500, {}, b"not yet") if seen < 2 else (200, {}, b"fine")

    receiver = await Receiver(flaky).start()
    try:
        tenant = await hooked_tenant(client, receiver, webhookRetrySchedule=["1", "1", "1"])
        await tenant.job("flaky")
        await receiver.wait_for(lambda got: len(got) >= 3)
        assert len({r.webhook_id for r in receiver.received}) == 1, "the same id on each try"
        gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.received)]
        assert all(0.7 <= gap <= 4 for gap in gaps), gaps
        await asyncio.sleep(0.5)
        [delivery] = (
            await client.get("/api/v1/jobs/flaky/deliveries", headers=tenant.headers())
        ).json()["items"]
        assert delivery["state"] == "succeeded" and delivery["attempts"] == 3
        assert [a["status"] for a in delivery["log"]] == [500, 500, 200]
        assert delivery["log"][0]["response"] == "not yet"
    finally:
        await receiver.stop()


async def test_retry_after_is_honoured(client: httpx.AsyncClient) -> None:
    calls = 0

    def busy_once(_: Received) -> Reply:
        nonlocal calls
        calls += 1
        return (503, {"Retry-After": "3"}, b"") if calls == 1 else (200, {}, b"")

    receiver = await Receiver(busy_once).start()
    try:
        tenant = await hooked_tenant(client, receiver, webhookRetrySchedule=["1"])
        await tenant.job("later")
        await receiver.wait_for(lambda got: len(got) >= 2, seconds=15)
        first, second = receiver.received[:2]
        assert second.at - first.at >= 2.9, "waited as asked, not the 1 s of the schedule"
    finally:
        await receiver.stop()


async def test_gone_disables_the_endpoint(client: httpx.AsyncClient) -> None:
    gone = True

    def maybe_gone(_: Received) -> Reply:
        return (410, {}, b"") if gone else (200, {}, b"")

    receiver = await Receiver(maybe_gone).start()
    try:
        tenant = await hooked_tenant(client, receiver)
        admin = auth(ADMIN_TOKEN)
        await tenant.job("g1")
        await receiver.wait_for(lambda got: len(got) >= 1)
        await asyncio.sleep(0.5)
        [first] = (await client.get("/api/v1/jobs/g1/deliveries", headers=tenant.headers())).json()[
            "items"
        ]
        assert first["state"] == "dead" and first["lastStatus"] == 410
        endpoints = (
            await client.get(f"/api/v1/namespaces/{tenant.name}/webhook-endpoints", headers=admin)
        ).json()["items"]
        assert [(e["url"], e["disabled"]) for e in endpoints] == [(f"{receiver.url}/hooks", True)]
        # Later events to a disabled endpoint are not sent.
        await tenant.job("g2")
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 1
        [second] = (
            await client.get("/api/v1/jobs/g2/deliveries", headers=tenant.headers())
        ).json()["items"]
        assert second["state"] == "dead" and "endpoint disabled" in second["lastError"]
        # Enabled again, the dead deliveries replay.
        gone = False
        r = await client.post(
            f"/api/v1/namespaces/{tenant.name}/webhook-endpoints/enable",
            json={"url": f"{receiver.url}/hooks"},
            headers=admin,
        )
        assert r.status_code == 200 and r.json()["disabled"] is False
        r = await client.post(
            f"/api/v1/namespaces/{tenant.name}/deliveries/replay",
            json={"since": "2000-01-01T00:00:00Z"},
            headers=tenant.headers(),
        )
        assert r.status_code == 202 and r.json() == {"requeued": 2, "more": False}
        await receiver.wait_for(lambda got: len(got) >= 3)
        ids = {r.webhook_id for r in receiver.received}
        assert ids == {first["deliveryId"], second["deliveryId"]}
    finally:
        await receiver.stop()


async def test_a_dead_delivery_replays(client: httpx.AsyncClient) -> None:
    healthy = False

    def switch(_: Received) -> Reply:
        return (200, {}, b"") if healthy else (502, {}, b"bad gateway")

    receiver = await Receiver(switch).start()
    try:
        tenant = await hooked_tenant(client, receiver, webhookRetrySchedule=["1"])
        await tenant.job("dead")
        await receiver.wait_for(lambda got: len(got) >= 2)
        await asyncio.sleep(0.5)
        dead = (
            await client.get(
                f"/api/v1/namespaces/{tenant.name}/deliveries?state=dead",
                headers=tenant.headers("consumer"),
            )
        ).json()["items"]
        assert len(dead) == 1 and dead[0]["attempts"] == 2
        assert [a["status"] for a in dead[0]["log"]] == [502, 502]
        healthy = True
        delivery_id = dead[0]["deliveryId"]
        r = await client.post(
            f"/api/v1/jobs/dead/deliveries/{delivery_id}/retry", headers=tenant.headers()
        )
        assert r.status_code == 202 and r.json()["state"] == "pending"
        await receiver.wait_for(lambda got: len(got) >= 3)
        assert receiver.received[-1].webhook_id == delivery_id
        await asyncio.sleep(0.5)
        [done] = (
            await client.get("/api/v1/jobs/dead/deliveries", headers=tenant.headers())
        ).json()["items"]
        assert done["state"] == "succeeded"
        assert [a["status"] for a in done["log"]] == [502, 502, 200]
        r = await client.post(
            "/api/v1/jobs/dead/deliveries/msg_nope/retry", headers=tenant.headers()
        )
        assert r.status_code == 404
        r = await client.post(
            f"/api/v1/jobs/dead/deliveries/{delivery_id}/retry", headers=tenant.headers("consumer")
        )
        assert r.status_code == 403
    finally:
        await receiver.stop()


async def test_redirects_are_not_followed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    def redirect(_: Received) -> Reply:
        return 307, {"Location": f"{receiver.url}/elsewhere"}, b""

    receiver.behaviour = redirect
    tenant = await hooked_tenant(client, receiver, webhookRetrySchedule=["1"])
    await tenant.job("moved")
    await receiver.wait_for(lambda got: len(got) >= 2)
    await asyncio.sleep(0.5)
    assert {r.path for r in receiver.received} == {"/hooks"}
    [delivery] = (
        await client.get("/api/v1/jobs/moved/deliveries", headers=tenant.headers())
    ).json()["items"]
    assert delivery["state"] == "dead"
    assert "redirects are not followed" in delivery["lastError"]


async def test_internal_targets_are_refused(client: httpx.AsyncClient) -> None:
    tenant = await Tenant(client, f"wh{next(_names)}").setup()
    await tenant.job("inside", webhookUrl="http://10.255.255.1:9/hook")
    await tenant.job("metadata", webhookUrl="http://169.254.169.254/latest/meta-data")
    started = time.monotonic()
    while time.monotonic() - started < 10:
        states = []
        for job_id in ("inside", "metadata"):
            items = (
                await client.get(f"/api/v1/jobs/{job_id}/deliveries", headers=tenant.headers())
            ).json()["items"]
            states.append(items[0] if items else None)
        if all(d is not None and d["state"] == "dead" for d in states):
            break
        await asyncio.sleep(0.2)
    assert "private" in states[0]["lastError"] and "refused" in states[0]["lastError"]
    assert "link-local" in states[1]["lastError"]
    assert states[0]["attempts"] == 1, "no retries for a refused address"


async def test_rotation_signs_with_old_and_new(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    tenant = await hooked_tenant(client, receiver)
    [old] = await secrets_of(client, tenant)
    r = await client.post(
        f"/api/v1/namespaces/{tenant.name}/webhook-secrets",
        json={"gracePeriod": "PT1H"},
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 201
    secrets = r.json()["webhookSecrets"]
    assert [s["secret"] for s in secrets][1] == old and secrets[0]["expiresAt"] is None
    assert secrets[1]["expiresAt"] is not None
    new = secrets[0]["secret"]
    await tenant.job("rotated")
    await receiver.wait_for(lambda got: len(got) >= 1)
    request = receiver.received[0]
    assert len(request.headers["webhook-signature"].split()) == 2
    assert verify(old, request.headers, request.body)
    assert verify(new, request.headers, request.body)
    Webhook(new).verify(request.body, request.headers)
