"""Consumers that wait: the SSE stream and the long-poll on status.

A stream subscribes to the hub *before* it reads the log from the store, so
nothing committed in between can slip through: entries arrive from the store
first, then from the hub, and every entry at or below the cursor is dropped.
If the hub hands over an entry past ``cursor + 1`` (a gap), or reports that
the subscriber lagged, the stream reads the missing range from the store.
Each consumer therefore sees every entry after its cursor exactly once, in
``seq`` order. If the store no longer holds the entries right after the
cursor (retention purged them), a ``reset`` event says so before the stream
goes on with the first entry it still has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from storage_adapters import JobRecord

from .hub import CLOSED, LAGGED, NUDGED, Hub, HubEvent, Subscription, _Signal
from .jobs import JobService
from .metrics import Metrics
from .views import (
    end_frame,
    etag_matches,
    event_frame,
    reset_frame,
    status_etag,
    terminal_status,
)

__all__ = ["Recheck", "StreamPlan", "job_stream", "wait_for_change"]

#: how often a consumer of a namespace re-reads the store although the hub is
#: quiet (``None``: never, the hub sees every change). In a cluster, a node that
#: does not own the namespace, or whose ring just changed, may miss changes
#: another node committed; it re-reads the store at this interval instead.
Recheck = Callable[[str], float | None]


def _never(namespace: str) -> float | None:
    return None


#: a wait that ran out: re-read the store
_TIMED_OUT = _Signal("TIMED_OUT")


async def _next(subscription: Subscription, within: float | None) -> HubEvent | _Signal:
    if within is None:
        return await subscription.get()
    try:
        async with asyncio.timeout(within):
            return await subscription.get()
    except TimeoutError:
        return _TIMED_OUT


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Where a stream starts: after ``cursor``, with a ``reset`` first if set."""

    cursor: int
    reset_reason: str | None = None


async def job_stream(
    jobs: JobService,
    hub: Hub,
    metrics: Metrics,
    job: JobRecord,
    plan: StreamPlan,
    recheck: Recheck = _never,
) -> AsyncIterator[bytes]:
    """SSE frames of ``job`` after the plan's cursor, live until the job ends."""
    namespace, job_id = job.namespace, job.job_id
    subscription = hub.subscribe((namespace, job_id))
    metrics.open_streams.inc()
    cursor = plan.cursor
    try:
        if plan.reset_reason is not None:
            yield reset_frame(plan.reset_reason, job.last_seq, plan.cursor + 1)

        async def replay() -> AsyncIterator[tuple[bytes, str | None]]:
            """Frames from the store after ``cursor``, with the terminal status if one."""
            nonlocal cursor
            async for event in jobs.events_after(job, cursor):
                if event.seq > cursor + 1:
                    metrics.resets.inc()
                    yield reset_frame("purged", job.last_seq, event.seq), None
                cursor = event.seq
                event = await jobs.codec.plain_async(event)
                yield event_frame(event), terminal_status(event)

        async for frame, ended in replay():
            yield frame
            if ended:
                yield end_frame(ended, cursor)
                return
        latest = await jobs.find(namespace, job_id)
        if latest is None:
            return
        if latest.terminal and cursor >= latest.last_seq:
            yield end_frame(latest.status.value, latest.last_seq)
            return

        while True:
            item = await _next(subscription, recheck(namespace))
            if item is CLOSED:
                return
            if (
                item is LAGGED
                or item is NUDGED
                or item is _TIMED_OUT
                or (isinstance(item, HubEvent) and item.seq > cursor + 1)
            ):
                if item is LAGGED:
                    metrics.lagged.inc()
                async for frame, ended in replay():
                    yield frame
                    if ended:
                        yield end_frame(ended, cursor)
                        return
                continue
            assert isinstance(item, HubEvent)
            if item.seq <= cursor:
                continue
            cursor = item.seq
            yield item.frame
            if item.ended is not None:
                yield end_frame(item.ended, cursor)
                return
    finally:
        hub.unsubscribe(subscription)
        metrics.open_streams.dec()


async def wait_for_change(
    jobs: JobService,
    hub: Hub,
    metrics: Metrics,
    job: JobRecord,
    if_none_match: str,
    wait: float,
    recheck: Recheck = _never,
) -> JobRecord:
    """The job once its status ETag no longer matches ``if_none_match``, or after ``wait`` s."""
    watch = hub.subscribe((job.namespace, job.job_id), queue=False)
    metrics.waiting_polls.inc()
    try:
        # Read again now that the watch is in place: a change in between is not missed.
        job = await jobs.get(job.namespace, job.job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while etag_matches(if_none_match, status_etag(job)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            interval = recheck(job.namespace)
            try:
                async with asyncio.timeout(
                    remaining if interval is None else min(interval, remaining)
                ):
                    await watch.wait_changed()
            except TimeoutError:
                if interval is None or interval >= remaining:
                    break
            job = await jobs.get(job.namespace, job.job_id)
        return job
    finally:
        hub.unsubscribe(watch)
        metrics.waiting_polls.dec()
