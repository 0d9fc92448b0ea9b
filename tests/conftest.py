from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage_adapters import StorageAdapter, adapter_for

from .stores import STORES


@pytest.fixture(params=sorted(STORES))
def store_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def store_url(store_name: str, tmp_path: Path) -> AsyncIterator[str]:
    async with STORES[store_name](tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StorageAdapter]:
    opened = adapter_for(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
