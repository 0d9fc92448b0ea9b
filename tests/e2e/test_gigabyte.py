"""1 GB through ``PUT …/output`` and back through ``GET …/output/raw``, with the
service's memory watched the whole time (invariant 6: a huge output does not
grow a node's memory).

The body is half random bytes and half text, so chunks go both ways through
the codec. The test hashes what it sends and what it gets back and samples
the server's resident set size every 20 ms; the bytes must match and the RSS
must stay under 200 MB.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ..support import Server, Tenant

TOTAL = 1 << 30
PIECE = 256 * 1024
RSS_LIMIT = 200 * 1024 * 1024
TEXT = b"".join(b"%08d a line of text output, quite compressible\n" % i for i in range(3000))


class RSSSampler:
    """The peak resident set size of a process, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.samples += 1
            time.sleep(self.every)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(store_url, tmp_path, env={"AOS_ACCESS_LOG": "false"}).start()
    yield running
    running.stop()


@pytest.mark.timeout(600)
async def test_one_gigabyte_through_put_and_raw_get_in_bounded_memory(server: Server) -> None:
    assert server.process is not None
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        noise = os.urandom(PIECE // 2)
        for n in range(TOTAL // PIECE):
            # Fresh noise every 4 MiB: the codec cannot shrink it; the text it can.
            if n % 16 == 0:
                noise = os.urandom(PIECE // 2)
            piece = noise + TEXT[: PIECE - len(noise)]
            sent.update(piece)
            yield piece

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        tenant = await Tenant(client, "gig").setup()
        await tenant.job("huge")
        with RSSSampler(server.process.pid) as sampler:
            started = time.monotonic()
            r = await client.put(
                "/api/v1/jobs/huge/output",
                content=body(),
                headers={
                    **tenant.headers(),
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(TOTAL),
                },
            )
            ingest = time.monotonic() - started
            assert r.status_code == 201, r.text
            assert r.json()["size"] == TOTAL
            assert r.json()["sha256"] == sent.hexdigest()

            received = hashlib.sha256()
            count = 0
            started = time.monotonic()
            async with client.stream(
                "GET",
                "/api/v1/jobs/huge/output/raw",
                headers={**tenant.headers("consumer"), "Accept-Encoding": "identity"},
            ) as download:
                assert download.status_code == 200
                assert download.headers["content-length"] == str(TOTAL)
                async for piece in download.aiter_raw():
                    received.update(piece)
                    count += len(piece)
            egress = time.monotonic() - started
    mib = 1024 * 1024
    print(
        f"\n1 GiB on {server.storage_url.partition(':')[0]}: "
        f"ingest {TOTAL / mib / ingest:.0f} MiB/s, "
        f"egress {TOTAL / mib / egress:.0f} MiB/s, peak RSS {sampler.peak / mib:.0f} MiB "
        f"({sampler.samples} samples)"
    )
    assert count == TOTAL
    assert received.hexdigest() == sent.hexdigest()
    assert sampler.samples > 50
    assert sampler.peak < RSS_LIMIT, f"peak RSS {sampler.peak / mib:.0f} MiB"
