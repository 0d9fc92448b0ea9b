"""A fast webhook receiver for benchmarks: counts deliveries, answers 200.

    python -m loadtests.receiver --port 9100

``GET /count`` answers the number of POSTs received and the distinct
``webhook-id`` values; ``GET /sample`` the last request's headers and body
(to check a signature). Runs on uvloop in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson


class Counter:
    def __init__(self) -> None:
        self.posts = 0
        self.ids: set[bytes] = set()
        self.sample: dict[str, str] = {}
        self.first_at = 0.0  # wall-clock times of the first and last delivery
        self.last_at = 0.0


async def serve(
    counter: Counter, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method = head[:4]
            length = 0
            webhook_id = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"webhook-id":
                    webhook_id = value.strip()
            body = await reader.readexactly(length) if length else b""
            if method == b"POST":
                counter.posts += 1
                counter.ids.add(webhook_id)
                if webhook_id != b"msg_ceiling":
                    counter.last_at = time.time()
                    counter.first_at = counter.first_at or counter.last_at
                if counter.posts % 1000 == 1:
                    counter.sample = {
                        "head": head.decode("latin-1"),
                        "body": body.decode("utf-8", "replace"),
                    }
                reply = b"ok"
            elif head.startswith(b"GET /count"):
                reply = orjson.dumps(
                    {
                        "posts": counter.posts,
                        "ids": len(counter.ids),
                        "first_at": counter.first_at,
                        "last_at": counter.last_at,
                    }
                )
            else:
                reply = orjson.dumps(counter.sample)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    counter = Counter()
    server = await asyncio.start_server(
        lambda r, w: serve(counter, r, w), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
