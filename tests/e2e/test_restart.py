"""What was acknowledged survives the process: SIGKILL, restart, everything is there."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from ..support import Server, Tenant, sse_events


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    server = Server(f"sqlite:///{tmp_path}/aos.db", tmp_path).start()
    acknowledged: list[str] = []
    keys: dict[str, str] = {}
    enough = asyncio.Event()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            tenant = await Tenant(client, "durable").setup()
            keys = tenant.keys
            await tenant.job("keep", metadata={"title": "before the crash"})
            await tenant.job("done")
            await tenant.patch("done", status="Cancelled")

            async def writer() -> None:
                i = 0
                while True:
                    r = await tenant.append("keep", f"part-{i};")
                    if r.status_code != 201:
                        return
                    acknowledged.append(f"part-{i};")
                    if len(acknowledged) == 200:
                        enough.set()
                    i += 1

            task = asyncio.create_task(writer())
            await asyncio.wait_for(enough.wait(), 30)
            server.kill()  # mid-write, no chance to flush anything
            try:
                await asyncio.wait_for(task, 10)
            except (TimeoutError, httpx.TransportError):
                pass
    finally:
        server.stop()
    assert len(acknowledged) >= 200

    restarted = Server(f"sqlite:///{tmp_path}/aos.db", tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
            tenant = Tenant(client, "durable")
            tenant.keys = keys  # keys issued before the crash still work

            job = (await client.get("/api/v1/jobs/keep", headers=tenant.headers())).json()
            assert job["metadata"] == {"title": "before the crash"}
            out = (await client.get("/api/v1/jobs/keep/output", headers=tenant.headers())).json()
            stored = out["output"]
            # Everything acknowledged is there, in order; at most the one write in
            # flight at the kill may also have landed.
            assert stored.startswith("".join(acknowledged))
            assert out["chunks"] in (len(acknowledged), len(acknowledged) + 1)

            # A stream resumes from its cursor across the restart.
            cursor = 100
            async with client.stream(
                "GET",
                "/api/v1/jobs/keep/stream",
                headers={**tenant.headers(), "Last-Event-ID": str(cursor)},
            ) as r:
                async for event in sse_events(r):
                    assert int(event.id or 0) == cursor + 1
                    break
            r = await client.get("/api/v1/jobs/done", headers=tenant.headers())
            assert r.json()["status"] == "Cancelled"
    finally:
        # uvicorn re-raises SIGTERM after a clean shutdown, so -15 is a clean exit.
        assert restarted.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in restarted.log()


async def test_old_keys_work_after_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/aos.db"
    server = Server(url, tmp_path).start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        tenant = await Tenant(client, "keys").setup()
    server.stop()
    restarted = Server(url, tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
            r = await client.post("/api/v1/jobs", json={"jobId": "after"}, headers=tenant.headers())
            assert r.status_code == 201
    finally:
        restarted.stop()
