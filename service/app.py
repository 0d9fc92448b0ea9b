"""The Starlette app factory and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.types import ASGIApp

from sharding import Forwarder, HashRing
from storage_adapters import ConfigurationError, StorageAdapter, StoreUnavailable, adapter_for
from webhooks.client import HttpClient
from webhooks.drainer import Drainer, DrainerMetrics, DrainerSettings
from webhooks.ssrf import AddressGuard

from . import __version__
from .api import AppState
from .audit import AuditLog
from .auth import Authenticator
from .cluster import ClusterLayer, build_membership, rebalance
from .codec import Codec
from .crypto import OVERHEAD, load_data_keys
from .hub import Hub
from .janitor import Janitor
from .jobs import JobService
from .limits import Limits
from .logs import log_event
from .metrics import Metrics
from .middleware import RequestMiddleware
from .namespaces import NamespaceDirectory
from .openapi import build_openapi
from .outputs import OutputReader
from .routes import routes
from .routing import SegmentRouter
from .settings import MAX_CHUNK, Settings

__all__ = ["create_app"]

logger = logging.getLogger("aos.app")


class _App(Starlette):
    """Starlette with one middleware instead of its default three layers: the
    request middleware does error handling too (see service.middleware)."""

    def build_middleware_stack(self) -> ASGIApp:
        metrics, access_log, cluster = self.state.request_middleware
        return RequestMiddleware(cluster(self.router), metrics=metrics, access_log=access_log)


async def _watch_store(state: AppState) -> None:
    """Ping the store periodically: the ``aos_store_up`` gauge and outage logs."""
    up: bool | None = None
    while True:
        try:
            async with asyncio.timeout(max(state.settings.store_check_interval, 1.0)):
                await state.store.ping()
            healthy = True
        except Exception as exc:
            healthy = False
            detail = str(exc)
        if healthy != up:
            state.metrics.store_up.set(1 if healthy else 0)
            if healthy:
                log_event(logger, "store.up", store=state.store.url.scheme)
            else:
                log_event(logger, "store.down", logging.WARNING, detail=detail)
            up = healthy
        await asyncio.sleep(state.settings.store_check_interval)


async def _open_store(store: StorageAdapter, settings: Settings) -> None:
    """Open the store, waiting (with backoff) while it cannot be reached yet.

    A node may start before its database does; it waits up to
    ``store_open_timeout`` rather than exit at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.store_open_timeout
    delay = 0.2
    while True:
        try:
            await store.open(migrate=settings.migrate_on_start)
        except StoreUnavailable as exc:
            if loop.time() + delay > deadline:
                raise
            log_event(logger, "store.waiting", logging.WARNING, detail=str(exc), retryIn=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        log_event(logger, "store.opened", store=store.url.redacted())
        return


def create_app(
    settings: Settings,
    *,
    store: StorageAdapter | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """A ready-to-serve app; the store opens when the app starts (lifespan)."""
    if store is None:
        store = adapter_for(settings.storage_url, pool_size=settings.store_pool_size)
    data_keys = load_data_keys(settings.master_keys, settings.master_key_file)
    # An encrypted chunk is stored with a nonce and a tag more.
    stored_chunk = settings.largest_chunk + (OVERHEAD if data_keys is not None else 0)
    if store.max_chunk_bytes is not None and stored_chunk > store.max_chunk_bytes:
        raise ConfigurationError(
            f"the {store.url.scheme} store writes chunks of at most {store.max_chunk_bytes} "
            f"bytes; lower AOS_MAX_CHUNK_BYTES and AOS_UPLOAD_CHUNK_BYTES "
            f"(now {settings.max_chunk_bytes} and {settings.upload_chunk_bytes}"
            f"{f', and {OVERHEAD} bytes of encryption' if data_keys is not None else ''})"
        )
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    hub = Hub(
        max_events=settings.subscriber_queue_events,
        max_bytes=settings.subscriber_queue_bytes,
    )
    namespaces = NamespaceDirectory(store, ttl=settings.key_cache_seconds, keys=data_keys)
    forwarder = Forwarder(
        settings.node_id,
        secret=settings.cluster_secret,
        connect_timeout=settings.forward_connect_timeout,
        timeout=settings.forward_timeout,
    )
    membership = build_membership(settings, forwarder.client)
    drainer: Drainer | None = None
    if settings.webhooks:
        client = HttpClient(
            AddressGuard(settings.webhook_allow_networks),
            timeout=settings.webhook_timeout,
            user_agent=f"aos-webhooks/{__version__}",
        )
        drainer = Drainer(
            store,
            client,
            DrainerSettings(
                node_id=settings.node_id,
                batch=settings.webhook_batch,
                concurrency=settings.webhook_concurrency,
                per_endpoint=settings.webhook_endpoint_concurrency,
                lease_seconds=settings.webhook_lease,
                poll_interval=settings.webhook_poll,
            ),
            DrainerMetrics(metrics.registry),
            namespaces.hooks,
            shards=membership.owned_shards,
        )
    codec = Codec(
        compression=settings.compression,
        level=settings.compression_level,
        max_chunk=MAX_CHUNK,  # not the settings: chunks stored before a change stay readable
    )
    jobs = JobService(
        store,
        hub,
        metrics,
        namespaces=namespaces,
        codec=codec,
        outputs=OutputReader(
            store,
            codec,
            batch_bytes=settings.read_batch_bytes,
            max_chunk=settings.largest_chunk,
            keys=namespaces,
        ),
        max_versions=settings.max_versions,
        default_retention=settings.default_retention,
        max_version_bytes=settings.max_version_bytes,
        purge_batch=settings.purge_batch,
        output_interval=settings.webhook_output_interval,
        on_deliveries=drainer.wake if drainer is not None else lambda: None,
    )
    audit = AuditLog(
        store,
        namespaces,
        metrics,
        retention=settings.audit_retention,
        flush_interval=settings.audit_flush_interval,
    )
    auth = Authenticator(
        store,
        settings.admin_token,
        settings.key_cache_seconds,
        namespaces=namespaces,
        audit=audit,
        last_used_interval=settings.key_last_used_interval,
        max_token_lifetime=settings.max_token_lifetime,
        token_leeway=settings.token_leeway,
    )
    janitor = (
        Janitor(
            store,
            jobs,
            metrics,
            interval=settings.janitor_interval,
            shards=membership.owned_shards,
            audit=audit,
        )
        if settings.janitor
        else None
    )
    state = AppState(
        settings=settings,
        store=store,
        hub=hub,
        jobs=jobs,
        auth=auth,
        namespaces=namespaces,
        audit=audit,
        limits=Limits(store, metrics, refresh=settings.quota_refresh),
        metrics=metrics,
        openapi=build_openapi(),
        membership=membership,
        drainer=drainer,
    )

    def ring_changed(old: HashRing, new: HashRing) -> None:
        rebalance(membership, hub, old, new)
        metrics.cluster_members.set(len(new))
        metrics.owned_shards.set(len(new.shards_of(membership.me.id)))
        if drainer is not None:
            drainer.wake()  # shards it now owns may have deliveries due

    membership.on_change(ring_changed)
    ring_changed(membership.ring, membership.ring)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await _open_store(store, settings)
        tasks = [
            asyncio.create_task(_watch_store(state), name="aos-store-watch"),
            asyncio.create_task(membership.run(), name="aos-cluster"),
            asyncio.create_task(audit.run(), name="aos-audit"),
        ]
        if drainer is not None:
            tasks.append(asyncio.create_task(drainer.run(), name="aos-webhooks"))
        if janitor is not None:
            tasks.append(asyncio.create_task(janitor.run(), name="aos-janitor"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await audit.flush()
            except Exception as exc:  # the store is going away; say what is lost
                log_event(logger, "audit.lost", logging.WARNING, detail=str(exc))
            await auth.close()
            await jobs.close()
            await forwarder.close()
            if drainer is not None:
                await drainer.client.close()
            hub.close_all()
            await store.close()
            log_event(logger, "store.closed")

    app = _App()
    app.router = SegmentRouter(routes(), lifespan=lifespan)
    app.state.request_middleware = (
        metrics,
        settings.access_log,
        lambda router: ClusterLayer(
            router, membership, forwarder, metrics, max_recorded=settings.max_body_bytes
        ),
    )
    app.state.aos = state
    return app
