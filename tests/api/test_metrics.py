from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_requests_jobs_and_bytes() -> None:
    async with running_app() as client:
        admin = {**auth(ADMIN_TOKEN), "X-Namespace": "m"}
        await client.put("/api/v1/namespaces/m", headers=admin)
        await client.post("/api/v1/jobs", json={"jobId": "a"}, headers=admin)
        await client.post("/api/v1/jobs/a/output", content=b"12345", headers=admin)
        await client.post("/api/v1/jobs/a/output", content=b"678", headers=admin)
        await client.patch("/api/v1/jobs/a/status", json={"status": "Succeeded"}, headers=admin)
        await client.get("/api/v1/jobs/missing", headers=admin)
        r = await client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = _samples(r.text)
    assert samples[("aos_appended_bytes_total", ())] == 8
    for status in ("Queued", "Running", "Succeeded"):
        assert samples[("aos_jobs_total", (("status", status),))] == 1
    assert samples[("aos_events_total", (("kind", "chunk"),))] == 2
    hist = {k: v for k, v in samples.items() if k[0] == "aos_http_request_duration_seconds_count"}
    by_route = {
        dict(labels)["route"]: v
        for (_, labels), v in hist.items()
        if dict(labels)["status"] == "201"
    }
    assert by_route["/api/v1/jobs/{job_id}/output"] == 2
    assert by_route["/api/v1/jobs"] == 1
    missing = [v for (_, labels), v in hist.items() if dict(labels)["status"] == "404"]
    assert missing == [1]
    assert samples[("aos_store_up", ())] == 1
