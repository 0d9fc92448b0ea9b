"""The whole life of a job over real HTTP, and the rules that guard it."""

from __future__ import annotations

import base64

import httpx

from ..support import Tenant, sse_events


async def test_whole_lifecycle(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = await tenant.job(
        "report-1", metadata={"title": "Q3", "tags": ["finance"]}, retentionPolicy={"ttl": "P1D"}
    )
    assert created["status"] == "Queued" and created["lastSeq"] == 1
    assert created["retentionPolicy"] == {"ttl": 86400}

    r = await tenant.patch("report-1", status="Running", progress=10)
    assert r.status_code == 200 and r.json()["status"] == "Running"
    for part in ("alpha ", "beta ", "gamma"):
        r = await tenant.append("report-1", part)
        assert r.status_code == 201
    r = await client.post("/api/v1/jobs/report-1/versions", headers=tenant.headers())
    assert r.status_code == 201 and r.json()["version"] == 2
    r = await tenant.append("report-1", b"\x00\x01\xfe\xff", "application/octet-stream")
    assert r.status_code == 201 and r.json()["version"] == 2
    r = await tenant.patch("report-1", status="Succeeded")
    assert r.status_code == 200 and r.json()["progress"] == 100

    job = (await client.get("/api/v1/jobs/report-1", headers=tenant.headers("consumer"))).json()
    assert job["status"] == "Succeeded" and job["currentVersion"] == 2
    assert job["startedAt"] and job["completedAt"] and job["expiresAt"]

    v1 = (
        await client.get(
            "/api/v1/jobs/report-1/output?version=1", headers=tenant.headers("consumer")
        )
    ).json()
    assert (v1["output"], v1["format"], v1["size"], v1["chunks"]) == (
        "alpha beta gamma",
        "text",
        16,
        3,
    )
    assert v1["completedAt"] is not None
    v2 = (await client.get("/api/v1/jobs/report-1/output", headers=tenant.headers())).json()
    assert v2["encoding"] == "base64" and base64.b64decode(v2["output"]) == b"\x00\x01\xfe\xff"

    raw = await client.get("/api/v1/jobs/report-1/output/raw?version=1", headers=tenant.headers())
    assert raw.content == b"alpha beta gamma"
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["content-length"] == "16"
    again = await client.get(
        "/api/v1/jobs/report-1/output/raw?version=1",
        headers={**tenant.headers(), "If-None-Match": raw.headers["etag"]},
    )
    assert again.status_code == 304

    async with client.stream(
        "GET", "/api/v1/jobs/report-1/stream", headers=tenant.headers("consumer")
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [e async for e in sse_events(stream)]
    kinds = [e.event for e in events]
    assert kinds == [
        "status",
        "progress",
        "status",
        "chunk",
        "chunk",
        "chunk",
        "version",
        "chunk",
        "progress",
        "status",
        "end",
    ]
    assert [int(e.id) for e in events if e.id] == list(range(1, 11))
    assert events[-1].json() == {"status": "Succeeded", "lastSeq": 10}

    r = await client.delete("/api/v1/jobs/report-1", headers=tenant.headers())
    assert r.status_code == 204
    r = await client.get("/api/v1/jobs/report-1", headers=tenant.headers())
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_json_output_is_parsed_when_whole(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("j")
    await tenant.append("j", '{"answer": ', "application/json")
    partial = (await client.get("/api/v1/jobs/j/output", headers=tenant.headers())).json()
    assert partial["encoding"] == "utf-8" and partial["output"] == '{"answer": '
    await tenant.append("j", "[4, 2]}", "application/json")
    whole = (await client.get("/api/v1/jobs/j/output", headers=tenant.headers())).json()
    assert whole["encoding"] == "json" and whole["output"] == {"answer": [4, 2]}


async def test_idempotent_submit(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"jobId": "same", "metadata": {"title": "x", "tags": ["a"]}, "webhookUrl": None}
    first = await client.post("/api/v1/jobs", json=body, headers=tenant.headers())
    assert first.status_code == 201
    assert first.headers["location"] == f"/api/v1/namespaces/{tenant.name}/jobs/same"
    retry = await client.post("/api/v1/jobs", json=body, headers=tenant.headers())
    assert retry.status_code == 200 and retry.json() == first.json()
    # A retry after the job moved on still answers with the job as it is now.
    await tenant.append("same", "x")
    later = await client.post("/api/v1/jobs", json=body, headers=tenant.headers())
    assert later.status_code == 200 and later.json()["status"] == "Running"
    different = await client.post(
        "/api/v1/jobs", json={**body, "metadata": {"title": "y"}}, headers=tenant.headers()
    )
    assert different.status_code == 409
    assert different.json()["type"] == "urn:aos:problem:job-exists"
    job = (await client.get("/api/v1/jobs/same", headers=tenant.headers())).json()
    assert job["metadata"] == {"title": "x", "tags": ["a"]}


async def test_generated_ids_are_unique_and_time_ordered(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    ids = []
    for _ in range(5):
        r = await client.post("/api/v1/jobs", json={}, headers=tenant.headers())
        assert r.status_code == 201
        ids.append(r.json()["jobId"])
    assert len(set(ids)) == 5 and ids == sorted(ids)


async def test_chunk_index_makes_retries_safe(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("idx")
    first = await tenant.append("idx", "zero", **{"X-Chunk-Index": "0"})
    assert first.status_code == 201
    retry = await tenant.append("idx", "zero", **{"X-Chunk-Index": "0"})
    assert retry.status_code == 200 and retry.json() == first.json()
    assert (await tenant.append("idx", "one", **{"X-Chunk-Index": "1"})).status_code == 201
    for _ in range(3):
        assert (await tenant.append("idx", "one", **{"X-Chunk-Index": "1"})).status_code == 200
    skip = await tenant.append("idx", "three", **{"X-Chunk-Index": "3"})
    assert skip.status_code == 409
    assert skip.json()["type"] == "urn:aos:problem:chunk-index-conflict"
    changed = await tenant.append("idx", "ONE", **{"X-Chunk-Index": "1"})
    assert changed.status_code == 409
    out = (await client.get("/api/v1/jobs/idx/output", headers=tenant.headers())).json()
    assert (out["output"], out["chunks"]) == ("zeroone", 2)
    status = (await client.get("/api/v1/jobs/idx/status", headers=tenant.headers())).json()
    assert status["lastSeq"] == 4  # Queued, Running, two chunks


async def test_terminal_states_refuse_changes(client: httpx.AsyncClient, tenant: Tenant) -> None:
    for job_id, finish in (
        ("s", {"status": "Succeeded"}),
        ("f", {"status": "Failed", "error": "disk full"}),
    ):
        await tenant.job(job_id)
        await tenant.patch(job_id, status="Running")
        assert (await tenant.patch(job_id, **finish)).status_code == 200
    await tenant.job("c")
    r = await client.post("/api/v1/jobs/c/cancel", headers=tenant.headers("consumer"))
    assert r.status_code == 200 and r.json()["status"] == "Cancelled"
    failed = (await client.get("/api/v1/jobs/f", headers=tenant.headers())).json()
    assert failed["error"] == {"message": "disk full"}

    for job_id in ("s", "f", "c"):
        before = (await client.get(f"/api/v1/jobs/{job_id}", headers=tenant.headers())).json()
        attempts = [
            await tenant.patch(job_id, status="Running"),
            await tenant.patch(job_id, progress=50),
            await tenant.patch(job_id, status="Cancelled"),
            await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=tenant.headers()),
            await tenant.append(job_id, "late"),
            await client.post(f"/api/v1/jobs/{job_id}/versions", headers=tenant.headers()),
        ]
        for r in attempts:
            assert r.status_code == 409, r.text
            assert r.json()["type"] == "urn:aos:problem:job-terminal"
        after = (await client.get(f"/api/v1/jobs/{job_id}", headers=tenant.headers())).json()
        assert after == before


async def test_invalid_transitions_are_409(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("q")
    for target in ("Succeeded", "Failed", "Queued"):
        if target == "Queued":
            await tenant.patch("q", status="Running")
        r = await tenant.patch("q", status=target if target != "Queued" else "Queued")
        if target == "Queued":
            assert r.status_code == 409
        else:
            assert r.status_code == 409
            assert r.json()["type"] == "urn:aos:problem:invalid-transition"


async def test_deleting_an_unfinished_job_is_409(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("busy")
    r = await client.delete("/api/v1/jobs/busy", headers=tenant.headers())
    assert r.status_code == 409 and r.json()["type"] == "urn:aos:problem:job-not-terminal"
    assert (await client.get("/api/v1/jobs/busy", headers=tenant.headers())).status_code == 200


async def test_path_form_and_namespace_sources(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("where")
    admin = {"Authorization": "Bearer test-admin-token"}
    by_path = await client.get(f"/api/v1/namespaces/{tenant.name}/jobs/where", headers=admin)
    by_header = await client.get(
        "/api/v1/jobs/where", headers={**admin, "X-Namespace": tenant.name}
    )
    by_query = await client.get(f"/api/v1/jobs/where?namespace={tenant.name}", headers=admin)
    by_key = await client.get("/api/v1/jobs/where", headers=tenant.headers("consumer"))
    assert {r.status_code for r in (by_path, by_header, by_query, by_key)} == {200}
    assert by_path.json() == by_header.json() == by_query.json() == by_key.json()
    nowhere = await client.get("/api/v1/jobs/where", headers=admin)
    assert nowhere.status_code == 400
    r = await client.post(
        f"/api/v1/namespaces/{tenant.name}/jobs",
        json={"jobId": "p", "namespace": "elsewhere"},
        headers=admin,
    )
    assert r.status_code == 422
    r = await client.post(
        f"/api/v1/namespaces/{tenant.name}/jobs", json={"jobId": "p"}, headers=admin
    )
    assert r.status_code == 201 and r.json()["namespace"] == tenant.name
    r = await client.post(
        "/api/v1/jobs", json={"jobId": "b", "namespace": tenant.name}, headers=admin
    )
    assert r.status_code == 201
    r = await client.post(
        "/api/v1/jobs", json={"jobId": "b", "namespace": "no-such-ns"}, headers=admin
    )
    assert r.status_code == 404
    assert r.json()["type"] == "urn:aos:problem:namespace-not-found"


async def test_every_response_has_a_request_id(client: httpx.AsyncClient, tenant: Tenant) -> None:
    r = await client.get(
        "/api/v1/jobs/nope", headers={**tenant.headers(), "X-Request-ID": "trace-42"}
    )
    assert r.headers["x-request-id"] == "trace-42"
    assert r.json()["requestId"] == "trace-42"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and r.headers["x-request-id"]
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["requestId"] == r.headers["x-request-id"]
    r = await client.put("/healthz")
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
