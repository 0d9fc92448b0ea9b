"""Every kind of bad input gets a 4xx problem, and nothing is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..support import ADMIN_TOKEN, Tenant, auth

LONG_ID = "a" * 129


def _assert_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:aos:problem:")
    assert body["title"] and body["detail"]
    assert body["requestId"] == r.headers["x-request-id"]


SUBMIT_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("malformed json", {"content": b"{not json"}, 400),
    ("empty body", {"content": b""}, 400),
    ("array body", {"json": [1, 2]}, 422),
    ("unknown field", {"json": {"jobId": "x", "colour": "red"}}, 422),
    ("uppercase id", {"json": {"jobId": "Bad"}}, 422),
    ("id too long", {"json": {"jobId": LONG_ID}}, 422),
    ("id not a string", {"json": {"jobId": 5}}, 422),
    ("metadata not an object", {"json": {"jobId": "x", "metadata": "t"}}, 422),
    ("title too long", {"json": {"jobId": "x", "metadata": {"title": "t" * 300}}}, 422),
    ("title not text", {"json": {"jobId": "x", "metadata": {"title": 7}}}, 422),
    ("tags not a list", {"json": {"jobId": "x", "metadata": {"tags": "a"}}}, 422),
    (
        "too many tags",
        {"json": {"jobId": "x", "metadata": {"tags": [f"t{i}" for i in range(40)]}}},
        422,
    ),
    ("bad tag", {"json": {"jobId": "x", "metadata": {"tags": ["has space"]}}}, 422),
    ("metadata too large", {"json": {"jobId": "x", "metadata": {"blob": "x" * 20_000}}}, 413),
    ("body too large", {"content": b'{"jobId": "x", "pad": "' + b"x" * 70_000 + b'"}'}, 413),
    ("webhook not http", {"json": {"jobId": "x", "webhookUrl": "ftp://host/x"}}, 422),
    ("webhook relative", {"json": {"jobId": "x", "webhookUrl": "/hook"}}, 422),
    ("ttl in months", {"json": {"jobId": "x", "retentionPolicy": {"ttl": "P1M"}}}, 422),
    ("ttl negative", {"json": {"jobId": "x", "retentionPolicy": {"ttl": -5}}}, 422),
    ("ttl zero", {"json": {"jobId": "x", "retentionPolicy": {"ttl": 0}}}, 422),
    ("ttl missing", {"json": {"jobId": "x", "retentionPolicy": {}}}, 422),
    ("ttl garbage", {"json": {"jobId": "x", "retentionPolicy": {"ttl": "soon"}}}, 422),
    ("namespace invalid", {"json": {"jobId": "x", "namespace": "Bad NS"}}, 400),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "status"), SUBMIT_CASES, ids=[c[0] for c in SUBMIT_CASES]
)
async def test_bad_submissions(
    client: httpx.AsyncClient, tenant: Tenant, case: str, kwargs: dict[str, Any], status: int
) -> None:
    headers = {**tenant.headers(), "Content-Type": "application/json"}
    r = await client.post("/api/v1/jobs", headers=headers, **kwargs)
    _assert_problem(r, status)
    listing = (await client.get("/api/v1/jobs", headers=tenant.headers())).json()
    assert listing["items"] == [], "nothing stored"


PATCH_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("malformed json", {"content": b"{"}, 400),
    ("empty object", {"json": {}}, 422),
    ("unknown status", {"json": {"status": "Done"}}, 422),
    ("lowercase status", {"json": {"status": "running"}}, 422),
    ("progress over 100", {"json": {"progress": 101}}, 422),
    ("progress negative", {"json": {"progress": -1}}, 422),
    ("progress as text", {"json": {"progress": "50"}}, 422),
    ("progress as bool", {"json": {"progress": True}}, 422),
    ("eta not a time", {"json": {"estimatedCompletion": "tomorrow"}}, 422),
    ("eta without zone", {"json": {"estimatedCompletion": "2030-01-01T00:00:00"}}, 422),
    ("error without Failed", {"json": {"status": "Running", "error": "x"}}, 422),
    ("error without message", {"json": {"status": "Failed", "error": {"code": "E1"}}}, 422),
    ("unknown field", {"json": {"progres": 5}}, 422),
]


@pytest.mark.parametrize(("case", "kwargs", "status"), PATCH_CASES, ids=[c[0] for c in PATCH_CASES])
async def test_bad_status_patches(
    client: httpx.AsyncClient, tenant: Tenant, case: str, kwargs: dict[str, Any], status: int
) -> None:
    await tenant.job("p")
    before = (await client.get("/api/v1/jobs/p", headers=tenant.headers())).json()
    r = await client.patch(
        "/api/v1/jobs/p/status",
        headers={**tenant.headers(), "Content-Type": "application/json"},
        **kwargs,
    )
    _assert_problem(r, status)
    assert (await client.get("/api/v1/jobs/p", headers=tenant.headers())).json() == before


CHUNK_CASES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("empty chunk", b"", {"Content-Type": "text/plain"}, 422),
    (
        "chunk too large",
        b"x" * (1024 * 1024 + 1),
        {"Content-Type": "application/octet-stream"},
        413,
    ),
    ("text not utf-8", b"caf\xe9", {"Content-Type": "text/plain"}, 422),
    ("json not utf-8", b'"\xff"', {"Content-Type": "application/json"}, 422),
    ("latin-1 text", b"abc", {"Content-Type": "text/plain; charset=iso-8859-1"}, 415),
    ("index not a number", b"abc", {"Content-Type": "text/plain", "X-Chunk-Index": "first"}, 400),
    ("negative index", b"abc", {"Content-Type": "text/plain", "X-Chunk-Index": "-1"}, 400),
    ("index ahead", b"abc", {"Content-Type": "text/plain", "X-Chunk-Index": "5"}, 409),
]


@pytest.mark.parametrize(
    ("case", "data", "headers", "status"), CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES]
)
async def test_bad_chunks(
    client: httpx.AsyncClient,
    tenant: Tenant,
    case: str,
    data: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    await tenant.job("c")
    await tenant.append("c", "good")
    r = await client.post(
        "/api/v1/jobs/c/output", content=data, headers={**tenant.headers(), **headers}
    )
    _assert_problem(r, status)
    out = (await client.get("/api/v1/jobs/c/output", headers=tenant.headers())).json()
    assert (out["output"], out["chunks"]) == ("good", 1)
    status_doc = (await client.get("/api/v1/jobs/c/status", headers=tenant.headers())).json()
    assert status_doc["lastSeq"] == 3


async def test_a_version_keeps_its_format(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("f")
    await tenant.append("f", "text")
    r = await tenant.append("f", b"\x00", "application/octet-stream")
    _assert_problem(r, 409)
    assert r.json()["type"] == "urn:aos:problem:format-conflict"


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/api/v1/jobs/UPPER", 400),
        ("GET", "/api/v1/jobs/" + LONG_ID, 400),
        ("GET", "/api/v1/jobs/j/output?version=0", 400),
        ("GET", "/api/v1/jobs/j/output?version=two", 400),
        ("GET", "/api/v1/jobs/j/output?version=9", 404),
        ("GET", "/api/v1/jobs/j/output/raw?version=9", 404),
        ("GET", "/api/v1/jobs/missing", 404),
        ("GET", "/api/v1/jobs/missing/status", 404),
        ("GET", "/api/v1/jobs/missing/stream", 404),
        ("POST", "/api/v1/jobs/missing/cancel", 404),
        ("DELETE", "/api/v1/jobs/missing", 404),
        ("GET", "/api/v1/jobs/j/stream?from=middle", 400),
        ("GET", "/api/v1/jobs?limit=0", 400),
        ("GET", "/api/v1/jobs?status=Nope", 400),
        ("GET", "/api/v1/jobs?createdAfter=2020-13-01T00:00:00Z", 400),
        ("GET", "/api/v1/namespaces/BAD", 400),
    ],
)
async def test_bad_paths_and_parameters(
    client: httpx.AsyncClient, tenant: Tenant, method: str, url: str, status: int
) -> None:
    await tenant.job("j")
    headers = tenant.headers("admin")
    r = await client.request(method, url, headers=headers)
    _assert_problem(r, status)


async def test_bad_namespace_and_key_requests(client: httpx.AsyncClient, tenant: Tenant) -> None:
    admin = auth(ADMIN_TOKEN)
    before = (await client.get(f"/api/v1/namespaces/{tenant.name}", headers=admin)).json()
    for body, status in (
        ({"defaultRetentionPolicy": {"ttl": "P1M"}}, 422),
        ({"webhookUrl": "nope"}, 422),
        ({"retention": 5}, 422),
        ([], 422),
    ):
        r = await client.put(f"/api/v1/namespaces/{tenant.name}", json=body, headers=admin)
        _assert_problem(r, status)
    after = (await client.get(f"/api/v1/namespaces/{tenant.name}", headers=admin)).json()
    assert after == before
    for body in ({"role": "root"}, {}, {"role": "admin", "extra": 1}):
        r = await client.post(f"/api/v1/namespaces/{tenant.name}/keys", json=body, headers=admin)
        _assert_problem(r, 422)
    r = await client.post("/api/v1/namespaces/nowhere/keys", json={"role": "admin"}, headers=admin)
    _assert_problem(r, 404)
    r = await client.get("/api/v1/namespaces/nowhere", headers=admin)
    _assert_problem(r, 404)


async def test_namespace_defaults_and_updates(client: httpx.AsyncClient) -> None:
    admin = auth(ADMIN_TOKEN)
    r = await client.put("/api/v1/namespaces/cfg-test", headers=admin)
    assert r.status_code == 201
    assert r.json()["defaultRetentionPolicy"] is None
    r = await client.put(
        "/api/v1/namespaces/cfg-test",
        json={"defaultRetentionPolicy": {"ttl": "PT2H"}},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["defaultRetentionPolicy"] == {"ttl": 7200}
    r = await client.post(
        "/api/v1/jobs", json={"jobId": "d", "namespace": "cfg-test"}, headers=admin
    )
    assert r.json()["retentionPolicy"] == {"ttl": 7200}
    r = await client.post(
        "/api/v1/jobs",
        json={"jobId": "e", "namespace": "cfg-test", "retentionPolicy": {"ttl": 60}},
        headers=admin,
    )
    assert r.json()["retentionPolicy"] == {"ttl": 60}
