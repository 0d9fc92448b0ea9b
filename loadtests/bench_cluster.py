"""Forwarding overhead: the same requests sent to a namespace's owner node and through another.

    python -m loadtests.bench_cluster                     # the full run (make bench-cluster)
    python -m loadtests.bench_cluster --smoke --store sqlite   # seconds (the e2e test)

Two ``aos serve`` nodes, ``a`` and ``b``, over one store (a fresh PostgreSQL
database by default, started through ``scripts/testenv/up`` unless
``AOS_TEST_POSTGRES_URL`` is set; or one SQLite file both open). Before
measuring, both must report the ring the harness computes itself
(``sharding.HashRing``), and the namespace is one that ring gives to ``a``.
Each scenario then runs twice with the same client: entering at ``a``
(system ``aos-owner``) and entering at ``b``, which forwards every request to
``a`` (system ``aos-forwarded``):

* ``status``: ``GET /api/v1/jobs/{id}/status``, closed loop with ``--clients``
  connections for ``--seconds`` — requests/s, p50, p99, and the CPU seconds of
  the entry node (and of both nodes) per 1,000 requests;
* ``append-sse``: one producer appending small chunks at a fixed rate and one
  SSE consumer, both on the entry node — publish→receive p50/p99 (the
  machinery of ``make bench``: ``loadtests/bench``);
* ``raw-download``: one output (64 MiB; PUT once) read with ``curl`` from
  ``GET …/output/raw`` a few times — MiB/s (median) and entry-node CPU per GiB.

Every scenario also reports ``forwarded_requests``: how much the entry node's
``aos_forwarded_requests_total{outcome="forwarded"}`` grew meanwhile (zero at
the owner; at least one per request through ``b``). Every figure is one JSON
line on stdout; the ratios forwarded ÷ owner follow as JSON lines with
``"unit": "ratio"`` and, for people, as a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from sharding import HashRing, Member

from .bench.__main__ import ensure_postgres
from .bench.scenarios import Results, _delivery_run, closed_loop
from .bench.systems import System, _request, cpu_seconds, process_rss
from .bench_large_output import MIB, curl, make_file
from .bench_store import store_url
from .client import Connection, Response
from .harness import AosProcess, emit

ADMIN = "bench-admin-token"
SECRET = "bench-cluster-secret"
OWNER, FORWARDED = "aos-owner", "aos-forwarded"
GIB = 1024 * MIB
_FORWARDED = re.compile(rb'^aos_forwarded_requests_total\{outcome="forwarded"\} (\S+)$', re.M)


@dataclass(frozen=True, slots=True)
class Sizes:
    seconds: float  # per measured run of status and append-sse
    clients: int  # connections of the status closed loop
    warmup: float  # seconds of unmeasured status calls before each run
    sse_rate: float  # chunks/s of the append-sse producer
    download_mib: int  # size of the raw-download output
    downloads: int  # measured downloads per entry node
    streams: int  # idle SSE streams of the idle-streams scenario
    payload: int = 128  # bytes per appended chunk


FULL = Sizes(
    seconds=10.0,
    clients=32,
    warmup=2.0,
    sse_rate=100.0,
    download_mib=64,
    downloads=5,
    streams=3000,
)
SMOKE = Sizes(
    seconds=1.0, clients=4, warmup=0.3, sse_rate=20.0, download_mib=4, downloads=2, streams=50
)


def _discard(system: str, scenario: str, metric: str, value: float | int, unit: str) -> None:
    """Where warm-up figures go."""


async def _call(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> Response:
    conn = Connection("127.0.0.1", port)
    try:
        return await conn.request(method, path, headers, body)
    finally:
        conn.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Cluster:
    """Nodes ``a`` and ``b`` over one store, every member listed in ``AOS_PEERS``."""

    def __init__(self, storage_url: str, workdir: Path) -> None:
        self.nodes: dict[str, AosProcess] = {}
        for node_id in ("a", "b"):
            home = workdir / node_id
            home.mkdir()
            self.nodes[node_id] = AosProcess(storage_url, home)
        urls = {node_id: f"http://127.0.0.1:{n.port}" for node_id, n in self.nodes.items()}
        peers = ",".join(f"{node_id}={url}" for node_id, url in urls.items())
        for node_id, node in self.nodes.items():
            node.env = {
                "AOS_ADMIN_TOKEN": ADMIN,
                "AOS_NODE_ID": node_id,
                "AOS_PEERS": peers,
                "AOS_CLUSTER_SECRET": SECRET,
            }
        #: the ring the nodes compute when both are up (weight 1, default vnodes)
        self.ring = HashRing(Member(node_id, url) for node_id, url in urls.items())

    def start(self) -> None:
        for node in self.nodes.values():  # one after the other: each migrates the store
            node.start()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes.values() if n.process is not None]

    async def agree(self, within: float = 30.0) -> None:
        """Wait until both nodes report this ring in ``GET /readyz``."""
        deadline = time.monotonic() + within
        seen: dict[str, object] = {}
        while time.monotonic() < deadline:
            for node_id, node in self.nodes.items():
                r = await _call(node.port, "GET", "/readyz", {})
                seen[node_id] = orjson.loads(r.body).get("cluster") if r.status == 200 else r.status
            if all(
                isinstance(v, dict) and v["ring"] == self.ring.digest and v["members"] == 2
                for v in seen.values()
            ):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the nodes do not agree on ring {self.ring.digest}: {seen}")

    def namespace_of(self, node_id: str) -> str:
        """A namespace the ring gives to ``node_id``."""
        return next(
            name
            for name in (f"bench-{i}" for i in itertools.count())
            if self.ring.owner(name).id == node_id
        )


@dataclass(frozen=True, slots=True)
class Tenant:
    namespace: str
    producer: str  # bearer tokens of the namespace's keys
    consumer: str

    @classmethod
    async def create(cls, port: int, namespace: str, jobs: list[str]) -> Tenant:
        """The namespace, a producer and a consumer key, and ``jobs`` (through ``port``)."""
        admin = {**_bearer(ADMIN), "Content-Type": "application/json"}
        r = await _call(port, "PUT", f"/api/v1/namespaces/{namespace}", admin, b"{}")
        if r.status not in (200, 201):
            raise RuntimeError(f"PUT namespace answered {r.status} {r.body!r}")
        keys: dict[str, str] = {}
        for role in ("producer", "consumer"):
            body = orjson.dumps({"role": role})
            r = await _call(port, "POST", f"/api/v1/namespaces/{namespace}/keys", admin, body)
            if r.status != 201:
                raise RuntimeError(f"POST keys answered {r.status} {r.body!r}")
            keys[role] = orjson.loads(r.body)["key"]
        tenant = cls(namespace, keys["producer"], keys["consumer"])
        for job in jobs:
            body = orjson.dumps({"jobId": job})
            headers = {**_bearer(tenant.producer), "Content-Type": "application/json"}
            r = await _call(port, "POST", "/api/v1/jobs", headers, body)
            if r.status != 201:
                raise RuntimeError(f"submit answered {r.status} {r.body!r}")
        return tenant


class Entry(System):
    """The cluster as a client sees it through one node (for ``loadtests/bench``)."""

    def __init__(self, name: str, node: AosProcess, cluster: Cluster, tenant: Tenant) -> None:
        self.name = name
        self.node = node
        self.port = node.port
        self.cluster = cluster
        self.tenant = tenant

    def subscribe_request(self, channel: str) -> bytes:
        return _request(
            "GET",
            f"/api/v1/jobs/{channel}/stream?from=latest",
            {**_bearer(self.tenant.consumer), "Accept": "text/event-stream"},
        )

    async def publish(self, conn: Connection, channel: str, payload: bytes) -> None:
        r = await conn.request(
            "POST",
            f"/api/v1/jobs/{channel}/output",
            {**_bearer(self.tenant.producer), "Content-Type": "text/plain"},
            payload,
        )
        if r.status not in (200, 201):
            raise RuntimeError(f"{self.name}: append answered {r.status} {r.body!r}")

    def pids(self) -> list[int]:
        """Both nodes: a forwarded request costs CPU on each."""
        return self.cluster.pids()


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds of the entry node and of the cluster, and the entry's forwards."""

    entry_cpu: float
    cluster_cpu: float
    forwarded: float

    @classmethod
    async def of(cls, entry: Entry) -> Usage:
        r = await _call(entry.port, "GET", "/metrics", {})
        if r.status != 200:
            raise RuntimeError(f"{entry.name}: /metrics answered {r.status}")
        match = _FORWARDED.search(r.body)
        return cls(
            entry.node.cpu_seconds(),
            cpu_seconds(entry.cluster.pids()),
            float(match[1]) if match else 0.0,
        )

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.entry_cpu - before.entry_cpu,
            self.cluster_cpu - before.cluster_cpu,
            self.forwarded - before.forwarded,
        )


async def status(record: Results, entry: Entry, job: str, sizes: Sizes) -> None:
    path = f"/api/v1/jobs/{job}/status"
    headers = _bearer(entry.tenant.consumer)
    done = 0

    async def connect() -> Connection:
        return Connection("127.0.0.1", entry.port)

    async def call(conn: Connection, _: int) -> None:
        nonlocal done
        r = await conn.request("GET", path, headers)
        if r.status != 200:
            raise RuntimeError(f"{entry.name}: GET {path} answered {r.status} {r.body[:200]!r}")
        done += 1

    warm = Results(_discard)
    await closed_loop(
        warm, entry.name, "status", connect, call, sizes.clients, sizes.warmup, [], ""
    )
    done = 0
    before = await Usage.of(entry)
    await closed_loop(
        record,
        entry.name,
        "status",
        connect,
        call,
        sizes.clients,
        sizes.seconds,
        entry.pids(),
        "req/s",
    )
    used = await Usage.of(entry) - before
    record(entry.name, "status", "requests", done, "requests")
    record(entry.name, "status", "forwarded_requests", used.forwarded, "requests")
    per_1k = 1000 / max(done, 1)
    record(entry.name, "status", "entry_cpu_per_1k", used.entry_cpu * per_1k, "s")
    record(entry.name, "status", "cluster_cpu_per_1k", used.cluster_cpu * per_1k, "s")


async def append_sse(record: Results, entry: Entry, job: str, sizes: Sizes) -> None:
    total = max(1, int(sizes.sse_rate * sizes.seconds))
    schedule = [(i / sizes.sse_rate, job) for i in range(total)]
    before = await Usage.of(entry)
    await _delivery_run(record, entry, "append-sse", [job], schedule, 4, sizes.payload, False)
    used = await Usage.of(entry) - before
    record(entry.name, "append-sse", "forwarded_requests", used.forwarded, "requests")


async def raw_download(record: Results, entry: Entry, job: str, size: int, sizes: Sizes) -> None:
    url = f"http://127.0.0.1:{entry.port}/api/v1/jobs/{job}/output/raw"
    args = (
        *("-H", f"Authorization: Bearer {entry.tenant.consumer}"),
        *("-H", "Accept-Encoding: identity", "-o", "/dev/null", url),
    )

    def download() -> float:
        moved, seconds, _ = curl(*args)
        if moved != size:
            raise RuntimeError(f"{entry.name}: downloaded {moved} of {size} bytes")
        return seconds

    before = await Usage.of(entry)
    download()  # warm-up: connections, caches
    cpu = entry.node.cpu_seconds()
    seconds = statistics.median([download() for _ in range(sizes.downloads)])
    entry_cpu = entry.node.cpu_seconds() - cpu
    used = await Usage.of(entry) - before
    record(entry.name, "raw-download", "throughput", size / MIB / seconds, "MiB/s")
    record(entry.name, "raw-download", "seconds", seconds, "s")
    per_gib = entry_cpu / (size * sizes.downloads / GIB)
    record(entry.name, "raw-download", "entry_cpu_per_gib", per_gib, "s")
    record(entry.name, "raw-download", "forwarded_requests", used.forwarded, "requests")


async def idle_streams(record: Results, entry: Entry, job: str, sizes: Sizes) -> None:
    """Memory of idle SSE streams through ``entry``: on it, and on the owner (node a)."""
    owner = entry.cluster.nodes["a"]
    nodes = {"entry": entry.node, "owner": owner}

    def rss() -> dict[str, int]:
        return {k: process_rss([n.process.pid]) for k, n in nodes.items() if n.process}

    request = entry.subscribe_request(job)
    before = rss()
    streams = []
    for i in range(sizes.streams):
        reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
        writer.write(request)
        streams.append((reader, writer))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    for reader, _ in streams:  # every stream answered: it is open at the owner
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{entry.name}: stream answered {head[:60]!r}")
    await asyncio.sleep(1.0)
    after = rss()
    for _, writer in streams:
        writer.close()
    for node, grown in ((k, after[k] - before[k]) for k in after):
        per_stream = grown / sizes.streams / 1024
        record(entry.name, "idle-streams", f"{node}_rss_per_stream", per_stream, "KiB")


RATIOS = (
    ("status", ("throughput", "p50", "p99", "entry_cpu_per_1k", "cluster_cpu_per_1k")),
    ("append-sse", ("p50", "p99")),
    ("raw-download", ("throughput", "entry_cpu_per_gib")),
)


def summarise(record: Results) -> None:
    """Each figure through ``b`` as a ratio to the same figure at the owner."""
    rows: list[tuple[str, str, float]] = []
    for scenario, metric in ((s, m) for s, metrics in RATIOS for m in metrics):
        forwarded = record.get(FORWARDED, scenario, metric)
        owner = record.get(OWNER, scenario, metric)
        if forwarded is None or not owner:
            continue
        ratio = forwarded / owner
        record(FORWARDED, scenario, f"{metric}_vs_owner", ratio, "ratio")
        rows.append((scenario, metric, ratio))
    print("\nsummary (forwarded ÷ owner):", file=sys.stderr)
    for scenario, metric, ratio in rows:
        owner_value = record.get(OWNER, scenario, metric)
        forwarded_value = record.get(FORWARDED, scenario, metric)
        print(
            f"  {scenario:13} {metric:20} {owner_value:>12} {forwarded_value:>12} {ratio:8.2f}",
            file=sys.stderr,
        )


async def run(store: str, sizes: Sizes, workdir: Path) -> None:
    record = Results(emit)
    async with store_url(store, workdir) as url:
        cluster = Cluster(url, workdir)
        try:
            cluster.start()
            await cluster.agree()
            namespace = cluster.namespace_of("a")
            emit("bench", "setup", "store", store, "")
            emit("bench", "setup", "namespace", namespace, "")
            entries = [
                (OWNER, cluster.nodes["a"]),
                (FORWARDED, cluster.nodes["b"]),
            ]
            jobs = ["status-probe", "download", "idle", *(f"sse-{name}" for name, _ in entries)]
            tenant = await Tenant.create(cluster.nodes["a"].port, namespace, jobs)
            systems = [Entry(name, node, cluster, tenant) for name, node in entries]

            # First, while neither process has held many connections yet (freed
            # memory is reused, so a second run would measure less): idle streams
            # through b — the proxy's memory on b, the stream's on the owner a.
            await idle_streams(record, systems[1], "idle", sizes)
            for entry in systems:
                await status(record, entry, "status-probe", sizes)
            for entry in systems:
                await append_sse(record, entry, f"sse-{entry.name}", sizes)

            size = sizes.download_mib * MIB
            data = workdir / "output.bin"
            sha256 = make_file(data, size)
            _, _, body = curl(
                *("-H", f"Authorization: Bearer {tenant.producer}"),
                *("-H", "Content-Type: application/octet-stream", "-T", str(data)),
                f"http://127.0.0.1:{cluster.nodes['a'].port}/api/v1/jobs/download/output",
            )
            version = orjson.loads(body)
            if version["sha256"] != sha256 or version["size"] != size:
                raise RuntimeError(f"stored {version} does not match the file ({sha256})")
            data.unlink()
            emit("bench", "setup", "download_size", size, "bytes")
            for entry in systems:
                await raw_download(record, entry, "download", size, sizes)
        finally:
            cluster.stop()
    summarise(record)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="about a second per scenario")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--seconds", type=float, help="per run of status and append-sse")
    parser.add_argument("--clients", type=int, help="connections of the status closed loop")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.seconds is not None:
        sizes = replace(sizes, seconds=args.seconds)
    if args.clients is not None:
        sizes = replace(sizes, clients=args.clients)
    if args.store == "postgresql":
        ensure_postgres()
    with tempfile.TemporaryDirectory(prefix="aos-bench-cluster-") as tmp:
        await run(args.store, sizes, Path(tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import uvloop

    sys.exit(uvloop.run(main()))
