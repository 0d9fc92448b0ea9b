from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ..stores import DURABLE, STORES
from ..support import Server, Tenant

_names = itertools.count()


@pytest.fixture(params=DURABLE)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty store of each durable kind (the e2e tests that take it run once per store)."""
    async with STORES[request.param](tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``aos serve`` on SQLite for the e2e tests; each test has its own namespace."""
    workdir: Path = tmp_path_factory.mktemp("aos-e2e")
    running = Server(f"sqlite:///{workdir}/aos.db", workdir).start()
    yield running
    running.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def tenant(client: httpx.AsyncClient) -> Tenant:
    return await Tenant(client, f"t{next(_names)}").setup()


@pytest.fixture
async def other_tenant(client: httpx.AsyncClient) -> Tenant:
    return await Tenant(client, f"o{next(_names)}").setup()
