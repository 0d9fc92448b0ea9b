"""Clusters of ``aos serve`` processes on loopback over one PostgreSQL database."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sharding import HashRing, Member

from ..receiver import Receiver
from ..stores import STORES
from ..support import ADMIN_TOKEN, Server, auth, free_port

SECRET = "cluster-test-secret"
_names = itertools.count()


@dataclass
class Cluster:
    storage_url: str
    workdir: Path
    nodes: dict[str, Server] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, node_id: str) -> str:
        return f"http://127.0.0.1:{self.ports[node_id]}"

    def ring(self, ids: Iterable[str]) -> HashRing:
        """The ring the nodes should agree on when ``ids`` are up."""
        return HashRing(Member(i, self.url(i)) for i in ids)

    def start(self, node_id: str, peers: Iterable[str]) -> Server:
        self.ports.setdefault(node_id, free_port())
        members = sorted({*peers, node_id})
        for member in members:
            self.ports.setdefault(member, free_port())
        server = Server(
            self.storage_url,
            self.workdir,
            port=self.ports[node_id],
            env={
                "AOS_NODE_ID": node_id,
                "AOS_PEERS": ",".join(f"{m}={self.url(m)}" for m in members),
                "AOS_CLUSTER_SECRET": SECRET,
                "AOS_CLUSTER_CHECK_INTERVAL": "0.25",
                "AOS_CLUSTER_RECHECK": "0.5",
                "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                "AOS_WEBHOOK_LEASE": "2",  # a dead node's claims come back quickly
                "AOS_WEBHOOK_POLL": "0.2",
            },
        )
        self.nodes[node_id] = server.start()
        return server

    async def agree(self, ids: Iterable[str], seconds: float = 20) -> HashRing:
        """Wait until every node of ``ids`` reports the ring of exactly ``ids``."""
        expected = self.ring(ids)
        seen: dict[str, object] = {}
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                async with asyncio.timeout(seconds):
                    while True:
                        for node_id in [m.id for m in expected.members]:
                            r = await client.get(f"{self.url(node_id)}/readyz")
                            seen[node_id] = r.json()["cluster"]["ring"]
                        if all(v == expected.digest for v in seen.values()):
                            return expected
                        await asyncio.sleep(0.1)
            except TimeoutError:
                pytest.fail(f"the nodes do not agree on ring {expected.digest}: {seen}")

    def namespaces_owned_by(self, node_id: str, ring: HashRing, count: int = 1) -> list[str]:
        found: list[str] = []
        for i in itertools.count():
            name = f"c{next(_names)}-{i}"
            if ring.owner(name).id == node_id:
                found.append(name)
                if len(found) == count:
                    return found
        raise AssertionError  # unreachable

    def stop(self) -> None:
        for server in self.nodes.values():
            server.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Three nodes a, b, c over one PostgreSQL database, agreeing on their ring."""
    async with STORES["postgresql"](tmp_path) as url:
        running = Cluster(url, tmp_path)
        try:
            for node_id in "abc":
                running.start(node_id, "abc")
            await running.agree("abc")
            yield running
        finally:
            running.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


def admin() -> dict[str, str]:
    return auth(ADMIN_TOKEN)
