"""Live fan-out of committed log entries to the streams and long-polls of a node.

The job service publishes every committed change here, in ``seq`` order. Each
event's SSE frame is encoded once and the same ``bytes`` object is handed to
every subscriber of the job. A subscriber's queue is bounded by count and by
bytes; one that falls behind is not allowed to grow: its queue is dropped and
it is told it *lagged*, and it catches up from the store, which holds every
committed entry, before it goes live again. Publishing never waits for a
subscriber.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["CLOSED", "LAGGED", "NUDGED", "Hub", "HubEvent", "Subscription", "Topic"]

Topic = tuple[str, str]  # (namespace, job id)


@dataclass(frozen=True, slots=True)
class HubEvent:
    seq: int
    frame: bytes
    #: the terminal status this entry moved the job to, if it did
    ended: str | None = None


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: returned by :meth:`Subscription.get` when the queue overflowed
LAGGED: Final = _Signal("LAGGED")
#: returned when the topic was closed (the job was deleted, or moved to another node)
CLOSED: Final = _Signal("CLOSED")
#: returned when the subscriber should look at the store (the cluster's ring changed)
NUDGED: Final = _Signal("NUDGED")


class Subscription:
    """One consumer's view of a topic: a bounded queue, or just a change flag.

    A *watch* (``queue=False``) keeps no events; :meth:`wait_changed` returns
    once anything was published. Long-polls use watches.
    """

    __slots__ = ("_bytes", "_queue", "_waiter", "changed", "closed", "lagged", "nudged", "topic")

    def __init__(self, topic: Topic, queue: bool) -> None:
        self.topic = topic
        self._queue: deque[HubEvent] | None = deque() if queue else None
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self.lagged = False
        self.closed = False
        self.changed = False
        self.nudged = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _push(self, events: Sequence[HubEvent], max_events: int, max_bytes: int) -> None:
        self.changed = True
        queue = self._queue
        if queue is not None and not self.lagged:
            for event in events:
                queue.append(event)
                self._bytes += len(event.frame)
            if len(queue) > max_events or self._bytes > max_bytes:
                queue.clear()
                self._bytes = 0
                self.lagged = True
        self._wake()

    def _close(self) -> None:
        self.closed = True
        self._wake()

    def _nudge(self) -> None:
        self.nudged = self.changed = True
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def get(self) -> HubEvent | _Signal:
        """The next event, or :data:`LAGGED` / :data:`CLOSED` / :data:`NUDGED`."""
        queue = self._queue
        assert queue is not None, "a watch has no queue"
        while not queue and not self.lagged and not self.closed and not self.nudged:
            await self._wait()
        if self.nudged:
            self.nudged = False
            if not queue and not self.lagged and not self.closed:
                return NUDGED
        if self.lagged:
            self.lagged = False
            return LAGGED
        if queue:
            event = queue.popleft()
            self._bytes -= len(event.frame)
            return event
        return CLOSED

    async def wait_changed(self) -> None:
        """Return once something was published (or the topic closed) since the last call."""
        while not self.changed and not self.closed:
            await self._wait()
        self.changed = False


class Hub:
    def __init__(
        self,
        *,
        max_events: int = 256,
        max_bytes: int = 1024 * 1024,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self._topics: dict[Topic, set[Subscription]] = {}
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._count = 0
        self._on_change = on_change

    @property
    def subscriber_count(self) -> int:
        return self._count

    def has_subscribers(self, topic: Topic) -> bool:
        return topic in self._topics

    def subscribe(self, topic: Topic, *, queue: bool = True) -> Subscription:
        subscription = Subscription(topic, queue)
        self._topics.setdefault(topic, set()).add(subscription)
        self._adjust(1)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        members = self._topics.get(subscription.topic)
        if members is None or subscription not in members:
            return
        members.discard(subscription)
        if not members:
            del self._topics[subscription.topic]
        self._adjust(-1)

    def publish(self, topic: Topic, events: Sequence[HubEvent]) -> None:
        members = self._topics.get(topic)
        if not members or not events:
            return
        for subscription in members:
            subscription._push(events, self._max_events, self._max_bytes)

    def close_topic(self, topic: Topic) -> None:
        for subscription in self._topics.get(topic, ()):
            subscription._close()

    def nudge(self, topic: Topic) -> None:
        for subscription in self._topics.get(topic, ()):
            subscription._nudge()

    def topics(self) -> list[Topic]:
        return list(self._topics)

    def close_all(self) -> None:
        for members in self._topics.values():
            for subscription in members:
                subscription._close()

    def _adjust(self, delta: int) -> None:
        self._count += delta
        if self._on_change is not None:
            self._on_change(self._count)
