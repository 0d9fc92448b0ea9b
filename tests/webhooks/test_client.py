"""The delivery HTTP client against real servers on loopback."""

from __future__ import annotations

import asyncio

import pytest

from webhooks import AddressGuard
from webhooks.client import HttpClient, HttpError, origin_of

from ..receiver import Received, Receiver, Reply

LOOPBACK = AddressGuard(["127.0.0.0/8"])


async def test_posts_and_reuses_connections() -> None:
    receiver = await Receiver().start()
    connections = 0
    original = receiver._serve

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await original(reader, writer)

    receiver._server.close()  # type: ignore[union-attr]
    receiver._server = await asyncio.start_server(counting, "127.0.0.1", 0)
    client = HttpClient(LOOPBACK, timeout=5)
    for i in range(20):
        result = await client.post(f"{receiver.url}/hook?n={i}", {"X-A": "b"}, b'{"i": %d}' % i)
        assert (result.status, result.body) == (200, b"ok")
    assert connections == 1
    assert [r.path for r in receiver.received] == [f"/hook?n={i}" for i in range(20)]
    assert receiver.received[3].headers["x-a"] == "b"
    assert receiver.received[3].headers["host"] == receiver.url.removeprefix("http://")
    await client.close()
    await receiver.stop()


async def test_redirects_are_answers_not_followed() -> None:
    def redirect(_: Received) -> Reply:
        return 302, {"Location": "http://127.0.0.1:1/elsewhere"}, b""

    receiver = await Receiver(redirect).start()
    client = HttpClient(LOOPBACK, timeout=5)
    result = await client.post(receiver.url, {}, b"{}")
    assert result.status == 302 and result.headers["location"].endswith("/elsewhere")
    assert len(receiver.received) == 1
    await client.close()
    await receiver.stop()


class RawServer:
    """Answers every request with the same raw bytes."""

    def __init__(self, response: bytes, *, close: bool = False) -> None:
        self.response = response
        self.close_after = close
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(self.response)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


async def test_chunked_bodies_are_read_and_truncated() -> None:
    body = b"x" * 5000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3000], body[3000:]))
    raw = RawServer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    async with raw as url:
        client = HttpClient(LOOPBACK, timeout=5, max_body=100)
        for _ in range(3):  # the connection stays usable after each
            result = await client.post(url, {}, b"{}")
            assert result.status == 200 and result.body == b"x" * 100
        await client.close()


async def test_interim_responses_are_skipped_and_close_is_honoured() -> None:
    raw = RawServer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        close=True,
    )
    async with raw as url:
        client = HttpClient(LOOPBACK, timeout=5)
        for _ in range(3):
            assert (await client.post(url, {}, b"{}")).status == 204
        await client.close()


async def test_a_silent_server_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client hangs up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpClient(LOOPBACK, timeout=0.3)
    with pytest.raises(HttpError, match="no response within"):
        await client.post(f"http://127.0.0.1:{port}/", {}, b"{}")
    await asyncio.sleep(0.05)
    for writer in writers:
        writer.close()
    server.close()


async def test_connection_refused_and_garbage_are_errors() -> None:
    client = HttpClient(LOOPBACK, timeout=2)
    with pytest.raises(HttpError, match="cannot connect"):
        await client.post("http://127.0.0.1:1/", {}, b"{}")
    async with RawServer(b"SMTP ready\r\n\r\n") as url:
        with pytest.raises(HttpError, match="not an HTTP"):
            await client.post(url, {}, b"{}")
        await client.close()


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "http:///x", "http://h:99999/", "http://h/a b", "http://h/\r\nX: y"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(HttpError):
        origin_of(url)
