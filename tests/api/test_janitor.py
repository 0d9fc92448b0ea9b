"""The janitor against the in-memory store: every expired job purged, page after
page, and nothing else touched."""

from __future__ import annotations

import asyncio

from service.clock import now_us
from service.janitor import Janitor
from storage_adapters import adapter_for

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app


async def test_a_sweep_purges_every_expired_job_page_after_page() -> None:
    store = adapter_for("memory://")
    async with running_app(store, janitor=False) as client:
        admin = auth(ADMIN_TOKEN)
        assert (await client.put("/api/v1/namespaces/jan", headers=admin)).status_code == 201
        started = now_us()
        for n in range(230):  # more than two pages of expired jobs
            body = {"namespace": "jan", "jobId": f"gone-{n}", "retentionPolicy": {"ttl": 1}}
            assert (await client.post("/api/v1/jobs", json=body, headers=admin)).status_code == 201
            await client.post(f"/api/v1/namespaces/jan/jobs/gone-{n}/cancel", headers=admin)
        body = {"namespace": "jan", "jobId": "kept", "retentionPolicy": {"ttl": 3600}}
        await client.post("/api/v1/jobs", json=body, headers=admin)
        await client.post("/api/v1/namespaces/jan/jobs/kept/cancel", headers=admin)
        await client.post("/api/v1/jobs", json={"namespace": "jan", "jobId": "open"}, headers=admin)

        state = client._transport.app.state.aos  # type: ignore[attr-defined]
        # nothing had expired by the time the first job was cancelled (a busy
        # machine may take more than the ttl to make 230 jobs)
        before = Janitor(store, state.jobs, state.metrics, interval=60, clock=lambda: started)
        assert await before.sweep() == 0
        janitor = Janitor(store, state.jobs, state.metrics, interval=60)
        await asyncio.sleep(1.1)
        assert await janitor.sweep() == 230
        assert await janitor.sweep() == 0
        for n in (0, 229):
            assert await store.get_job("jan", f"gone-{n}") is None
            assert await store.read_events("jan", f"gone-{n}", 0, 10) == []
        assert await store.get_job("jan", "kept") is not None
        assert await store.get_job("jan", "open") is not None
        metrics = (await client.get("/metrics")).text
        assert "aos_purged_jobs_total 230.0" in metrics
