"""The peer client (sharding/http1.py) against scripted servers on loopback:
framing both ways, keep-alive, and how far a failed exchange got."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sharding.http1 import Broken, PeerClient, TimedOut, Unreachable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    if b"transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    elif b"content-length:" in head:
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    return head, body


async def test_a_chunked_upload_and_a_chunked_answer_stream_through() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.extend((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n")
        for part in (b"one", b"two"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection until the client closes it

    server, url, _ = await serve(handler)

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    client = PeerClient()
    response = await client.request(
        url, "PUT", b"/x?y=1", [(b"x-test", b"t")], parts(), chunked=True
    )
    assert response.status == 200 and (b"x-a", b"1") in response.headers
    assert [c async for c in response.chunks()] == [b"one", b"two"]
    response.release()
    assert seen[0].startswith(b"PUT /x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"x-test: t\r\n" in seen[0] and seen[1] == b"hello world"
    await client.close()
    server.close()


async def test_kept_alive_connections_are_reused_and_stale_ones_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two answers per connection, then it closes (idle timeout)
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    server, url, connections = await serve(handler)
    client = PeerClient()
    for _ in range(5):
        response = await client.request(url, "GET", b"/", [])
        assert await response.read() == b"ok"
        response.release()
    assert len(connections) == 3  # 2 + 2 + 1: the closed ones were noticed and replaced
    await client.close()
    server.close()


async def test_nobody_listening_is_unreachable() -> None:
    server, url, _ = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    with pytest.raises(Unreachable):
        await PeerClient(connect_timeout=1).request(url, "GET", b"/", [])


async def test_silence_is_a_timeout_and_a_cut_body_is_broken() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server, url, _ = await serve(silent)
    with pytest.raises(TimedOut):
        await PeerClient(read_timeout=0.2).request(url, "GET", b"/", [])
    server.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()

    server, url, _ = await serve(cut)
    response = await PeerClient().request(url, "GET", b"/", [])
    got: list[bytes] = []

    async def drain() -> None:
        async for chunk in response.chunks():
            got.append(chunk)

    with pytest.raises(Broken):
        await drain()
    assert got == [b"abc"]
    response.release()
    server.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    server, url, _ = await serve(hang_up)
    with pytest.raises(Broken):
        await PeerClient().request(url, "POST", b"/", [(b"content-length", b"1")], _one())
    server.close()


async def _one() -> AsyncIterator[bytes]:
    yield b"x"


async def test_a_head_answer_has_no_body_and_the_helper_reads_json() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n")
        else:
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{"a":1}')
        await writer.drain()
        await reader.read()

    server, url, _ = await serve(handler)
    client = PeerClient(read_timeout=2)
    response = await client.request(url, "HEAD", b"/", [])
    assert response.status == 200 and await response.read() == b""
    response.release()
    assert await client.get_bytes(f"{url}/ping", {"X-A": "1"}, within=2) == (200, b'{"a":1}')
    await client.close()
    server.close()
