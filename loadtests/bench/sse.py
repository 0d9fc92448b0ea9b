"""Many SSE subscribers in one process, cheap enough to outrun the servers.

Each subscriber is a bare ``asyncio.Protocol``: it writes one GET and then only
scans what arrives for the benchmark's markers. Every published message
carries ``t=<monotonic ns>;`` (a measured message) or ``w=<n>;`` (a warm-up
message); the scan does not parse SSE or HTTP framing at all, so the same code
reads AOS, Nchan and Centrifugo, whatever they wrap the payload in. The
publisher runs in the same process, so ``monotonic_ns`` at receipt minus the
marker is the publish→receive latency, client scheduling included.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array

__all__ = ["Subscriber", "Tally", "open_subscribers"]

_MARK = re.compile(rb"([tw])=(\d+);")
_KEEP = 32  # bytes kept between reads: room for a marker cut in two


class Tally:
    """What all subscribers of one run received."""

    def __init__(self) -> None:
        self.latencies_ns = array("q")
        self.last_ns = 0
        self.expected = 0
        self.complete = asyncio.Event()

    def reset(self, expected: int) -> None:
        """Start counting afresh; ``complete`` is set at ``expected`` deliveries."""
        self.latencies_ns = array("q")
        self.last_ns = 0
        self.expected = expected
        self.complete.clear()


class Subscriber(asyncio.Protocol):
    def __init__(self, request: bytes, tally: Tally) -> None:
        self.request = request
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tail = b""
        self.ready = asyncio.get_running_loop().create_future()
        self.warm = 0  # warm-up messages seen
        self.received = 0  # measured messages seen
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head[9:12]
            if status != b"200":
                self.ready.set_exception(
                    RuntimeError(f"subscribe answered {self.head[: end + 200]!r}")
                )
                return
            self.ready.set_result(None)
            data, self.head = self.head[end + 4 :], b""
        buf = self.tail + data if self.tail else data
        now = time.monotonic_ns()
        end = 0
        tally = self.tally
        for match in _MARK.finditer(buf):
            end = match.end()
            if match[1] == b"t":
                tally.latencies_ns.append(now - int(match[2]))
                self.received += 1
            else:
                self.warm += 1
        if end:
            tally.last_ns = now
            if tally.expected and len(tally.latencies_ns) >= tally.expected:
                tally.complete.set()
        rest = buf[end:]
        self.tail = rest[-_KEEP:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_subscribers(
    port: int, requests: list[bytes], tally: Tally, concurrency: int = 128
) -> list[Subscriber]:
    """Connect one subscriber per request; returns once every one has its ``200``."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    subscribers: list[Subscriber] = []

    async def one(request: bytes) -> None:
        async with gate:
            _, sub = await loop.create_connection(
                lambda: Subscriber(request, tally), "127.0.0.1", port
            )
            subscribers.append(sub)
            await asyncio.wait_for(sub.ready, 60)

    try:
        await asyncio.gather(*(one(r) for r in requests))
    except BaseException:
        for sub in subscribers:
            sub.close()
        raise
    return subscribers
