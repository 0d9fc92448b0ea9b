"""A store outage answers 503 problems, never 500, and readiness fails."""

from __future__ import annotations

from collections.abc import Sequence

from storage_adapters import DeliveryRecord, EventRecord, JobRecord, StoreUnavailable, StoreURL
from storage_adapters.memory import MemoryAdapter

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app


class SwitchableStore(MemoryAdapter):
    """The in-memory store with a switch that makes every call fail like a dead server."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    async def _ping(self) -> None:
        self._check()

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        self._check()
        return await super()._get_job(namespace, job_id)

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        self._check()
        await super()._update_job(job, events, expected_revision, deliveries)

    async def _create_job(
        self, job: JobRecord, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]
    ) -> None:
        self._check()
        await super()._create_job(job, events, deliveries)


async def test_outage_gives_503_then_recovers() -> None:
    store = SwitchableStore(StoreURL.parse("memory://"))
    async with running_app(store) as client:
        admin = {**auth(ADMIN_TOKEN), "X-Namespace": "ns"}
        assert (await client.put("/api/v1/namespaces/ns", headers=admin)).status_code == 201
        assert (
            await client.post("/api/v1/jobs", json={"jobId": "a"}, headers=admin)
        ).status_code == 201
        store.down = True
        for method, url, kwargs in (
            ("POST", "/api/v1/jobs", {"json": {"jobId": "b"}}),
            ("GET", "/api/v1/jobs/a", {}),
            ("GET", "/api/v1/jobs/a/status", {}),
            ("POST", "/api/v1/jobs/a/output", {"content": b"x"}),
            ("PATCH", "/api/v1/jobs/a/status", {"json": {"progress": 3}}),
            ("GET", "/readyz", {}),
        ):
            r = await client.request(method, url, headers=admin, **kwargs)
            assert r.status_code == 503, (method, url, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "urn:aos:problem:store-unavailable"
        assert (await client.get("/healthz")).status_code == 200, "alive, just not ready"
        store.down = False
        assert (await client.get("/readyz")).status_code == 200
        r = await client.get("/api/v1/jobs/a", headers=admin)
        assert r.status_code == 200 and r.json()["lastSeq"] == 1, "nothing half-written"
        assert (
            await client.post("/api/v1/jobs", json={"jobId": "b"}, headers=admin)
        ).status_code == 201
