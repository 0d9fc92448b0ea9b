"""/openapi.json describes exactly the routes the app serves, and real responses fit it."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from service.openapi import build_openapi
from service.routes import route_table

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app

SPEC = build_openapi()


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}


def check(instance: object, name: str) -> None:
    jsonschema.validate(instance, _schema(name), cls=jsonschema.Draft202012Validator)


def test_spec_names_exactly_the_served_routes() -> None:
    served = {
        (
            path.replace("{job_id}", "{jobId}").replace("{delivery_id}", "{deliveryId}"),
            method.lower(),
        )
        for path, method, _ in route_table()
    }
    documented = {
        (path, method)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    }
    assert served == documented


def test_spec_is_openapi_3_1_and_refs_resolve() -> None:
    assert SPEC["openapi"].startswith("3.1")
    text = repr(SPEC)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in SPEC["components"]["schemas"], ref
    for schema in SPEC["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = [
        op["operationId"]
        for item in SPEC["paths"].values()
        for m, op in item.items()
        if m != "parameters"
    ]
    assert len(ids) == len(set(ids))


async def test_responses_match_the_schemas() -> None:
    async with running_app() as client:
        admin = {**auth(ADMIN_TOKEN), "X-Namespace": "spec"}
        r = await client.put(
            "/api/v1/namespaces/spec", json={"webhookUrl": "https://h.example/x"}, headers=admin
        )
        check(r.json(), "Namespace")
        r = await client.post(
            "/api/v1/namespaces/spec/keys", json={"role": "consumer"}, headers=admin
        )
        check(r.json(), "Key")
        r = await client.post(
            "/api/v1/jobs", json={"jobId": "s", "metadata": {"tags": ["t"]}}, headers=admin
        )
        check(r.json(), "Job")
        r = await client.post(
            "/api/v1/jobs/s/output",
            content=b"{}",
            headers={**admin, "Content-Type": "application/json"},
        )
        check(r.json(), "AppendResult")
        r = await client.post("/api/v1/jobs/s/versions", headers=admin)
        check(r.json(), "NewVersion")
        r = await client.patch(
            "/api/v1/jobs/s/status",
            json={"status": "Failed", "error": {"message": "m", "code": "E"}},
            headers=admin,
        )
        check(r.json(), "JobStatus")
        r = await client.get("/api/v1/jobs/s/output?version=1", headers=admin)
        check(r.json(), "Output")
        r = await client.get("/api/v1/jobs/s", headers=admin)
        check(r.json(), "Job")
        r = await client.get("/api/v1/jobs", headers=admin)
        check(r.json(), "JobList")
        r = await client.patch("/api/v1/jobs/s/status", json={"status": "Running"}, headers=admin)
        check(r.json(), "Problem")
        r = await client.get("/api/v1/jobs/s/status", headers=admin)
        check(r.json(), "JobStatus")
        served = await client.get("/openapi.json")
        assert served.json() == SPEC


@pytest.mark.parametrize("name", ["Job", "JobStatus", "Output", "Problem"])
def test_schemas_reject_wrong_shapes(name: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        check({"unexpected": True}, name)
