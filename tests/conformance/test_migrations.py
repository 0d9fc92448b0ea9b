"""Schema migrations: versioned, applied once, safe when nodes start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage_adapters import Capability, ConfigurationError, adapter_for

from ..stores import STORES


async def test_migrations_apply_once_even_when_raced(store_name: str, tmp_path: Path) -> None:
    async with STORES[store_name](tmp_path, empty=True) as url:
        checker = adapter_for(url)
        if Capability.EPHEMERAL in checker.capabilities:
            assert await checker.open(migrate=False) == []
            await checker.close()
            return
        with pytest.raises(ConfigurationError, match="aos migrate"):
            await checker.open(migrate=False)
        nodes = [adapter_for(url) for _ in range(3)]
        applied = await asyncio.gather(*(node.open(migrate=True) for node in nodes))
        try:
            flat = sorted(v for versions in applied for v in versions)
            assert flat == list(range(1, len(flat) + 1)), f"each version once: {applied}"
            assert await checker.open(migrate=False) == []
            await checker.ping()
            await checker.close()
        finally:
            for node in nodes:
                await node.close()
