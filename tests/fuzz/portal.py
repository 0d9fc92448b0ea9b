"""The in-process app on any store, driven from synchronous (Hypothesis) tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from storage_adapters import adapter_for

from ..api.conftest import running_app
from ..stores import STORES


class SyncClient:
    """A client of the app whose calls block: the app, its lifespan and the
    store's driver run in an event loop of their own (a portal)."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.client = client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            return await self.client.request(method, url, **kwargs)

        return self.portal.call(send)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)


@contextmanager
def app_on(store: str, tmp_path: Path, **settings: object) -> Iterator[SyncClient]:
    """The app on a fresh ``store`` (a name of tests/stores.py; skipped, or
    failed under CI, when its server is missing), webhooks and janitor off."""
    with start_blocking_portal() as portal, ExitStack() as stack:
        url = stack.enter_context(portal.wrap_async_context_manager(STORES[store](tmp_path)))
        app = running_app(adapter_for(url), webhooks=False, janitor=False, **settings)
        client = stack.enter_context(portal.wrap_async_context_manager(app))
        yield SyncClient(portal, client)
