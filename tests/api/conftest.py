"""In-process API tests: the app driven through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service import Settings, create_app
from storage_adapters import StorageAdapter

from ..support import ADMIN_TOKEN


@asynccontextmanager
async def running_app(
    store: StorageAdapter | None = None, **settings: object
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client for it."""
    config = Settings(
        storage_url="memory://",
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        access_log=False,
        **settings,
    )  # type: ignore[arg-type]
    app = create_app(config, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aos") as client:
            yield client
