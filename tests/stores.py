"""The stores the conformance suite runs against.

Each entry provides the URL of a fresh, empty store for one test (and cleans
it up afterwards). Stores that need a real server find it through an
environment variable; without the server the test is skipped outside CI and
fails under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

StoreURLFactory = Callable[[Path], AbstractAsyncContextManager[str]]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_server(reason: str) -> None:
    """Skip (or, under CI, fail) a test whose server is missing."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def memory(tmp_path: Path) -> AsyncIterator[str]:
    yield "memory://"


@asynccontextmanager
async def sqlite(tmp_path: Path) -> AsyncIterator[str]:
    yield f"sqlite:///{tmp_path}/conformance.db"


STORES: dict[str, StoreURLFactory] = {
    "memory": memory,
    "sqlite": sqlite,
}
