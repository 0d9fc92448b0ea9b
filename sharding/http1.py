"""A lean HTTP/1.1 client for talking to peers: forwarding and health checks.

Forwarding needs little of HTTP — plain ``http`` to a known peer, a request
whose body may stream in, a response whose body streams out — but needs it
for every request that enters at the wrong node. A general-purpose client
cost several times the CPU of serving the request itself
(docs/scaling.md), so this one does only that: keep-alive connections pooled
per peer, the response parsed by ``httptools`` (the parser uvicorn uses),
bodies passed on chunk by chunk, never buffered whole.

Errors say how far the exchange got, which decides what the caller may do:
:class:`Unreachable` (no connection: nothing was sent), :class:`TimedOut`
(no bytes for ``read_timeout``), :class:`Broken` (the connection failed
after the request may have been sent).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from webhooks.client import Connection, IdlePool

__all__ = ["Broken", "PeerClient", "PeerResponse", "TimedOut", "Unreachable"]

_READ = 65536


class Unreachable(Exception):
    """No connection to the peer; nothing was sent."""


class Broken(Exception):
    """The exchange failed after the request may have been (partly) sent."""


class TimedOut(Exception):
    """The peer sent nothing for the read timeout."""


class _Parsed:
    """httptools callbacks: what has been parsed so far of one response."""

    __slots__ = ("body", "complete", "head_done", "headers", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: deque[bytes] = deque()
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        # asked now: once the message is complete the parser answers False
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True


class PeerResponse:
    """A response whose head has arrived; :meth:`chunks` streams its body."""

    def __init__(
        self,
        client: PeerClient,
        origin: str,
        conn: Connection,
        parser: httptools.HttpResponseParser,
        parsed: _Parsed,
        *,
        bodyless: bool,
    ) -> None:
        self._client = client
        self._origin = origin
        self._conn: Connection | None = conn
        self._parser = parser
        self._parsed = parsed
        self.status: int = parser.get_status_code()
        self.headers = parsed.headers
        self._bodyless = bodyless

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (transfer coding removed); raises :class:`Broken`
        or :class:`TimedOut` if it stops short."""
        parsed = self._parsed
        if self._bodyless:
            parsed.complete = True
        while True:
            while parsed.body:
                yield parsed.body.popleft()
            if parsed.complete:
                return
            assert self._conn is not None
            data = await self._client._read(self._conn)
            if not data:
                raise Broken("the peer closed the connection before the body ended")
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise Broken(f"bad response from the peer: {exc}") from None

    async def read(self, limit: int = 1 << 20) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise Broken(f"the peer's answer is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool if the response was read whole on a kept-alive
        connection, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = self._parsed.complete and not self._bodyless and self._parsed.keep_alive
        if reusable:
            self._client._idle.keep(self._origin, conn)
        else:
            conn.close()


class PeerClient:
    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 90.0,
        max_idle_per_peer: int = 256,
        idle_timeout: float = 4.0,  # below uvicorn's 5 s keep-alive: we close first
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: IdlePool[str] = IdlePool(max_idle_per_peer, idle_timeout)
        self._addresses: dict[str, tuple[str, int, bytes]] = {}

    def _address(self, origin: str) -> tuple[str, int, bytes]:
        known = self._addresses.get(origin)
        if known is None:
            parts = urlsplit(origin)
            if parts.scheme != "http" or not parts.hostname:
                raise Unreachable(f"peers are reached over plain http, not {origin!r}")
            port = parts.port or 80
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            known = self._addresses[origin] = (host, port, f"{shown}:{port}".encode())
        return known

    async def request(
        self,
        origin: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None = None,
        *,
        chunked: bool = False,
    ) -> PeerResponse:
        """Send a request to ``origin`` (``http://host:port``) and wait for the
        response's head. ``body`` streams in as it is produced; ``chunked``
        frames it (when the headers give no ``Content-Length``)."""
        host, port, host_header = self._address(origin)
        lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), target, host_header)]
        lines.extend(b"%s: %s\r\n" % pair for pair in headers)
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        conn = self._idle.take(origin)
        if conn is not None and body is None:
            try:
                return await self._exchange(origin, conn, head, None, False, method)
            except Broken:
                pass  # the peer had closed the kept-alive connection: once more, freshly
        elif conn is not None:
            conn.close()  # a streamed body cannot be sent twice: use a fresh connection
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_READ)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"{origin}: {type(exc).__name__}: {exc}") from None
        return await self._exchange(origin, Connection(reader, writer), head, body, chunked, method)

    async def _exchange(
        self,
        origin: str,
        conn: Connection,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        method: str,
    ) -> PeerResponse:
        parsed = _Parsed()
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        try:
            conn.writer.write(head)
            if body is not None:
                async for part in body:
                    if not part:
                        continue
                    if chunked:
                        conn.writer.write(b"%x\r\n" % len(part))
                        conn.writer.write(part)
                        conn.writer.write(b"\r\n")
                    else:
                        conn.writer.write(part)
                    await conn.writer.drain()
                if chunked:
                    conn.writer.write(b"0\r\n\r\n")
            await conn.writer.drain()
            while not parsed.head_done:
                data = await self._read(conn)
                if not data:
                    raise Broken("the peer closed the connection before answering")
                parser.feed_data(data)
        except (OSError, httptools.HttpParserError) as exc:
            conn.close()
            raise Broken(f"{origin}: {type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return PeerResponse(self, origin, conn, parser, parsed, bodyless=method == "HEAD")

    async def _read(self, conn: Connection) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await conn.reader.read(_READ)
        except TimeoutError:
            conn.close()
            raise TimedOut(f"no answer for {self.read_timeout:g} s") from None
        except OSError as exc:
            conn.close()
            raise Broken(f"{type(exc).__name__}: {exc}") from None

    async def get_bytes(
        self, url: str, headers: dict[str, str], *, within: float
    ) -> tuple[int, bytes]:
        """``GET url``, all of it ``within`` seconds: ``(status, body)``."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/").encode()
        pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        async with asyncio.timeout(within):
            response = await self.request(origin, "GET", target, pairs)
            try:
                return response.status, await response.read()
            finally:
                response.release()

    async def close(self) -> None:
        self._idle.close()
