"""Submit, append and status latency of the service on each store, at a fixed rate.

    python -m loadtests.bench_store --stores sqlite,postgresql,mysql --rate 1000 --duration 10

For each store it starts ``aos serve`` on a fresh database (PostgreSQL and
MySQL from ``AOS_TEST_POSTGRES_URL`` / ``AOS_TEST_MYSQL_URL``, as ``make
test`` sets them), warms up, then drives each scenario open-loop: requests
start on a fixed schedule whatever the server does, and each latency counts
from the scheduled start, so a stall shows as latency instead of as a lower
request rate (no coordinated omission). Prints one JSON line per result:
``{"system", "scenario", "metric", "value", "unit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import orjson

from .client import Pool
from .harness import AosProcess, database_url, emit, percentiles

ADMIN = "bench-admin-token"


async def open_loop(
    rate: float, duration: float, pool_call: Callable[[int], Awaitable[int]]
) -> tuple[list[float], int, float]:
    """Run ``pool_call(i)`` at ``rate``/s for ``duration`` s: latencies (s), errors, elapsed."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    latencies: list[float] = []
    errors = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        try:
            status = await pool_call(i)
        except Exception:
            status = 0
        latencies.append(loop.time() - scheduled)
        if status >= 300 or status == 0:
            errors += 1

    tasks = []
    start = loop.time()
    issued = 0
    while issued < total:
        now = loop.time()
        while issued < total and start + issued / rate <= now:
            tasks.append(asyncio.create_task(one(issued, start + issued / rate)))
            issued += 1
        await asyncio.sleep(0.0005)
    await asyncio.gather(*tasks)
    return latencies, errors, loop.time() - start


async def bench(system: str, url: str, rate: float, duration: float, connections: int) -> None:
    with TemporaryDirectory() as workdir:
        server = AosProcess(url, Path(workdir), {"AOS_ADMIN_TOKEN": ADMIN}).start()
        pool = Pool("127.0.0.1", server.port, connections)
        admin = {
            "Authorization": f"Bearer {ADMIN}",
            "X-Namespace": "bench",
            "Content-Type": "application/json",
        }
        try:
            r = await pool.request("PUT", "/api/v1/namespaces/bench", admin, b"{}")
            assert r.status in (200, 201), r.body
            jobs = [f"target-{i}" for i in range(200)]
            for job_id in jobs:
                body = orjson.dumps({"jobId": job_id})
                r = await pool.request("POST", "/api/v1/jobs", admin, body)
                assert r.status == 201, r.body
            text = {**admin, "Content-Type": "text/plain"}
            chunk = b"x" * 256
            run = time.time_ns()

            async def submit(i: int) -> int:
                body = orjson.dumps({"jobId": f"s{run}-{i}", "metadata": {"title": "bench"}})
                return (await pool.request("POST", "/api/v1/jobs", admin, body)).status

            async def append(i: int) -> int:
                path = f"/api/v1/jobs/{jobs[i % len(jobs)]}/output"
                return (await pool.request("POST", path, text, chunk)).status

            async def status(i: int) -> int:
                path = f"/api/v1/jobs/{jobs[i % len(jobs)]}/status"
                return (await pool.request("GET", path, admin)).status

            for scenario, call in (("submit", submit), ("append", append), ("status", status)):
                await open_loop(rate, 1.0, call)  # warm-up
                cpu_before = server.cpu_seconds()
                latencies, errors, elapsed = await open_loop(rate, duration, call)
                cpu = server.cpu_seconds() - cpu_before
                emit(system, scenario, "target_rate", rate, "req/s")
                emit(system, scenario, "achieved_rate", round(len(latencies) / elapsed, 1), "req/s")
                for name, value in percentiles(latencies).items():
                    emit(system, scenario, name, round(value * 1000, 3), "ms")
                emit(system, scenario, "errors", errors, "requests")
                emit(
                    system,
                    scenario,
                    "server_cpu_per_request",
                    round(cpu / max(len(latencies), 1) * 1e6),
                    "us",
                )
            emit(system, "server", "peak_rss", server.peak_rss_mb(), "MB")
        finally:
            pool.close()
            server.stop()


@asynccontextmanager
async def store_url(store: str, workdir: Path) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{workdir}/bench.db"
    elif store == "memory":
        yield "memory://"
    else:
        async with database_url(store) as url:
            yield url


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgresql,mysql")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    for store in args.stores.split(","):
        with TemporaryDirectory() as workdir:
            try:
                async with store_url(store, Path(workdir)) as url:
                    await bench(f"aos-{store}", url, args.rate, args.duration, args.connections)
            except LookupError as exc:
                print(f"skipping {store}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
