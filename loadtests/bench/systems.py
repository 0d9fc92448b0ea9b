"""The systems under test, each behind the same small interface.

A system knows how to make a channel, the bytes of one SSE subscribe request,
one publish request, and which processes to weigh for memory. AOS runs as an
``aos serve`` child on SQLite or PostgreSQL; Nchan and Centrifugo are the
daemons of ``loadtests/peers`` (installed and started by their scripts).
"""

from __future__ import annotations

import abc
import json
import os
import subprocess
import urllib.parse
from contextlib import AsyncExitStack
from pathlib import Path

import orjson

from loadtests.client import Connection
from loadtests.harness import AosProcess, database_url, exports

__all__ = ["AOS", "Centrifugo", "Nchan", "System", "process_rss", "start_peer"]

PEERS = Path(__file__).resolve().parents[1] / "peers"
ADMIN = "bench-admin-token"
NAMESPACE = "bench"


def start_peer(name: str) -> dict[str, str]:
    """Install (if needed) and start a fresh instance of a peer; its ``export`` lines.

    A fresh process, like the fresh ``aos serve`` each AOS run gets: memory
    grown by an earlier run would hide the cost of new connections.
    """
    subprocess.run(["bash", str(PEERS / f"{name}.sh"), "start"], check=True)
    subprocess.run(["bash", str(PEERS / f"{name}.sh"), "restart"], check=True)
    out = subprocess.run(
        ["bash", str(PEERS / f"{name}.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    return exports(out)


def pid_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (nginx's workers)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def process_rss(pids: list[int]) -> int:
    """Resident memory of the processes, in bytes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class System(abc.ABC):
    name: str
    port: int

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def make_channels(self, names: list[str]) -> None:  # noqa: B027 - optional
        """Channels exist on first use, unless the system says otherwise."""

    @abc.abstractmethod
    def subscribe_request(self, channel: str) -> bytes:
        """The whole HTTP request that opens an SSE stream of ``channel``."""

    @abc.abstractmethod
    async def publish(self, conn: Connection, channel: str, payload: bytes) -> None:
        """Publish ``payload`` to ``channel``; returns once the server accepted it."""

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """The server's processes, for memory and CPU."""


class AOS(System):
    """``aos serve`` on a fresh SQLite file or PostgreSQL database."""

    def __init__(self, store: str, workdir: Path) -> None:
        self.store = store
        self.name = f"aos-{store}"
        self.workdir = workdir
        self.auth = {"Authorization": f"Bearer {ADMIN}"}
        self._stack = AsyncExitStack()
        self.node: AosProcess | None = None

    async def __aenter__(self) -> AOS:
        if self.store == "sqlite":
            url = f"sqlite:///{self.workdir}/bench.db"
        else:
            url = await self._stack.enter_async_context(database_url(self.store))
        self.node = AosProcess(url, self.workdir, env={"AOS_ADMIN_TOKEN": ADMIN}).start()
        self._stack.callback(self.node.stop)
        self.port = self.node.port
        conn = Connection("127.0.0.1", self.port)
        try:
            r = await conn.request("PUT", f"/api/v1/namespaces/{NAMESPACE}", self.auth)
            if r.status not in (200, 201):
                raise RuntimeError(f"{self.name}: PUT namespace answered {r.status} {r.body!r}")
        finally:
            conn.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def job_path(self, job: str) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/jobs/{job}"

    async def make_channels(self, names: list[str]) -> None:
        conn = Connection("127.0.0.1", self.port)
        try:
            for name in names:
                body = orjson.dumps({"jobId": name})
                r = await conn.request(
                    "POST",
                    f"/api/v1/namespaces/{NAMESPACE}/jobs",
                    {**self.auth, "Content-Type": "application/json"},
                    body,
                )
                if r.status != 201:
                    raise RuntimeError(f"{self.name}: submit answered {r.status} {r.body!r}")
        finally:
            conn.close()

    def subscribe_request(self, channel: str) -> bytes:
        return _request(
            "GET",
            f"{self.job_path(channel)}/stream?from=latest",
            {**self.auth, "Accept": "text/event-stream"},
        )

    async def publish(self, conn: Connection, channel: str, payload: bytes) -> None:
        r = await conn.request(
            "POST",
            f"{self.job_path(channel)}/output",
            {**self.auth, "Content-Type": "text/plain"},
            payload,
        )
        if r.status not in (200, 201):
            raise RuntimeError(f"{self.name}: append answered {r.status} {r.body!r}")

    def pids(self) -> list[int]:
        assert self.node is not None
        assert self.node.process is not None
        return [self.node.process.pid]


class Nchan(System):
    """nginx + nchan: ``POST /pub/<ch>``, ``GET /sub/<ch>`` (eventsource)."""

    name = "nchan"

    async def __aenter__(self) -> Nchan:
        env = start_peer("nchan")
        self.port = urllib.parse.urlsplit(env["AOS_BENCH_NCHAN_URL"]).port or 80
        self.pidfile = Path(env["AOS_BENCH_NCHAN_PIDFILE"])
        return self

    def subscribe_request(self, channel: str) -> bytes:
        return _request("GET", f"/sub/{channel}", {"Accept": "text/event-stream"})

    async def publish(self, conn: Connection, channel: str, payload: bytes) -> None:
        r = await conn.request("POST", f"/pub/{channel}", {"Content-Type": "text/plain"}, payload)
        if r.status not in (201, 202):
            raise RuntimeError(f"nchan: publish answered {r.status} {r.body!r}")

    def pids(self) -> list[int]:
        return pid_tree(int(self.pidfile.read_text().split()[0]))


class Centrifugo(System):
    """Centrifugo's unidirectional SSE; publish through its HTTP API."""

    name = "centrifugo"

    async def __aenter__(self) -> Centrifugo:
        env = start_peer("centrifugo")
        self.port = urllib.parse.urlsplit(env["AOS_BENCH_CENTRIFUGO_URL"]).port or 80
        self.pidfile = Path(env["AOS_BENCH_CENTRIFUGO_PIDFILE"])
        self.key = env["AOS_BENCH_CENTRIFUGO_API_KEY"]
        self.namespace = env.get("AOS_BENCH_CENTRIFUGO_NAMESPACE", "bench")
        return self

    def subscribe_request(self, channel: str) -> bytes:
        connect = json.dumps({"subs": {f"{self.namespace}:{channel}": {}}}, separators=(",", ":"))
        query = urllib.parse.urlencode({"cf_connect": connect})
        return _request("GET", f"/connection/uni_sse?{query}", {"Accept": "text/event-stream"})

    async def publish(self, conn: Connection, channel: str, payload: bytes) -> None:
        body = orjson.dumps({"channel": f"{self.namespace}:{channel}", "data": payload.decode()})
        r = await conn.request(
            "POST",
            "/api/publish",
            {"X-API-Key": self.key, "Content-Type": "application/json"},
            body,
        )
        if r.status != 200 or b'"error"' in r.body:
            raise RuntimeError(f"centrifugo: publish answered {r.status} {r.body!r}")

    def pids(self) -> list[int]:
        return [int(self.pidfile.read_text().split()[0])]
