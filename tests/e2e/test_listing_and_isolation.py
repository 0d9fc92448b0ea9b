"""Listing with cursors, and the wall between namespaces, over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ..support import ADMIN_TOKEN, Tenant, auth


async def _page_through(
    client: httpx.AsyncClient, tenant: Tenant, params: dict[str, Any], during_each_page: Any = None
) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/v1/jobs", params=query, headers=tenant.headers("consumer"))
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(item["jobId"] for item in body["items"])
        if during_each_page is not None:
            await during_each_page()
        cursor = body["nextCursor"]
        if cursor is None:
            return seen


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_pagination_sees_every_job_once_while_jobs_are_created(
    client: httpx.AsyncClient, tenant: Tenant, order: str
) -> None:
    existing = [f"pre-{i:03d}" for i in range(60)]
    for job_id in existing:
        await tenant.job(job_id)
    created = 0

    async def create_more() -> None:
        nonlocal created
        for _ in range(3):
            await tenant.job(f"new-{created:03d}")
            created += 1

    seen = await _page_through(client, tenant, {"limit": 7, "order": order}, create_more)
    assert len(seen) == len(set(seen)), "no job twice"
    assert set(existing) <= set(seen), "every job that existed before"
    if order == "asc":
        # Oldest first: the jobs created meanwhile come after, so the scan sees them too.
        # every job created before the last page was read, after the old ones
        assert seen[: len(existing)] == existing
        assert set(seen) - set(existing) == {f"new-{i:03d}" for i in range(created - 3)}


async def test_list_filters_over_http(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("a", metadata={"tags": ["red"]})
    await tenant.job("b", metadata={"tags": ["blue"]})
    await tenant.job("c", metadata={"tags": ["red", "blue"]})
    await tenant.patch("c", status="Running")
    red = await _page_through(client, tenant, {"tag": "red", "order": "asc"})
    assert red == ["a", "c"]
    running = await _page_through(client, tenant, {"status": "Running"})
    assert running == ["c"]
    newest = (await client.get("/api/v1/jobs?limit=1", headers=tenant.headers())).json()
    assert [i["jobId"] for i in newest["items"]] == ["c"] and newest["nextCursor"]
    created_b = (await client.get("/api/v1/jobs/b", headers=tenant.headers())).json()["createdAt"]
    after_b = await _page_through(client, tenant, {"createdAfter": created_b, "order": "asc"})
    assert after_b == ["c"]
    r = await client.get("/api/v1/jobs?cursor=not-a-cursor", headers=tenant.headers())
    assert r.status_code == 400


# -- isolation ---------------------------------------------------------------------

JOB_ROUTES = [
    ("GET", "/api/v1/jobs/{job}", None),
    ("DELETE", "/api/v1/jobs/{job}", None),
    ("GET", "/api/v1/jobs/{job}/status", None),
    ("PATCH", "/api/v1/jobs/{job}/status", {"json": {"progress": 5}}),
    ("POST", "/api/v1/jobs/{job}/cancel", None),
    (
        "POST",
        "/api/v1/jobs/{job}/output",
        {"content": b"x", "headers": {"Content-Type": "text/plain"}},
    ),
    ("GET", "/api/v1/jobs/{job}/output", None),
    ("GET", "/api/v1/jobs/{job}/output/raw", None),
    ("POST", "/api/v1/jobs/{job}/versions", None),
    ("GET", "/api/v1/jobs/{job}/stream", None),
    ("GET", "/api/v1/jobs", None),
    ("POST", "/api/v1/jobs", {"json": {"jobId": "intruder"}}),
]


def _forms(method: str, path: str, ns: str, job: str) -> list[tuple[str, dict[str, str]]]:
    """The same call through each way of naming the namespace."""
    short = path.format(job=job)
    long = short.replace("/api/v1/jobs", f"/api/v1/namespaces/{ns}/jobs", 1)
    return [
        (long, {}),
        (short, {"X-Namespace": ns}),
        (f"{short}?namespace={ns}", {}),
    ]


async def test_keys_cannot_touch_another_namespace(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    """Every route, every role, every way of naming B: 403, and B is unchanged."""
    await other_tenant.job("secret")
    await other_tenant.append("secret", "classified")
    before = (
        await client.get(
            f"/api/v1/namespaces/{other_tenant.name}/jobs/secret", headers=auth(ADMIN_TOKEN)
        )
    ).json()
    for role in ("admin", "producer", "consumer"):
        for method, path, kwargs in JOB_ROUTES:
            for job in ("secret", "does-not-exist"):
                for url, extra in _forms(method, path, other_tenant.name, job):
                    headers = {**tenant.headers(role), **extra}
                    options = dict(kwargs or {})
                    options["headers"] = {**headers, **options.get("headers", {})}
                    r = await client.request(method, url, **options)
                    assert r.status_code == 403, (role, method, url, r.status_code, r.text)
                    assert r.headers["content-type"] == "application/problem+json"
                    # Same answer whether or not the job exists: nothing leaks.
                    assert "secret" not in r.text and "classified" not in r.text
        for method, url, body in (
            ("GET", f"/api/v1/namespaces/{other_tenant.name}", None),
            ("PUT", f"/api/v1/namespaces/{other_tenant.name}", {}),
            ("POST", f"/api/v1/namespaces/{other_tenant.name}/keys", {"role": "admin"}),
        ):
            r = await client.request(method, url, json=body, headers=tenant.headers(role))
            assert r.status_code == 403, (role, method, url)
    after = (
        await client.get(
            f"/api/v1/namespaces/{other_tenant.name}/jobs/secret", headers=auth(ADMIN_TOKEN)
        )
    ).json()
    assert after == before
    listing = (await client.get("/api/v1/jobs", headers=tenant.headers())).json()
    assert listing["items"] == []


async def test_roles_within_a_namespace(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await tenant.job("mine")
    consumer = tenant.headers("consumer")
    for method, url, kwargs in (
        ("POST", "/api/v1/jobs", {"json": {"jobId": "x"}}),
        ("PATCH", "/api/v1/jobs/mine/status", {"json": {"progress": 1}}),
        ("POST", "/api/v1/jobs/mine/output", {"content": b"x"}),
        ("POST", "/api/v1/jobs/mine/versions", {}),
        ("DELETE", "/api/v1/jobs/mine", {}),
        ("PUT", f"/api/v1/namespaces/{tenant.name}", {"json": {}}),
        ("POST", f"/api/v1/namespaces/{tenant.name}/keys", {"json": {"role": "consumer"}}),
    ):
        r = await client.request(method, url, headers=consumer, **kwargs)
        assert r.status_code == 403, (method, url)
    producer = tenant.headers("producer")
    r = await client.post(
        f"/api/v1/namespaces/{tenant.name}/keys", json={"role": "admin"}, headers=producer
    )
    assert r.status_code == 403
    r = await client.post(
        f"/api/v1/namespaces/{tenant.name}/keys",
        json={"role": "consumer"},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 201
    assert (await client.post("/api/v1/jobs/mine/cancel", headers=consumer)).status_code == 200


async def test_authentication_failures_are_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    good = tenant.keys["consumer"]
    ns, key_id, secret = good.removeprefix("aos.").rsplit(".", 2)
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer aos.{ns}.{key_id}.{secret[:-1]}x"},
        {"Authorization": f"Bearer aos.{ns}.unknownkey.{secret}"},
        {"Authorization": f"Bearer aos.other-ns.{key_id}.{secret}"},
    ):
        r = await client.get("/api/v1/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_concurrent_requests_across_namespaces_stay_apart(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    async def fill(t: Tenant, word: str) -> None:
        await t.job("shared-id")
        await asyncio.gather(*(t.append("shared-id", f"{word}{i} ") for i in range(20)))

    await asyncio.gather(fill(tenant, "a"), fill(other_tenant, "b"))
    a = (await client.get("/api/v1/jobs/shared-id/output", headers=tenant.headers())).json()
    b = (await client.get("/api/v1/jobs/shared-id/output", headers=other_tenant.headers())).json()
    assert sorted(a["output"].split()) == sorted(f"a{i}" for i in range(20))
    assert sorted(b["output"].split()) == sorted(f"b{i}" for i in range(20))
