"""EventStream: frames out, pings when quiet, a clean end when the client leaves or stalls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from service.sse import PING, EventStream


class Client:
    """The ASGI side: records what was sent; ``leave()`` disconnects."""

    def __init__(self, *, stall_body: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = asyncio.Event()
        self.stall_body = stall_body
        self._requested = False

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.stall_body and message["type"] == "http.response.body":
            await asyncio.Event().wait()  # a client that never reads
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


class Frames:
    """An async iterator of frames that can be told to wait forever, and knows if it was closed."""

    def __init__(self, frames: list[bytes], then_wait: bool) -> None:
        self.frames = frames
        self.then_wait = then_wait
        self.closed = False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for frame in self.frames:
                yield frame
            if self.then_wait:
                await asyncio.Event().wait()
        finally:
            self.closed = True


async def test_frames_then_a_complete_response() -> None:
    client, frames = Client(), Frames([b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n"], False)
    await EventStream(frames(), ping=10)({}, client.receive, client.send)
    start = client.sent[0]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"cache-control", b"no-store") in start["headers"]
    assert client.bodies() == [b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert frames.closed


async def test_a_quiet_stream_gets_pings_between_whole_frames() -> None:
    client, frames = Client(), Frames([b"data: a\n\n"], True)
    task = asyncio.create_task(EventStream(frames(), ping=0.2)({}, client.receive, client.send))
    await asyncio.sleep(0.75)
    bodies = client.bodies()
    assert bodies[0] == b"data: a\n\n"
    # quiet for 0.75 s with a 0.2 s heartbeat: a ping at least every 0.2 s, not a flood
    assert 3 <= bodies.count(PING) <= 8
    assert set(bodies[1:]) == {PING}
    client.left.set()
    await asyncio.wait_for(task, 1)


async def test_the_stream_ends_quietly_when_the_client_leaves() -> None:
    client, frames = Client(), Frames([b"data: a\n\n"], True)
    task = asyncio.create_task(EventStream(frames(), ping=10)({}, client.receive, client.send))
    await asyncio.sleep(0.05)
    client.left.set()
    assert await asyncio.wait_for(task, 1) is None  # no CancelledError escapes
    assert frames.closed  # the generator's finally ran: its subscription is gone
    assert not task.cancelled()


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    client, frames = Client(stall_body=True), Frames([b"data: a\n\n"], True)
    stream = EventStream(frames(), ping=0.1, send_timeout=0.3)
    await asyncio.wait_for(stream({}, client.receive, client.send), 2)
    assert frames.closed
    assert client.bodies() == []  # nothing got through the stalled socket


async def test_cancelling_the_request_still_propagates() -> None:
    client, frames = Client(), Frames([], True)
    task = asyncio.create_task(EventStream(frames(), ping=10)({}, client.receive, client.send))
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()  # a shutdown is not swallowed as if the client had left
    assert frames.closed
