"""The access matrix, generated: every route, every role, own and other
namespace, valid, expired and revoked credentials, each with its expected status.

The routes come from the app's own route table (a new route fails the test
until it is classified here); the expected status comes from this file's own
copy of the role table of DESIGN §5 and docs/security.md, not from the
service's code, so a wrong permission in the service shows up as a cell whose
status differs. Every allowed cell makes a real, valid request (on fresh
resources where it changes something) and expects that route's success status.

``python -m tests.api.test_access_matrix`` prints the matrix as Markdown
(docs/security.md carries a copy).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from service.routes import route_table
from storage_adapters import StorageAdapter, adapter_for

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app

OWN, OTHER = "m-own", "m-other"
HOOK = "https://example.com/hook"

#: the roles of DESIGN §5 plus subscriber tokens: what each may do in its namespace
PERMITS: dict[str, set[str]] = {
    "admin": {"read", "inspect", "cancel", "write", "admin", "mint"},
    "producer": {"read", "inspect", "cancel", "write", "mint"},
    "consumer": {"read", "inspect", "cancel", "mint"},
    "subscriber": {"read"},
    "subscriber-job": {"read"},  # a token for the job the request is about
    "subscriber-otherjob": {"read"},  # a token for another job of the namespace
}
ROLES = ["root", *PERMITS, "none"]
STATES = ["valid", "expired", "revoked"]


@dataclass(frozen=True)
class Case:
    """What one route needs, and how to make a valid request to it."""

    need: str  # an action of PERMITS, or public / root
    ok: int  # the status of an allowed request
    #: the route acts on one job (a job-scoped token may use it)
    on_job: bool = False
    #: what the request needs to exist first: "job", "output", "terminal", "delivery", "key"
    prepare: str | None = None
    body: Any = None
    content: bytes | None = None
    query: dict[str, str] = field(default_factory=dict)


_JOB_CASES: dict[tuple[str, str], Case] = {
    ("", "POST"): Case("write", 201, body="new-job"),
    ("", "GET"): Case("read", 200),
    ("/{job_id}", "GET"): Case("read", 200, True, "job"),
    ("/{job_id}", "DELETE"): Case("write", 204, True, "terminal"),
    ("/{job_id}/status", "GET"): Case("read", 200, True, "job"),
    ("/{job_id}/status", "PATCH"): Case("write", 200, True, "job", body={"progress": 50}),
    ("/{job_id}/cancel", "POST"): Case("cancel", 200, True, "job"),
    ("/{job_id}/output", "POST"): Case("write", 201, True, "job", content=b"chunk"),
    ("/{job_id}/output", "PUT"): Case("write", 201, True, "job", content=b"whole"),
    ("/{job_id}/output", "GET"): Case("read", 200, True, "output"),
    ("/{job_id}/output/raw", "GET"): Case("read", 200, True, "output"),
    ("/{job_id}/versions", "POST"): Case("write", 201, True, "output"),
    ("/{job_id}/versions", "GET"): Case("read", 200, True, "job"),
    ("/{job_id}/stream", "GET"): Case("read", 200, True, "terminal"),
    ("/{job_id}/deliveries", "GET"): Case("inspect", 200, True, "job"),
    ("/{job_id}/deliveries/{delivery_id}/retry", "POST"): Case("write", 202, True, "delivery"),
}

_NS = "/api/v1/namespaces/{namespace}"
_OTHER_CASES: dict[tuple[str, str], Case] = {
    (_NS, "PUT"): Case("admin", 200, body={"webhookUrl": HOOK}),
    (_NS, "GET"): Case("admin", 200),
    (f"{_NS}/keys", "POST"): Case("admin", 201, body={"role": "consumer"}),
    (f"{_NS}/keys", "GET"): Case("admin", 200),
    (f"{_NS}/keys/{{key_id}}", "GET"): Case("admin", 200, prepare="key"),
    (f"{_NS}/keys/{{key_id}}", "DELETE"): Case("admin", 204, prepare="key"),
    (f"{_NS}/keys/{{key_id}}/rotate", "POST"): Case("admin", 201, prepare="key"),
    (f"{_NS}/subscriber-tokens", "POST"): Case("mint", 201, body={}),
    (f"{_NS}/audit", "GET"): Case("admin", 200),
    (f"{_NS}/webhook-secrets", "POST"): Case("admin", 201),
    (f"{_NS}/webhook-endpoints", "GET"): Case("admin", 200),
    (f"{_NS}/webhook-endpoints/enable", "POST"): Case("admin", 200, body={"url": HOOK}),
    (f"{_NS}/deliveries", "GET"): Case("inspect", 200),
    (f"{_NS}/deliveries/replay", "POST"): Case(
        "write", 202, body={"since": "2020-01-01T00:00:00Z"}
    ),
    ("/healthz", "GET"): Case("public", 200),
    ("/readyz", "GET"): Case("public", 200),
    ("/metrics", "GET"): Case("public", 200),
    ("/openapi.json", "GET"): Case("public", 200),
    ("/internal/v1/cluster/ping", "GET"): Case("public", 200),
    ("/api/v1/cluster", "GET"): Case("root", 200),
}


def cases() -> dict[tuple[str, str], Case]:
    """Every served route with its case; a route missing here is an error."""
    table: dict[tuple[str, str], Case] = {}
    for prefix in ("/api/v1/jobs", f"{_NS}/jobs"):
        for (suffix, method), case in _JOB_CASES.items():
            table[(prefix + suffix, method)] = case
    table.update(_OTHER_CASES)
    return table


def expected(case: Case, role: str, where: str, state: str) -> int:
    """The status one cell must answer."""
    if case.need == "public":
        return case.ok
    if role == "none" or state != "valid":
        return 401
    if role == "root":
        return case.ok
    if case.need == "root" or where == "other" or case.need not in PERMITS[role]:
        return 403
    if role == "subscriber-otherjob" or (role == "subscriber-job" and not case.on_job):
        return 403
    return case.ok


def cells() -> list[tuple[str, str, str, str, Case]]:
    """``(path, method, role, where, state)`` of every cell, with its case."""
    out = []
    for (path, method), case in cases().items():
        for role in ROLES:
            wheres = ["own"] if role in ("root", "none") else ["own", "other"]
            states = ["valid"] if role in ("root", "none") else STATES
            for where, state in itertools.product(wheres, states):
                out.append((path, method, role, where, state, case))
    return out


# -- running it ---------------------------------------------------------------------


class World:
    """Two namespaces with keys of every role and state, and ways to make more."""

    def __init__(self, client: httpx.AsyncClient, store: StorageAdapter) -> None:
        self.client = client
        self.store = store
        self.root = auth(ADMIN_TOKEN)
        self.keys: dict[tuple[str, str, str], str] = {}  # (ns, role, state) -> key
        self.secrets: dict[str, tuple[str, str]] = {}  # ns -> (kid, secret) of the managed key
        self.gone = ("gone", "g" * 40)  # a subscriber key removed after signing
        self._ids = itertools.count()

    async def call(
        self, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        response = await self.client.request(
            method, url, headers={**self.root, **(headers or {})}, **kwargs
        )
        assert response.status_code < 300, (method, url, response.text)
        return response

    async def build(self) -> None:
        for ns in (OWN, OTHER):
            gone = {"kid": self.gone[0], "alg": "HS256", "secret": self.gone[1]}
            await self.call(
                "PUT",
                f"/api/v1/namespaces/{ns}",
                json={"webhookUrl": HOOK, "subscriberKeys": [gone]},
            )
            await self.call("POST", f"/api/v1/namespaces/{ns}/subscriber-tokens", json={})
            record = await self.store.get_namespace(ns)
            assert record is not None
            managed = next(k for k in record.config["subscriberKeys"] if k.get("managed"))
            self.secrets[ns] = (managed["kid"], managed["secret"])
            for role in ("admin", "producer", "consumer"):
                for state in STATES:
                    body: dict[str, Any] = {"role": role}
                    if state == "expired":
                        body["expiresIn"] = 1
                    made = await self.call("POST", f"/api/v1/namespaces/{ns}/keys", json=body)
                    self.keys[(ns, role, state)] = made.json()["key"]
                    if state == "revoked":
                        key_id = made.json()["keyId"]
                        await self.call("DELETE", f"/api/v1/namespaces/{ns}/keys/{key_id}")
            # the "gone" subscriber key is removed (the tokens it signs are
            # revoked); the service's own key is kept by naming it
            keep = [{"kid": managed["kid"]}]
            await self.call(
                "PUT", f"/api/v1/namespaces/{ns}", json={"webhookUrl": HOOK, "subscriberKeys": keep}
            )
        await asyncio.sleep(1.1)  # the keys made to expire have

    def token(self, ns: str, state: str, job_id: str | None) -> str:
        kid, secret = self.gone if state == "revoked" else self.secrets[ns]
        now = int(time.time())
        exp = now - 120 if state == "expired" else now + 300
        claims: dict[str, Any] = {"aud": "aos", "ns": ns, "iat": exp - 300, "exp": exp}
        if job_id is not None:
            claims["job"] = job_id
        return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})

    def credential(self, role: str, where: str, state: str, job_id: str) -> str | None:
        ns = OWN if where == "own" else OTHER
        if role == "root":
            return ADMIN_TOKEN
        if role == "none":
            return None
        if role == "subscriber":
            return self.token(ns, state, None)
        if role == "subscriber-job":
            return self.token(ns, state, job_id)
        if role == "subscriber-otherjob":
            return self.token(ns, state, "some-other-job")
        return self.keys[(ns, role, state)]

    async def prepare(self, case: Case) -> dict[str, str]:
        """Fresh resources for one request: its path parameters."""
        n = next(self._ids)
        params = {"namespace": OWN, "job_id": f"job-{n}", "key_id": "", "delivery_id": ""}
        jobs = f"/api/v1/namespaces/{OWN}/jobs"
        if case.prepare in ("job", "output", "terminal", "delivery"):
            await self.call("POST", jobs, json={"jobId": params["job_id"]})
        if case.prepare in ("output", "terminal"):
            await self.call(
                "POST",
                f"{jobs}/{params['job_id']}/output",
                content=b"out",
                headers={"content-type": "text/plain"},
            )
        if case.prepare == "terminal":
            await self.call(
                "PATCH", f"{jobs}/{params['job_id']}/status", json={"status": "Succeeded"}
            )
        if case.prepare == "delivery":
            listed = await self.call("GET", f"{jobs}/{params['job_id']}/deliveries")
            params["delivery_id"] = listed.json()["items"][0]["deliveryId"]
        if case.prepare == "key":
            made = await self.call(
                "POST", f"/api/v1/namespaces/{OWN}/keys", json={"role": "consumer"}
            )
            params["key_id"] = made.json()["keyId"]
        return params

    async def request(
        self, path: str, method: str, case: Case, role: str, where: str, state: str
    ) -> int:
        params = await self.prepare(case)
        url = path.format(**params)
        headers = {"X-Namespace": OWN}
        credential = self.credential(role, where, state, params["job_id"])
        if credential is not None:
            headers.update(auth(credential))
        kwargs: dict[str, Any] = {"headers": headers, "params": case.query}
        if case.body == "new-job":
            kwargs["json"] = {"jobId": f"new-{params['job_id']}"}
        elif case.body is not None:
            kwargs["json"] = case.body
        if case.content is not None:
            kwargs["content"] = case.content
            headers["content-type"] = "text/plain"
        response = await self.client.request(method, url, **kwargs)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
        return response.status_code


async def run_matrix(
    check: Callable[[str, str, str, str, str, int, int], Awaitable[None] | None],
) -> int:
    store = adapter_for("memory://")
    async with running_app(store, webhooks=False, janitor=False) as client:
        world = World(client, store)
        await world.build()
        count = 0
        for path, method, role, where, state, case in cells():
            got = await world.request(path, method, case, role, where, state)
            check(path, method, role, where, state, got, expected(case, role, where, state))
            count += 1
        return count


def test_every_route_is_in_the_matrix() -> None:
    served = {(path, method) for path, method, _ in route_table()}
    assert served == set(cases()), (
        f"classify the new routes: {sorted(served - set(cases()))}; "
        f"gone: {sorted(set(cases()) - served)}"
    )


async def test_access_matrix() -> None:
    wrong: list[str] = []

    def check(
        path: str, method: str, role: str, where: str, state: str, got: int, want: int
    ) -> None:
        if got != want:
            wrong.append(f"{method} {path} as {role}/{where}/{state}: {got}, expected {want}")

    count = await run_matrix(check)
    assert count == len(cells()) > 1500
    assert not wrong, f"{len(wrong)} of {count} cells differ:\n" + "\n".join(wrong[:60])


def markdown() -> str:
    """The matrix's expected statuses as a Markdown table (own namespace, valid
    credential; every other namespace, expired or revoked credential: 403/401)."""
    roles = [r for r in ROLES if r != "none"]
    lines = [
        "| method | path | " + " | ".join(roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for (path, method), case in cases().items():
        row = [str(expected(case, role, "own", "valid")) for role in roles]
        lines.append(f"| {method} | `{path}` | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())


def test_the_docs_carry_the_matrix() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    start = doc.index("<!-- access-matrix")
    start = doc.index("\n", start) + 1
    end = doc.index("<!-- /access-matrix -->")
    assert doc[start:end].strip() == markdown().strip(), (
        "docs/security.md is behind: paste `python -m tests.api.test_access_matrix` into it"
    )
