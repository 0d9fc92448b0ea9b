"""A lean ``text/event-stream`` response: what 10,000 open streams can afford.

Each stream costs its request task, which writes the frames, and one watcher
task. The watcher waits for the client to leave, and wakes every heartbeat
interval to write a ping comment if the stream has been quiet and to end a
stream whose client stopped reading (a send blocked past ``send_timeout``).
There is no timer, lock or task group per frame (the watcher's timeout, every
half heartbeat, is per stream): a frame is one ``send``,
which is one ``transport.write`` unless the client is slow (then ``send``
waits for the socket to drain, and the hub's bounded queue switches the
stream to catching up from the store).

Only whole frames are ever written, by whichever of the two tasks writes, so
a ping that lands between two frames keeps the stream well-formed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Message, Receive, Scope, Send

__all__ = ["EventStream"]

log = logging.getLogger("aos.sse")

PING = b": ping\n\n"


class EventStream:
    """An ASGI response streaming complete SSE frames from ``frames``."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        ping: float,
        send_timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
        expires_in: float | None = None,
    ) -> None:
        """``on_close``: called once the stream is over, however it ends;
        ``expires_in``: seconds until the stream ends (its credential expires
        then), give or take half a heartbeat."""
        self.frames = frames
        self.on_close = on_close
        self.expires_in = expires_in
        self.ping = ping
        self.send_timeout = send_timeout
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        for name, value in (headers or {}).items():
            if name.lower() != "cache-control":
                self.headers.append((name.lower().encode(), value.encode()))
        self._sending_since = 0.0  # loop time a send started; 0 when none is under way
        self._written_at = 0.0
        self._ended = False  # the watcher ended the stream (client gone or stuck)
        self._expired = False  # … because its credential expired

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _stream(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        writer = asyncio.current_task()
        assert writer is not None
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        self._written_at = loop.time()
        watcher = loop.create_task(self._watch(receive, send, writer))
        frames = self.frames
        try:
            async for frame in frames:
                self._sending_since = self._written_at = loop.time()
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                self._sending_since = 0.0
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._ended:
                raise
            writer.uncancel()  # the watcher ended the stream: a normal end, not an error
            if self._expired:  # the client is there: end the body properly
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _watch(self, receive: Receive, send: Send, writer: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if self.expires_in is None else loop.time() + self.expires_in
        while True:
            message: Message | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping / 2):
                    message = await receive()
            if message is not None:
                if message["type"] == "http.disconnect":
                    break
                continue  # the (empty) request body
            now = loop.time()
            if deadline is not None and now >= deadline and not self._sending_since:
                log.info("closing an SSE stream whose credential expired")
                self._expired = True
                break
            if self._sending_since and now - self._sending_since > self.send_timeout:
                log.warning("closing an SSE stream whose client stopped reading")
                break
            if not self._sending_since and now - self._written_at >= self.ping * 0.5:
                self._written_at = now
                await send({"type": "http.response.body", "body": PING, "more_body": True})
        self._ended = True
        writer.cancel()
