"""The outbox drainer: claim due deliveries, send them, record the outcome.

One drainer runs per node. It claims due rows in batches under a lease (rows
of a node that dies become claimable again when the lease runs out, so every
event is delivered at least once), sends them concurrently over pooled
keep-alive connections, and writes the outcomes back in batches. Only a 2xx
is success. Failures are retried on the namespace's :class:`RetryPolicy`
(``Retry-After`` honoured) until the delivery is dead; a ``410 Gone``
disables the endpoint. Each endpoint (origin) has a concurrency limit and a
circuit breaker, so a failing or slow one cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from storage_adapters import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    StorageAdapter,
    StoreError,
)

from .client import HttpClient, HttpError, Origin, origin_of
from .policy import RetryPolicy
from .signing import signature_header
from .ssrf import BlockedAddress

__all__ = ["Drainer", "DrainerMetrics", "DrainerSettings", "NamespaceHooks"]

logger = logging.getLogger("aos.webhooks")

_LOG_KEEP = 20  # attempts kept in a delivery's log
_RESPONSE_KEEP = 512  # characters of a response body kept in the log
_US = 1_000_000


@dataclass(frozen=True, slots=True)
class NamespaceHooks:
    """What the drainer needs of a namespace: signing secrets and retry policy."""

    secrets: tuple[str, ...]
    policy: RetryPolicy


@dataclass(frozen=True, slots=True)
class DrainerSettings:
    node_id: str
    batch: int = 200
    concurrency: int = 256
    per_endpoint: int = 64
    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    #: consecutive failures that open an endpoint's circuit
    breaker_threshold: int = 5
    #: a response slower than this counts against the circuit even when it
    #: succeeds, so a slow endpoint cannot hold every delivery slot
    slow_seconds: float = 5.0
    breaker_cooldown: float = 30.0
    breaker_max_cooldown: float = 600.0
    stats_interval: float = 10.0


class DrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "aos_webhook_deliveries",
            "Webhook delivery attempts by outcome: succeeded, retry, dead, disabled (410), "
            "deferred (circuit open or endpoint busy, no attempt made), lease_lost.",
            ["outcome"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "aos_webhook_attempt_duration_seconds",
            "Time from sending a webhook to its response (or failure).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
            registry=registry,
        )
        self.pending = Gauge(
            "aos_webhook_outbox_pending",
            "Deliveries waiting in the outbox (this node's shards).",
            registry=registry,
        )
        self.oldest_age = Gauge(
            "aos_webhook_outbox_oldest_age_seconds",
            "How long the most overdue pending delivery has been due.",
            registry=registry,
        )
        self._outcomes = {
            name: self.deliveries.labels(name)
            for name in ("succeeded", "retry", "dead", "disabled", "deferred", "lease_lost")
        }

    def outcome(self, name: str) -> None:
        self._outcomes[name].inc()


@dataclass(slots=True)
class _Lane:
    """The claimed deliveries of one endpoint (origin), and its workers."""

    origin: Origin
    queue: deque[DeliveryRecord] = field(default_factory=deque)
    workers: int = 0


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    opens: int = 0
    open_until: float = 0.0


class Drainer:
    def __init__(
        self,
        store: StorageAdapter,
        client: HttpClient,
        settings: DrainerSettings,
        metrics: DrainerMetrics,
        hooks_for: Callable[[str], Awaitable[NamespaceHooks]],
        shards: Callable[[], Collection[int] | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.hooks_for = hooks_for
        self.shards = shards
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._lanes: dict[Origin, _Lane] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._queued = 0  # claimed and not yet attempted
        self._hook_cache: dict[str, tuple[NamespaceHooks, float]] = {}
        self._breakers: dict[Origin, _Breaker] = {}
        self._endpoints: dict[tuple[str, str], tuple[EndpointRecord | None, float]] = {}
        self._finished: list[DeliveryRecord] = []
        self._finished_ready = asyncio.Event()

    def wake(self) -> None:
        """New deliveries were queued on this node: look now, not at the next poll."""
        self._wakeup.set()

    def endpoint_changed(self, namespace: str, url: str) -> None:
        """An endpoint was enabled or disabled elsewhere: read it again next time."""
        self._endpoints.pop((namespace, url), None)

    def _now_us(self) -> int:
        return int(self.clock() * _US)

    # -- the loops -----------------------------------------------------------

    async def run(self) -> None:
        """Drain until cancelled. Claimed rows left unfinished come back to some
        node when their lease runs out."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._claim_loop(), name="aos-webhooks-claim")
                tasks.create_task(self._finish_loop(), name="aos-webhooks-finish")
                tasks.create_task(self._stats_loop(), name="aos-webhooks-stats")
        finally:
            for worker in list(self._workers):
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)

    async def _claim_loop(self) -> None:
        settings = self.settings
        while True:
            free = settings.concurrency - self._queued
            claimed: list[DeliveryRecord] = []
            if free > 0:
                now = self._now_us()
                try:
                    claimed = await self.store.claim_deliveries(
                        now=now,
                        limit=min(settings.batch, free),
                        owner=settings.node_id,
                        lease_until=now + int(settings.lease_seconds * _US),
                        shards=self.shards(),
                    )
                except StoreError as exc:
                    logger.warning("claiming deliveries failed: %s", exc)
            for delivery in claimed:
                self._dispatch(delivery)
            if claimed and len(claimed) == min(settings.batch, max(free, 1)):
                continue  # more may be due: claim again at once
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.poll_interval):
                    await self._wakeup.wait()

    def _dispatch(self, delivery: DeliveryRecord) -> None:
        """Queue a claimed delivery on its endpoint's lane; start a worker if the
        lane has fewer than ``per_endpoint`` of them."""
        try:
            origin = _origin(delivery.url)
        except HttpError as exc:
            self._dead(delivery, str(exc))  # no retry can fix the URL
            return
        lane = self._lanes.get(origin)
        if lane is None:
            lane = self._lanes[origin] = _Lane(origin)
        lane.queue.append(delivery)
        self._queued += 1
        if lane.workers < self.settings.per_endpoint:
            lane.workers += 1
            worker = asyncio.create_task(self._lane_worker(lane))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _lane_worker(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                delivery = lane.queue.popleft()
                try:
                    await self._deliver(delivery, lane.origin)
                except Exception:
                    logger.exception("delivering %s failed", delivery.delivery_id)
                finally:
                    self._queued -= 1
                    self._wakeup.set()  # room to claim more
        finally:
            lane.workers -= 1
            if not lane.workers and not lane.queue:
                self._lanes.pop(lane.origin, None)

    async def _finish_loop(self) -> None:
        while True:
            await self._finished_ready.wait()
            self._finished_ready.clear()
            while self._finished:
                batch, self._finished = self._finished[:500], self._finished[500:]
                try:
                    done = await self.store.finish_deliveries(batch, self.settings.node_id)
                except StoreError as exc:
                    # The leases run out and the rows are claimed again: at least once.
                    logger.warning("recording %d delivery outcomes failed: %s", len(batch), exc)
                    continue
                for ok in done:
                    if not ok:
                        self.metrics.outcome("lease_lost")

    async def _stats_loop(self) -> None:
        while True:
            try:
                stats = await self.store.outbox_stats(self._now_us(), self.shards())
            except StoreError:
                pass
            else:
                self.metrics.pending.set(stats.pending)
                age = 0.0
                if stats.oldest_due_at is not None:
                    age = max(0.0, self.clock() - stats.oldest_due_at / _US)
                self.metrics.oldest_age.set(age)
            await asyncio.sleep(self.settings.stats_interval)

    async def flush(self) -> None:
        """Wait until every claimed delivery has been attempted and recorded."""
        while self._queued or self._finished:
            self._finished_ready.set()
            await asyncio.sleep(0.01)

    # -- one delivery -------------------------------------------------------

    def _finish(self, record: DeliveryRecord, outcome: str) -> None:
        self.metrics.outcome(outcome)
        self._finished.append(record)
        self._finished_ready.set()

    def _reschedule(self, delivery: DeliveryRecord, at: float) -> None:
        """Back to pending at ``at`` without an attempt (circuit open, endpoint busy)."""
        self._finish(
            dataclasses.replace(
                delivery,
                next_attempt_at=int(at * _US),
                lease_owner=None,
                lease_until=None,
                updated_at=self._now_us(),
            ),
            "deferred",
        )

    async def _endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        key = (namespace, url)
        cached = self._endpoints.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        endpoint = await self.store.get_endpoint(namespace, url)
        if len(self._endpoints) > 10_000:
            self._endpoints.clear()
        self._endpoints[key] = (endpoint, time.monotonic() + 10.0)
        return endpoint

    async def _deliver(self, delivery: DeliveryRecord, origin: Origin) -> None:
        now = self.clock()
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = _Breaker()
        if breaker.open_until > now:
            self._reschedule(delivery, breaker.open_until)
            return
        try:
            endpoint = await self._endpoint(delivery.namespace, delivery.url)
            hooks = await self._hooks(delivery.namespace)
        except StoreError as exc:
            logger.warning("no namespace settings for a delivery: %s", exc)
            self._reschedule(delivery, now + 5.0)
            return
        if endpoint is not None and endpoint.disabled_at is not None:
            self._dead(delivery, f"endpoint disabled: {endpoint.reason or 'disabled'}")
            return
        await self._attempt(delivery, hooks, origin, breaker)

    async def _hooks(self, namespace: str) -> NamespaceHooks:
        cached = self._hook_cache.get(namespace)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        hooks = await self.hooks_for(namespace)
        if len(self._hook_cache) > 10_000:
            self._hook_cache.clear()
        self._hook_cache[namespace] = (hooks, time.monotonic() + 1.0)
        return hooks

    async def _attempt(
        self, delivery: DeliveryRecord, hooks: NamespaceHooks, origin: Origin, breaker: _Breaker
    ) -> None:
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                hooks.secrets, delivery.delivery_id, timestamp, delivery.payload
            ),
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        response: str | None = None
        retry_after: float | None = None
        try:
            result = await self.client.post(delivery.url, headers, delivery.payload)
        except BlockedAddress as exc:
            # Not a failure of the endpoint, and no retry can change it.
            self.metrics.attempt_seconds.observe(time.perf_counter() - started)
            self._dead(delivery, f"refused: {exc}", attempted=True)
            return
        except HttpError as exc:
            error = str(exc)
        else:
            status = result.status
            response = result.body.decode("utf-8", "replace")[:_RESPONSE_KEEP] or None
            retry_after = _retry_after(result.headers.get("retry-after"), self.clock())
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error += " (redirects are not followed)"
        elapsed = time.perf_counter() - started
        self.metrics.attempt_seconds.observe(elapsed)
        slow = elapsed > self.settings.slow_seconds
        if status is not None and 200 <= status < 300 and not slow:
            breaker.failures = 0
            breaker.opens = 0
        elif status != 410:
            breaker.failures += 1
            if breaker.failures >= self.settings.breaker_threshold:
                breaker.opens += 1
                cooldown = min(
                    self.settings.breaker_cooldown * 2 ** (breaker.opens - 1),
                    self.settings.breaker_max_cooldown,
                )
                breaker.open_until = self.clock() + cooldown
                breaker.failures = 0
                logger.warning(
                    "webhook endpoint %s failing; pausing it for %.0f s", origin, cooldown
                )
        if status == 410:
            await self._disable(delivery, f"HTTP 410 at {_rfc3339(self.clock())}")
        self._record(delivery, status, elapsed, error, response, retry_after, hooks.policy)

    def _record(
        self,
        delivery: DeliveryRecord,
        status: int | None,
        elapsed: float,
        error: str | None,
        response: str | None,
        retry_after: float | None,
        policy: RetryPolicy,
    ) -> None:
        now = self._now_us()
        attempts = delivery.attempts + 1
        attempt = AttemptRecord(now, status, round(elapsed * 1000, 3), error, response)
        if status is not None and 200 <= status < 300:
            state, outcome, due = DeliveryState.SUCCEEDED, "succeeded", delivery.next_attempt_at
        elif status == 410:
            state, outcome, due = DeliveryState.DEAD, "disabled", delivery.next_attempt_at
        else:
            delay = policy.next_delay(attempts, retry_after)
            if delay is None:
                state, outcome, due = DeliveryState.DEAD, "dead", delivery.next_attempt_at
            else:
                state, outcome, due = DeliveryState.PENDING, "retry", now + int(delay * _US)
        # The constructor, not dataclasses.replace: this runs for every delivery.
        self._finish(
            DeliveryRecord(
                namespace=delivery.namespace,
                delivery_id=delivery.delivery_id,
                job_id=delivery.job_id,
                event_type=delivery.event_type,
                payload=delivery.payload,
                url=delivery.url,
                shard=delivery.shard,
                state=state,
                next_attempt_at=due,
                created_at=delivery.created_at,
                updated_at=now,
                attempts=attempts,
                last_status=status,
                last_error=error,
                lease_owner=None,
                lease_until=None,
                log=(*delivery.log, attempt)[-_LOG_KEEP:],
            ),
            outcome,
        )

    def _dead(self, delivery: DeliveryRecord, reason: str, *, attempted: bool = False) -> None:
        """Dead at once: the delivery cannot succeed as it is."""
        now = self._now_us()
        log = delivery.log
        attempts = delivery.attempts
        if attempted:
            attempts += 1
            log = (*log, AttemptRecord(now, None, 0.0, reason, None))[-_LOG_KEEP:]
        self._finish(
            dataclasses.replace(
                delivery,
                state=DeliveryState.DEAD,
                attempts=attempts,
                last_status=None,
                last_error=reason,
                log=log,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            ),
            "dead",
        )

    async def _disable(self, delivery: DeliveryRecord, reason: str) -> None:
        endpoint = EndpointRecord(delivery.namespace, delivery.url, self._now_us(), reason)
        try:
            await self.store.put_endpoint(endpoint)
        except StoreError as exc:
            logger.warning("could not record the disabled endpoint %s: %s", delivery.url, exc)
        self._endpoints[(delivery.namespace, delivery.url)] = (endpoint, time.monotonic() + 10.0)
        logger.warning("webhook endpoint %s answered 410 Gone: disabled", delivery.url)


@functools.lru_cache(maxsize=4096)
def _origin(url: str) -> Origin:
    return origin_of(url)[0]


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds in a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
