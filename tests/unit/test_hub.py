"""The fan-out hub: shared frames, bounded queues, lag signalling."""

import asyncio

from service.hub import CLOSED, LAGGED, NUDGED, Hub, HubEvent


def ev(seq: int, size: int = 10) -> HubEvent:
    return HubEvent(seq, b"x" * size)


async def test_every_subscriber_gets_the_same_frame_object() -> None:
    hub = Hub()
    a, b = hub.subscribe(("ns", "j")), hub.subscribe(("ns", "j"))
    other = hub.subscribe(("ns", "k"))
    event = ev(1)
    hub.publish(("ns", "j"), [event])
    got_a, got_b = await a.get(), await b.get()
    assert got_a is event and got_b is event
    hub.publish(("ns", "k"), [ev(7)])
    got = await other.get()
    assert isinstance(got, HubEvent) and got.seq == 7


async def test_get_waits_for_a_publish() -> None:
    hub = Hub()
    sub = hub.subscribe(("ns", "j"))
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(("ns", "j"), [ev(1), ev(2)])
    first = await waiter
    second = await sub.get()
    assert [first.seq, second.seq] == [1, 2]  # type: ignore[union-attr]


async def test_a_slow_subscriber_is_cut_loose_not_buffered() -> None:
    hub = Hub(max_events=3, max_bytes=10_000)
    slow = hub.subscribe(("ns", "j"))
    fast = hub.subscribe(("ns", "j"))
    for seq in range(1, 6):
        hub.publish(("ns", "j"), [ev(seq)])
        got = await fast.get()
        assert isinstance(got, HubEvent) and got.seq == seq
    assert await slow.get() is LAGGED
    # After the lag signal the subscriber is live again, with an empty queue.
    hub.publish(("ns", "j"), [ev(6)])
    got = await slow.get()
    assert isinstance(got, HubEvent) and got.seq == 6


async def test_the_byte_bound_also_cuts_loose() -> None:
    hub = Hub(max_events=1000, max_bytes=100)
    sub = hub.subscribe(("ns", "j"))
    hub.publish(("ns", "j"), [ev(1, 60)])
    hub.publish(("ns", "j"), [ev(2, 60)])
    assert await sub.get() is LAGGED


async def test_close_topic_ends_subscribers_and_watches() -> None:
    hub = Hub()
    sub = hub.subscribe(("ns", "j"))
    watch = hub.subscribe(("ns", "j"), queue=False)
    waiting = asyncio.create_task(watch.wait_changed())
    hub.close_topic(("ns", "j"))
    assert await sub.get() is CLOSED
    await asyncio.wait_for(waiting, 1)


async def test_watch_keeps_no_events_and_wakes_once_per_change() -> None:
    hub = Hub()
    watch = hub.subscribe(("ns", "j"), queue=False)
    hub.publish(("ns", "j"), [ev(1, 1000)] * 50)
    await asyncio.wait_for(watch.wait_changed(), 1)
    waiter = asyncio.create_task(watch.wait_changed())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    hub.publish(("ns", "j"), [ev(51)])
    await asyncio.wait_for(waiter, 1)


async def test_unsubscribe_forgets_topics_and_counts() -> None:
    counts: list[int] = []
    hub = Hub(on_change=counts.append)
    a = hub.subscribe(("ns", "j"))
    b = hub.subscribe(("ns", "j"), queue=False)
    assert hub.has_subscribers(("ns", "j")) and hub.subscriber_count == 2
    hub.unsubscribe(a)
    hub.unsubscribe(a)  # twice is harmless
    hub.unsubscribe(b)
    assert not hub.has_subscribers(("ns", "j")) and hub.subscriber_count == 0
    assert counts == [1, 2, 1, 0]
    hub.publish(("ns", "j"), [ev(1)])  # nobody listening: nothing happens


async def test_a_nudge_wakes_a_waiting_subscriber_once_and_never_hides_events() -> None:
    hub = Hub()
    sub = hub.subscribe(("ns", "j"))
    watch = hub.subscribe(("ns", "j"), queue=False)
    assert hub.topics() == [("ns", "j")]
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    hub.nudge(("ns", "j"))
    assert await waiter is NUDGED
    await asyncio.wait_for(watch.wait_changed(), 1)  # a long-poll re-reads too
    hub.nudge(("ns", "j"))
    hub.publish(("ns", "j"), [ev(1)])
    got = await sub.get()  # the event, not the nudge: it is looked at anyway
    assert isinstance(got, HubEvent) and got.seq == 1
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
