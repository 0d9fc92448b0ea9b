"""DESIGN §7 on real processes: three (then four) ``aos serve`` on loopback over
one PostgreSQL database. Requests enter anywhere and reach the owner of their
namespace; an owner killed mid-stream loses nothing; a joining node takes over
its share of the namespaces while streams go on."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Sequence

import httpx
import pytest

from ..receiver import Receiver
from ..support import Tenant, auth, free_port, sse_events
from .conftest import SECRET, Cluster, admin

pytestmark = pytest.mark.timeout(180)


async def setup_tenant(base_url: str, name: str, config: dict | None = None) -> Tenant:  # type: ignore[type-arg]
    client = httpx.AsyncClient(base_url=base_url, timeout=30)
    return await Tenant(client, name).setup(config)


async def consume(
    urls: Sequence[str], namespace: str, job_id: str, token: str, *, stop_after: float = 120
) -> tuple[list[str], int]:
    """Every chunk of the job, reading its stream through ``urls`` in turn and
    reconnecting with ``Last-Event-ID`` whenever a stream breaks off; returns
    the chunks' data and how many connections it took."""
    chunks: list[str] = []
    last_id: str | None = None
    connections = 0
    nodes = itertools.cycle(urls)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=15)) as client:
        async with asyncio.timeout(stop_after):
            while True:
                url = next(nodes)
                headers = {**auth(token), "X-Namespace": namespace}
                if last_id is not None:
                    headers["Last-Event-ID"] = last_id
                connections += 1
                try:
                    async with client.stream(
                        "GET", f"{url}/api/v1/jobs/{job_id}/stream", headers=headers
                    ) as response:
                        if response.status_code == 204:
                            return chunks, connections
                        if response.status_code != 200:
                            await asyncio.sleep(0.2)
                            continue
                        async for event in sse_events(response):
                            if event.event == "end":
                                return chunks, connections
                            if event.id is not None:
                                last_id = event.id
                            if event.event == "chunk":
                                chunks.append(event.json()["data"])
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)


async def call(
    urls: Sequence[str], method: str, path: str, *, attempts: int = 60, **kwargs: object
) -> httpx.Response:
    """A write that is safe to repeat, retried across ``urls`` until it is answered
    (what a producer does when a node dies under it)."""
    nodes = itertools.cycle(urls)
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(attempts):
            try:
                response = await client.request(method, f"{next(nodes)}{path}", **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(0.1)
    raise AssertionError(f"{method} {path} was never answered")


def chunk_headers(tenant: Tenant, index: int) -> dict[str, str]:
    return {**tenant.headers(), "Content-Type": "text/plain", "X-Chunk-Index": str(index)}


async def produce(
    urls: Sequence[str], tenant: Tenant, job_id: str, start: int, stop: int, pause: float = 0.0
) -> None:
    for i in range(start, stop):
        r = await call(
            urls,
            "POST",
            f"/api/v1/jobs/{job_id}/output",
            content=f"chunk-{i:03d}\n".encode(),
            headers=chunk_headers(tenant, i),
        )
        assert r.status_code in (200, 201), r.text
        if pause:
            await asyncio.sleep(pause)


async def finish(urls: Sequence[str], tenant: Tenant, job_id: str) -> None:
    r = await call(
        urls,
        "PATCH",
        f"/api/v1/jobs/{job_id}/status",
        json={"status": "Succeeded"},
        headers=tenant.headers(),
    )
    assert r.status_code in (200, 409), r.text  # 409: a retry after the first attempt landed


def expected(start: int, stop: int) -> list[str]:
    return [f"chunk-{i:03d}\n" for i in range(start, stop)]


async def metric(url: str, name: str, label: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    match = re.search(rf"^{name}\{{{label}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# -- routing ------------------------------------------------------------------------


async def test_the_nodes_agree_and_show_their_ring(cluster: Cluster) -> None:
    ring = cluster.ring("abc")
    async with httpx.AsyncClient(timeout=5) as client:
        for node_id in "abc":
            ready = (await client.get(f"{cluster.url(node_id)}/readyz")).json()
            assert ready["cluster"]["node"] == node_id
            assert ready["cluster"]["members"] == 3
            assert ready["cluster"]["ownedShards"] == len(ring.shards_of(node_id))
        view = (await client.get(f"{cluster.url('a')}/api/v1/cluster", headers=admin())).json()
        assert {m["id"]: m["state"] for m in view["members"]} == dict.fromkeys("abc", "up")
        assert sum(m["shards"] for m in view["members"]) == 1024
        # the cluster view is the root admin's; the ping route is the members'
        tenant = await setup_tenant(cluster.url("a"), "viewer")
        r = await client.get(f"{cluster.url('a')}/api/v1/cluster", headers=tenant.headers("admin"))
        assert r.status_code == 403
        r = await client.get(f"{cluster.url('a')}/internal/v1/cluster/ping")
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        await tenant.client.aclose()


async def test_a_producer_on_a_and_a_consumer_on_b_see_every_chunk(cluster: Cluster) -> None:
    ring = cluster.ring("abc")
    (namespace,) = cluster.namespaces_owned_by("c", ring)  # both go through a non-owner
    a, b, c = (cluster.url(n) for n in "abc")
    producer = await setup_tenant(a, namespace)
    await producer.job("live")
    consumer = asyncio.create_task(consume([b], namespace, "live", producer.keys["consumer"]))
    await asyncio.sleep(0.3)
    r = await producer.client.post(
        "/api/v1/jobs/live/output",
        content=b"chunk-000\n",
        headers={**chunk_headers(producer, 0), "X-Request-ID": "trace-through-a"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["x-request-id"] == "trace-through-a"
    await produce([a], producer, "live", 1, 50)
    await finish([a], producer, "live")
    chunks, connections = await consumer
    assert chunks == expected(0, 50)
    assert connections == 1
    # both requests went to the owner, which logged the entry node's request id
    assert await metric(a, "aos_forwarded_requests_total", 'outcome="forwarded"') >= 50
    assert await metric(b, "aos_forwarded_requests_total", 'outcome="forwarded"') >= 1
    assert "trace-through-a" in cluster.nodes["c"].log_path.read_text()  # type: ignore[union-attr]
    assert await metric(c, "aos_forwarded_requests_total", 'outcome="forwarded"') == 0
    await producer.client.aclose()


async def test_long_poll_raw_output_and_uploads_pass_through(cluster: Cluster) -> None:
    ring = cluster.ring("abc")
    (namespace,) = cluster.namespaces_owned_by("a", ring)
    b, c = cluster.url("b"), cluster.url("c")
    tenant = await setup_tenant(b, namespace)
    await tenant.job("poll")
    async with httpx.AsyncClient(base_url=c, timeout=40) as reader:
        headers = {**tenant.headers("consumer"), "X-Namespace": namespace}
        first = await reader.get("/api/v1/jobs/poll/status", headers=headers)
        etag = first.headers["etag"]
        waiting = asyncio.create_task(
            reader.get(
                "/api/v1/jobs/poll/status?wait=30", headers={**headers, "If-None-Match": etag}
            )
        )
        await asyncio.sleep(0.5)
        await produce([b], tenant, "poll", 0, 1)
        woken = await waiting  # a missed wake-up would be a 304 after 30 s
        assert woken.status_code == 200
        assert woken.json()["lastSeq"] > first.json()["lastSeq"]

        # a 6 MiB upload streamed through b, read back through c with a Range
        await tenant.job("big")
        body = bytes(range(256)) * (6 * 4096)

        async def parts():  # type: ignore[no-untyped-def]
            for at in range(0, len(body), 65536):
                yield body[at : at + 65536]

        r = await tenant.client.put(
            "/api/v1/jobs/big/output",
            content=parts(),
            headers={**tenant.headers(), "Content-Type": "application/octet-stream"},
        )
        assert r.status_code in (200, 201), r.text
        # identity: httpx's zstd decoder fails on a frame boundary that falls
        # between two reads ("cannot use a decompressobj multiple times"), and
        # the stored output is many zstd frames (the passthrough has its own tests)
        raw = {**headers, "Accept-Encoding": "identity"}
        whole = await reader.get("/api/v1/jobs/big/output/raw", headers=raw)
        assert whole.status_code == 200 and whole.content == body
        part = await reader.get(
            "/api/v1/jobs/big/output/raw", headers={**raw, "Range": "bytes=1000-1999"}
        )
        assert part.status_code == 206 and part.content == body[1000:2000]
    await tenant.client.aclose()


async def test_the_forwarded_marker_needs_the_cluster_secret(cluster: Cluster) -> None:
    ring = cluster.ring("abc")
    (namespace,) = cluster.namespaces_owned_by("b", ring)
    a = cluster.url("a")
    tenant = await setup_tenant(a, namespace)
    await tenant.job("marked")
    before = await metric(a, "aos_forwarded_requests_total", 'outcome="forwarded"')
    async with httpx.AsyncClient(base_url=a) as client:
        headers = {**tenant.headers(), "X-Namespace": namespace}
        forged = {**headers, "X-AOS-Forwarded-By": "b"}
        assert (await client.get("/api/v1/jobs/marked", headers=forged)).status_code == 200
        assert await metric(a, "aos_forwarded_requests_total", 'outcome="forwarded"') == before + 1
        # with the secret, a forwarded request is served where it lands: no second hop
        genuine = {**forged, "X-AOS-Cluster-Auth": SECRET}
        assert (await client.get("/api/v1/jobs/marked", headers=genuine)).status_code == 200
        assert await metric(a, "aos_forwarded_requests_total", 'outcome="forwarded"') == before + 1
    await tenant.client.aclose()


# -- failure and growth -------------------------------------------------------------


async def test_the_owner_killed_mid_stream_loses_nothing(
    cluster: Cluster, receiver: Receiver
) -> None:
    ring = cluster.ring("abc")
    (namespace,) = cluster.namespaces_owned_by("c", ring)
    a, b = cluster.url("a"), cluster.url("b")
    tenant = await setup_tenant(a, namespace, {"webhookUrl": f"{receiver.url}/hooks"})
    await tenant.job("survivor")
    consumer = asyncio.create_task(consume([b, a], namespace, "survivor", tenant.keys["consumer"]))
    await produce([a, b], tenant, "survivor", 0, 20, pause=0.01)
    cluster.nodes["c"].kill()  # SIGKILL: no goodbye to anyone
    await produce([a, b], tenant, "survivor", 20, 60, pause=0.01)
    await finish([a, b], tenant, "survivor")
    chunks, connections = await consumer
    assert chunks == expected(0, 60)  # every chunk, once, in order
    assert connections >= 2  # it did lose its stream, and resumed by Last-Event-ID
    await cluster.agree("ab")

    def statuses(got: list) -> set[str]:  # type: ignore[type-arg]
        return {
            r.json()["data"]["status"]
            for r in got
            if r.json()["type"] == "job.status" and r.json()["data"]["jobId"] == "survivor"
        }

    await receiver.wait_for(lambda got: {"Queued", "Running", "Succeeded"} <= statuses(got), 30)
    await receiver.wait_for(lambda got: any(r.json()["type"] == "job.completed" for r in got), 30)
    await tenant.client.aclose()


async def test_a_fourth_node_takes_a_quarter_while_streams_go_on(cluster: Cluster) -> None:
    cluster.ports["d"] = free_port()
    before, after = cluster.ring("abc"), cluster.ring("abcd")
    moving = cluster.namespaces_owned_by("d", after, 3)
    staying = cluster.namespaces_owned_by("a", after, 3)
    urls = [cluster.url(n) for n in "abc"]
    tenants = {
        name: await setup_tenant(urls[i % 3], name) for i, name in enumerate(moving + staying)
    }
    consumers = {}
    for i, (name, tenant) in enumerate(tenants.items()):
        await tenant.job("j")
        entry = [urls[(i + 1) % 3], urls[(i + 2) % 3]]
        consumers[name] = asyncio.create_task(consume(entry, name, "j", tenant.keys["consumer"]))
    await asyncio.gather(*(produce(urls, t, "j", 0, 10) for t in tenants.values()))

    cluster.start("d", "abcd")  # it names the others; they learn of it from its pings
    ring = await cluster.agree("abcd")
    shards = len(ring.shards_of("d"))
    assert 0.15 * 1024 <= shards <= 0.35 * 1024
    for shard in range(1024):  # only shards that went to d moved
        if after.owner_of_shard(shard).id != "d":
            assert after.owner_of_shard(shard) == before.owner_of_shard(shard)

    urls.append(cluster.url("d"))
    await asyncio.gather(*(produce(urls, t, "j", 10, 20) for t in tenants.values()))
    await asyncio.gather(*(finish(urls, t, "j") for t in tenants.values()))
    for name, task in consumers.items():
        chunks, connections = await task
        assert chunks == expected(0, 20), name
        if name in moving:  # its stream was handed over to d: it reconnected
            assert connections >= 2, name
    # the namespaces that moved are served by d now, whichever node they enter by
    log = cluster.nodes["d"].log_path.read_text()  # type: ignore[union-attr]
    async with httpx.AsyncClient(timeout=5) as client:
        for name in moving:
            r = await client.get(
                f"{cluster.url('a')}/api/v1/jobs/j",
                headers={**tenants[name].headers(), "X-Namespace": name, "X-Request-ID": name},
            )
            assert r.status_code == 200
        log = cluster.nodes["d"].log_path.read_text()  # type: ignore[union-attr]
        assert all(f'"requestId":"{name}"' in log for name in moving)
    for tenant in tenants.values():
        await tenant.client.aclose()
