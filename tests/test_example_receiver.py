"""docs/examples/webhook_receiver.py runs, and accepts exactly what aos signs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from .support import ADMIN_TOKEN, Server, Tenant, auth, free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "webhook_receiver.py"


async def test_example_receiver_verifies_real_deliveries(tmp_path: Path) -> None:
    server = Server(
        f"sqlite:///{tmp_path}/aos.db", tmp_path, env={"AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}
    ).start()
    port = free_port()
    receiver = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            tenant = await Tenant(client, "example").setup(
                {"webhookUrl": f"http://127.0.0.1:{port}/hooks"}
            )
            ns = (await client.get("/api/v1/namespaces/example", headers=auth(ADMIN_TOKEN))).json()
            secret = ns["webhookSecrets"][0]["secret"]
            receiver = subprocess.Popen(
                [sys.executable, str(EXAMPLE), str(port)],
                env={**os.environ, "AOS_WEBHOOK_SECRET": secret},
                stdout=subprocess.PIPE,
                text=True,
            )
            await asyncio.sleep(0.5)
            await tenant.job("hello")
            await tenant.patch("hello", status="Cancelled")
            async with httpx.AsyncClient() as raw:  # a forgery is refused
                r = await raw.post(
                    f"http://127.0.0.1:{port}/hooks",
                    content=b"{}",
                    headers={
                        "webhook-id": "msg_x",
                        "webhook-timestamp": "1",
                        "webhook-signature": "v1,AAAA",
                    },
                )
                assert r.status_code == 401
            lines: list[dict] = []  # type: ignore[type-arg]
            assert receiver.stdout is not None
            while len([e for e in lines if "id" in e]) < 3 or not any(
                "rejected" in e for e in lines
            ):
                line = await asyncio.wait_for(asyncio.to_thread(receiver.stdout.readline), 20)
                lines.append(orjson.loads(line))
        accepted = [e for e in lines if "id" in e]
        assert sorted((e["type"], e["data"].get("status")) for e in accepted) == [
            ("job.completed", "Cancelled"),
            ("job.status", "Cancelled"),
            ("job.status", "Queued"),
        ]
        assert any("rejected" in e for e in lines)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait()
            if receiver.stdout is not None:
                receiver.stdout.close()
        server.stop()
