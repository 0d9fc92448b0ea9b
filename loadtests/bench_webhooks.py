"""Signed webhook deliveries per second from one node to a local receiver.

    python -m loadtests.bench_webhooks --stores sqlite,postgresql --deliveries 20000

For each store: start ``aos serve`` with its drainer off, submit N jobs to a
namespace whose webhook points at ``loadtests/receiver.py`` (each submission
queues one signed ``job.status`` delivery), stop the node, start it again
with the drainer on, and time the drain until the receiver has counted N
distinct ``webhook-id`` values. In the same run, the receiver's own ceiling:
the same requests (same size, same headers) sent to it as fast as the load
client can over 64 keep-alive connections. One signature is checked with
``webhooks.verify``. Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

from webhooks import sign, verify

from .client import Pool
from .harness import AosProcess, database_url, emit, free_port

ADMIN = "bench-admin-token"
SECRET = "whsec_" + "QmVuY2htYXJrU2VjcmV0S2V5Rm9yV2ViaG9va3MhIQ=="


@asynccontextmanager
async def receiver_process() -> AsyncIterator[int]:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
        [sys.executable, "-m", "loadtests.receiver", "--port", str(port)]
    )
    pool = Pool("127.0.0.1", port, 1)
    try:
        for _ in range(100):
            try:
                await pool.request("GET", "/count")
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield port
    finally:
        pool.close()
        process.terminate()
        process.wait()


async def count(port: int) -> dict[str, float]:
    pool = Pool("127.0.0.1", port, 1)
    try:
        result: dict[str, float] = orjson.loads((await pool.request("GET", "/count")).body)
        return result
    finally:
        pool.close()


async def receiver_ceiling(port: int, seconds: float, body: bytes) -> float:
    """Requests per second the receiver answers, with the same request as a delivery."""
    pool = Pool("127.0.0.1", port, 64)
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_ceiling",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SECRET, "msg_ceiling", ts, body),
        "User-Agent": "aos-webhooks/bench",
    }
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await pool.request("POST", "/h", headers, body)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(64)))
    pool.close()
    return done / (time.monotonic() - started)


async def fill(aos: AosProcess, receiver_port: int, deliveries: int) -> bytes:
    """Queue ``deliveries`` job.status webhooks; returns one body as sent."""
    pool = Pool("127.0.0.1", aos.port, 32)
    admin = {
        "Authorization": f"Bearer {ADMIN}",
        "Content-Type": "application/json",
        "X-Namespace": "hooks",
    }
    config = {"webhookUrl": f"http://127.0.0.1:{receiver_port}/h", "webhookSecret": SECRET}
    r = await pool.request("PUT", "/api/v1/namespaces/hooks", admin, orjson.dumps(config))
    assert r.status in (200, 201), r.body
    queue = iter(range(deliveries))

    async def worker() -> None:
        for i in queue:
            body = orjson.dumps({"jobId": f"job-{i}", "metadata": {"title": "bench"}})
            r = await pool.request("POST", "/api/v1/jobs", admin, body)
            assert r.status == 201, r.body

    await asyncio.gather(*(worker() for _ in range(32)))
    r = await pool.request("GET", "/api/v1/jobs/job-0/deliveries", admin)
    pool.close()
    return orjson.dumps(orjson.loads(r.body)["items"][0]["payload"])


async def bench(system: str, url: str, deliveries: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        async with receiver_process() as port:
            env = {
                "AOS_ADMIN_TOKEN": ADMIN,
                "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                **{k: v for k, v in os.environ.items() if k.startswith("AOS_WEBHOOK_")},
            }
            filler = AosProcess(url, Path(workdir), {**env, "AOS_WEBHOOKS": "false"}).start()
            try:
                body = await fill(filler, port, deliveries)
            finally:
                filler.stop()
            ceiling = await receiver_ceiling(port, 3.0, body)
            posts_before = (await count(port))["posts"]
            drainer = AosProcess(url, Path(workdir), env)
            started = time.monotonic()
            drainer.start()
            try:
                cpu_before = drainer.cpu_seconds()
                while (await count(port))["ids"] < deliveries + 1:  # +1: msg_ceiling
                    if time.monotonic() - started > 300:
                        raise RuntimeError("the drain did not finish in 300 s")
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - started
                cpu = drainer.cpu_seconds() - cpu_before
                sample_pool = Pool("127.0.0.1", port, 1)
                sample = orjson.loads((await sample_pool.request("GET", "/sample")).body)
                sample_pool.close()
            finally:
                drainer.stop()
            final = await count(port)
            posts = final["posts"] - posts_before
            first_to_last = final["last_at"] - final["first_at"]
            headers = {}
            for line in sample["head"].split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            verify(SECRET, headers, sample["body"].encode(), tolerance=3600)
            emit(system, "webhooks", "deliveries", deliveries, "deliveries")
            emit(
                system,
                "webhooks",
                "deliveries_per_second",
                round((deliveries - 1) / first_to_last),
                "1/s",
            )
            emit(system, "webhooks", "drain_seconds", round(first_to_last, 2), "s")
            emit(system, "webhooks", "drain_seconds_incl_node_start", round(elapsed, 2), "s")
            emit(system, "webhooks", "extra_attempts", posts - deliveries, "requests")
            emit(system, "webhooks", "server_cpu_per_delivery", round(cpu / deliveries * 1e6), "us")
            emit("receiver", "webhooks", "ceiling_requests_per_second", round(ceiling), "1/s")
            emit(system, "webhooks", "signature_checked", "ok", "")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite")
    parser.add_argument("--deliveries", type=int, default=20_000)
    args = parser.parse_args(argv)
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            if store == "sqlite":
                await bench("aos-sqlite", f"sqlite:///{workdir}/hooks.db", args.deliveries)
                continue
            try:
                async with database_url(store) as url:
                    await bench(f"aos-{store}", url, args.deliveries)
            except LookupError as exc:
                print(f"skipping {store}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
