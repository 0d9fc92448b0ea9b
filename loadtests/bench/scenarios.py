"""The four scenarios of ``make bench``, each run the same way against every system."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from loadtests.client import Connection
from loadtests.harness import percentiles

from .sse import Subscriber, Tally, open_subscribers
from .systems import ADMIN, AOS, NAMESPACE, System, cpu_seconds, process_rss

__all__ = ["Plan", "Results", "fanout", "many_jobs", "status", "submit", "submit_ceiling"]


@dataclass(frozen=True, slots=True)
class Plan:
    fanout: tuple[int, ...]  # subscribers on one channel, one run each
    fanout_messages: int
    fanout_rate: float  # messages/s from the one publisher
    many_jobs: int  # channels with one subscriber each
    many_rate: float  # messages/s over all channels
    many_seconds: float
    closed_seconds: float  # status and submit
    connections: int  # client connections for status and submit
    payload: int = 128  # bytes per published message


SMOKE = Plan((20,), 10, 20.0, 20, 100.0, 1.0, 1.0, 8)
FULL = Plan((1_000, 10_000), 40, 10.0, 1_000, 1_000.0, 10.0, 10.0, 32)


class Results:
    """Every figure, printed as a JSON line as it comes, kept for the summary."""

    def __init__(self, emit: Callable[[str, str, str, float | int, str], None]) -> None:
        self._emit = emit
        self.values: dict[tuple[str, str, str], float] = {}

    def __call__(self, system: str, scenario: str, metric: str, value: float, unit: str) -> None:
        value = round(value, 3) if isinstance(value, float) else value
        self.values[(system, scenario, metric)] = value
        self._emit(system, scenario, metric, value, unit)

    def get(self, system: str, scenario: str, metric: str) -> float | None:
        return self.values.get((system, scenario, metric))


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _payload(mark: bytes, size: int) -> bytes:
    return mark + b"x" * max(0, size - len(mark))


class Publishers:
    """A pool of keep-alive connections for publishing."""

    def __init__(self, port: int, size: int) -> None:
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(Connection("127.0.0.1", port))

    async def publish(self, system: System, channel: str, payload: bytes) -> None:
        conn = await self._idle.get()
        try:
            await system.publish(conn, channel, payload)
        except BaseException:
            conn.close()
            raise
        finally:
            self._idle.put_nowait(conn)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


async def _warm_up(
    system: System, pool: Publishers, subs: list[Subscriber], channels: list[str], within: float
) -> None:
    """Publish warm-up messages until every subscriber has received one.

    Nchan answers ``200`` before its worker has registered the subscriber, and
    a message in between is not delivered to it (live-only semantics); a
    second warm-up reaches it. Measuring starts only once all are in.
    """
    deadline = time.monotonic() + within
    n = 0
    while True:
        cold = {ch for ch, sub in zip(channels, subs, strict=True) if not sub.warm}
        if not cold:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name}: {len(cold)} subscribers got no warm-up message")
        n += 1
        await asyncio.gather(*(pool.publish(system, ch, _payload(b"w=%d;" % n, 16)) for ch in cold))
        end = time.monotonic() + 1.0
        while time.monotonic() < end and any(not sub.warm for sub in subs):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _delivery_run(
    record: Results,
    system: System,
    scenario: str,
    channels: list[str],
    schedule: list[tuple[float, str]],
    pool_size: int,
    payload: int,
    memory: bool,
) -> None:
    """Subscribe once per channel entry, warm up, publish on ``schedule``, measure.

    ``memory``: report the server's RSS growth per connection. Only fan-out
    does: it runs first on a fresh server, while later scenarios reuse memory
    that earlier ones freed, which hides (or even inverts) their growth.
    """
    tally = Tally()
    pids = system.pids()
    rss_before = process_rss(pids)
    requests = [system.subscribe_request(ch) for ch in channels]
    subs = await open_subscribers(system.port, requests, tally)
    pool = Publishers(system.port, pool_size)
    try:
        await _warm_up(system, pool, subs, channels, within=60)
        await asyncio.sleep(0.2)  # let the warm-up settle
        if memory:
            rss_after = process_rss(pids)
            per_connection = (rss_after - rss_before) / len(subs) / 1024
            record(system.name, scenario, "rss_per_connection", per_connection, "KiB")
        per_channel = len(subs) // len(set(channels))
        expected = len(schedule) * per_channel
        tally.reset(expected)
        server_cpu, client_cpu = cpu_seconds(pids), _client_cpu()
        start = time.monotonic()
        first_ns = time.monotonic_ns()
        failures: list[BaseException] = []

        async def send(channel: str) -> None:
            try:
                await pool.publish(
                    system, channel, _payload(b"t=%d;" % time.monotonic_ns(), payload)
                )
            except Exception as exc:  # counted; the run goes on
                failures.append(exc)

        tasks = []
        for at, channel in schedule:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(channel)))
        await asyncio.gather(*tasks)
        with contextlib.suppress(TimeoutError):  # what is missing then counts as lost
            await asyncio.wait_for(tally.complete.wait(), 30)
        delivered = len(tally.latencies_ns)
        window = max(tally.last_ns - first_ns, 1) / 1e9
        server_cpu = cpu_seconds(pids) - server_cpu
        client_cpu = _client_cpu() - client_cpu
        elapsed = time.monotonic() - start
        record(system.name, scenario, "delivered_per_s", delivered / window, "events/s")
        record(system.name, scenario, "lost", expected - delivered, "events")
        record(system.name, scenario, "publish_errors", len(failures), "requests")
        lat = percentiles([ns / 1e6 for ns in tally.latencies_ns])
        for q in ("p50", "p99"):
            record(system.name, scenario, q, lat.get(q, float("nan")), "ms")
        record(system.name, scenario, "server_cpu", server_cpu / elapsed, "cores")
        record(system.name, scenario, "client_cpu", client_cpu / elapsed, "cores")
        if failures:
            raise RuntimeError(f"{system.name} {scenario}: {failures[0]}")
    finally:
        pool.close()
        for sub in subs:
            sub.close()
        await asyncio.sleep(0.5)  # let the server notice the disconnects


async def fanout(record: Results, system: System, plan: Plan, subscribers: int) -> None:
    """One publisher, ``subscribers`` SSE streams on one channel."""
    channel = f"fanout-{uuid.uuid4().hex[:10]}"
    await system.make_channels([channel])
    schedule = [(i / plan.fanout_rate, channel) for i in range(plan.fanout_messages)]
    await _delivery_run(
        record,
        system,
        f"fanout-{subscribers}",
        [channel] * subscribers,
        schedule,
        1,
        plan.payload,
        memory=True,
    )


async def many_jobs(record: Results, system: System, plan: Plan) -> None:
    """``plan.many_jobs`` channels, one subscriber each, messages round-robin."""
    tag = uuid.uuid4().hex[:8]
    channels = [f"many-{tag}-{i}" for i in range(plan.many_jobs)]
    await system.make_channels(channels)
    total = int(plan.many_rate * plan.many_seconds)
    schedule = [(i / plan.many_rate, channels[i % len(channels)]) for i in range(total)]
    await _delivery_run(
        record,
        system,
        f"many-jobs-{plan.many_jobs}",
        channels,
        schedule,
        32,
        plan.payload,
        memory=False,
    )


async def closed_loop(
    record: Results,
    system: str,
    scenario: str,
    connect: Callable[[], Awaitable[Any]],
    call: Callable[[Any, int], Awaitable[None]],
    connections: int,
    seconds: float,
    pids: list[int],
    unit: str,
) -> None:
    """``connections`` clients, each calling back to back for ``seconds``."""
    clients = [await connect() for _ in range(connections)]
    latencies: list[float] = []
    counter = iter(range(1 << 62))
    server_cpu, client_cpu = cpu_seconds(pids), _client_cpu()
    start = time.monotonic()
    stop = start + seconds

    async def worker(client: Any) -> None:
        while (t0 := time.monotonic()) < stop:
            await call(client, next(counter))
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.monotonic() - start
    for client in clients:
        closing = client.close()
        if asyncio.iscoroutine(closing):
            await closing
    lat = percentiles([s * 1000 for s in latencies])
    record(system, scenario, "throughput", len(latencies) / elapsed, unit)
    record(system, scenario, "p50", lat["p50"], "ms")
    record(system, scenario, "p99", lat["p99"], "ms")
    if pids:
        record(system, scenario, "server_cpu", (cpu_seconds(pids) - server_cpu) / elapsed, "cores")
    record(system, scenario, "client_cpu", (_client_cpu() - client_cpu) / elapsed, "cores")


async def status(
    record: Results,
    system: str,
    port: int,
    path: str,
    headers: dict[str, str],
    plan: Plan,
    pids: list[int],
) -> None:
    """``GET`` one small JSON document, as fast as the connections allow."""

    async def connect() -> Connection:
        return Connection("127.0.0.1", port)

    async def call(conn: Connection, _: int) -> None:
        r = await conn.request("GET", path, headers)
        if r.status != 200:
            raise RuntimeError(f"{system}: GET {path} answered {r.status} {r.body[:200]!r}")

    await closed_loop(
        record,
        system,
        "status",
        connect,
        call,
        plan.connections,
        plan.closed_seconds,
        pids,
        "req/s",
    )


async def submit(record: Results, system: AOS, plan: Plan) -> None:
    """``POST /api/v1/jobs`` with a new ``jobId`` each time."""
    tag = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}

    async def connect() -> Connection:
        return Connection("127.0.0.1", system.port)

    async def call(conn: Connection, i: int) -> None:
        body = orjson.dumps({"jobId": f"s-{tag}-{i}", "metadata": {"title": "bench"}})
        r = await conn.request("POST", f"/api/v1/namespaces/{NAMESPACE}/jobs", headers, body)
        if r.status != 201:
            raise RuntimeError(f"{system.name}: submit answered {r.status} {r.body[:200]!r}")

    await closed_loop(
        record,
        system.name,
        "submit",
        connect,
        call,
        plan.connections,
        plan.closed_seconds,
        system.pids(),
        "jobs/s",
    )


async def submit_ceiling(record: Results, url: str, plan: Plan, pids: list[int]) -> None:
    """The same number of concurrent clients inserting job rows with bare asyncpg."""
    import asyncpg

    setup = await asyncpg.connect(url)
    await setup.execute(
        "CREATE TABLE IF NOT EXISTS ceiling_jobs (namespace text, job_id text, status text,"
        " metadata jsonb, created_at bigint, PRIMARY KEY (namespace, job_id))"
    )
    await setup.close()
    tag = uuid.uuid4().hex[:8]

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(url)

    async def call(conn: asyncpg.Connection, i: int) -> None:
        await conn.execute(
            "INSERT INTO ceiling_jobs VALUES ($1, $2, 'Queued', $3, $4)",
            NAMESPACE,
            f"s-{tag}-{i}",
            '{"title": "bench"}',
            time.time_ns() // 1000,
        )

    await closed_loop(
        record,
        "asyncpg-insert",
        "submit",
        connect,
        call,
        plan.connections,
        plan.closed_seconds,
        pids,
        "jobs/s",
    )
