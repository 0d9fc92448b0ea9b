"""A webhook receiver for tests: a small HTTP/1.1 server that records every
request and answers as the test tells it to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> dict:  # type: ignore[type-arg]
        return orjson.loads(self.body)  # type: ignore[no-any-return]

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Reply = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[Received], Reply]


def ok(_: Received) -> Reply:
    return 200, {}, b"ok"


class Receiver:
    def __init__(self, behaviour: Behaviour = ok) -> None:
        self.behaviour = behaviour
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self, port: int = 0) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(path, headers, body)
                self.received.append(request)
                self.arrived.set()
                status, reply_headers, reply = self.behaviour(request)
                out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(reply)}"]
                out += [f"{k}: {v}" for k, v in reply_headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], seconds: float = 20
    ) -> None:
        async with asyncio.timeout(seconds):
            while not predicate(self.received):
                self.arrived.clear()
                await self.arrived.wait()
