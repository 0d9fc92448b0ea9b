"""A small keep-alive HTTP/1.1 client for load generation.

General clients (httpx, aiohttp) spend more CPU per request than the service
does on a fast route, and on a 2-core machine the client shares the CPU with
the server. This one does only what the benchmarks need: fixed requests over a
pool of persistent connections, responses with ``Content-Length`` or chunked
bodies. It is not a general HTTP client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["Connection", "Pool", "Response"]


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None
        assert self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        parsed: dict[bytes, bytes] = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            parsed[name.strip().lower()] = value.strip()
        if b"content-length" in parsed:
            data = await self.reader.readexactly(int(parsed[b"content-length"]))
        elif parsed.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        else:
            data = b""
        return Response(status, parsed, data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Pool:
    """Persistent connections handed out one request at a time."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(Connection(host, port))

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        conn = await self._idle.get()
        try:
            return await conn.request(method, path, headers, body)
        except BaseException:
            conn.close()  # reconnect on next use
            raise
        finally:
            self._idle.put_nowait(conn)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
