"""A lean HTTP/1.1 client for webhook deliveries.

Deliveries need little of HTTP: one ``POST`` with a small body, the status,
two headers and the start of the response body. A general-purpose client
spends more CPU on each request than all the rest of a delivery, so this one
does only that, over keep-alive connections pooled per origin, with the SSRF
guard applied to every new connection. Redirects are never followed: a 3xx
is an answer like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from .ssrf import AddressGuard

__all__ = ["Connection", "HttpClient", "HttpError", "HttpResult", "IdlePool", "Origin", "origin_of"]

K = TypeVar("K", bound=Hashable)

_MAX_HEAD = 64 * 1024
_MAX_DRAIN = 1024 * 1024  # larger response bodies close the connection instead
_PROTOCOL_ERRORS = (
    OSError,
    ssl.SSLError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
)


class HttpError(Exception):
    """No usable response: connection, TLS, timeout or protocol failure."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def origin_of(url: str) -> tuple[Origin, str]:
    """``(origin, request target)`` of an http(s) URL."""
    if any(c in url for c in "\r\n\t "):
        raise HttpError("the URL contains whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise HttpError(f"bad port in {url!r}") from exc
    host = parts.hostname.encode("idna").decode("ascii")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Origin(parts.scheme, host, port), target


@dataclass(slots=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes  # at most the client's max_body bytes


@dataclass(slots=True, eq=False)
class Connection:
    """One kept-alive HTTP/1.1 connection (also used by ``sharding.http1``)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)
    timed_out: bool = False

    def usable(self, idle_timeout: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < idle_timeout
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class IdlePool(Generic[K]):
    """Idle kept-alive connections per origin: the newest is reused first, at
    most ``max_idle`` are kept per origin, and none older than ``idle_timeout``."""

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[K, list[Connection]] = {}

    def take(self, origin: K) -> Connection | None:
        pool = self._idle.get(origin)
        while pool:
            conn = pool.pop()
            if conn.usable(self.idle_timeout):
                return conn
            conn.close()
        return None

    def keep(self, origin: K, conn: Connection) -> None:
        pool = self._idle.setdefault(origin, [])
        if len(pool) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()


class HttpClient:
    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout: float = 15.0,
        max_body: int = 2048,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 30.0,
        user_agent: str = "aos-webhooks",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.guard = guard
        self.timeout = timeout
        self.max_body = max_body
        self.user_agent = user_agent
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._idle: IdlePool[Origin] = IdlePool(max_idle_per_origin, idle_timeout)
        # Exchanges under way and their deadlines; one sweeper enforces them all,
        # which costs less than a timer per request.
        self._deadlines: dict[Connection, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._heads: dict[str, tuple[Origin, bytes]] = {}

    def _start(self, url: str) -> tuple[Origin, bytes]:
        """The origin of ``url`` and the fixed start of a request to it."""
        cached = self._heads.get(url)
        if cached is None:
            origin, target = origin_of(url)
            head = (
                f"POST {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
                f"User-Agent: {self.user_agent}\r\n"
            ).encode("latin-1")
            if len(self._heads) > 10_000:
                self._heads.clear()
            cached = self._heads[url] = (origin, head)
        return cached

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpResult:
        """POST ``body``; the response, or :class:`HttpError` /
        :class:`~webhooks.ssrf.BlockedAddress` when there is none."""
        origin, head = self._start(url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join(
            (head, extra.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="aos-webhooks-timeouts")
        deadline = time.monotonic() + self.timeout
        conn = self._idle.take(origin)
        if conn is not None:
            try:
                return await self._round_trip(origin, conn, request, deadline)
            except _StaleConnection:
                pass  # the server closed a kept-alive connection: once more, freshly
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                conn = await self._connect(origin)
        except TimeoutError:
            raise HttpError(f"no connection within {self.timeout:g} s") from None
        try:
            return await self._round_trip(origin, conn, request, deadline)
        except _StaleConnection as exc:
            raise HttpError(str(exc)) from None

    async def _sweep(self) -> None:
        """Abort exchanges that passed their deadline, every fraction of the timeout."""
        interval = min(max(self.timeout / 10, 0.01), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    conn.timed_out = True
                    conn.writer.transport.abort()

    async def _connect(self, origin: Origin) -> Connection:
        addresses = await self.guard.resolve(origin.host, origin.port)
        last: Exception | None = None
        for address in addresses:
            try:
                if origin.scheme == "https":
                    reader, writer = await asyncio.open_connection(
                        address,
                        origin.port,
                        ssl=self.ssl_context,
                        server_hostname=origin.host,
                    )
                else:
                    reader, writer = await asyncio.open_connection(address, origin.port)
                return Connection(reader, writer)
            except (OSError, ssl.SSLError) as exc:
                last = exc
        raise HttpError(f"cannot connect to {origin}: {last}") from last

    async def _round_trip(
        self, origin: Origin, conn: Connection, request: bytes, deadline: float
    ) -> HttpResult:
        self._deadlines[conn] = deadline
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            status, headers = await self._read_head(conn)
            body, reusable = await self._read_body(conn, headers)
        except _StaleConnection:
            conn.close()
            if conn.timed_out:
                raise HttpError(f"no response within {self.timeout:g} s") from None
            raise
        except _PROTOCOL_ERRORS as exc:
            conn.close()
            if conn.timed_out:
                raise HttpError(f"no response within {self.timeout:g} s") from None
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # cancelled: the exchange is half done
            conn.close()
            raise
        finally:
            del self._deadlines[conn]
        if reusable and headers.get("connection", "").lower() != "close":
            self._idle.keep(origin, conn)
        else:
            conn.close()
        return HttpResult(status, headers, body)

    async def _read_head(self, conn: Connection) -> tuple[int, dict[str, str]]:
        while True:
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection("the server closed the connection") from None
                raise
            if len(head) > _MAX_HEAD:
                raise ValueError("response head too large")
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # an interim response; the final one follows
            return status, headers

    async def _read_body(self, conn: Connection, headers: Mapping[str, str]) -> tuple[bytes, bool]:
        """The start of the body, and whether the connection can be reused."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            kept = bytearray()
            total = 0
            while True:
                size_line = await conn.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers, then the empty line
                    while (await conn.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(kept), True
                total += size
                if total > _MAX_DRAIN:
                    return bytes(kept), False
                data = await conn.reader.readexactly(size + 2)
                if len(kept) < self.max_body:
                    kept += data[: min(size, self.max_body - len(kept))]
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_DRAIN:
                return await conn.reader.read(self.max_body), False
            data = await conn.reader.readexactly(length)
            return data[: self.max_body], True
        # No framing: the body runs to the end of the connection.
        return await conn.reader.read(self.max_body), False

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._idle.close()


class _StaleConnection(Exception):
    """A reused connection turned out to be closed before any response."""
