"""Schemathesis against ``/openapi.json``: every operation, fuzzed in process.

The app runs on ``memory://`` with its lifespan, behind Schemathesis' ASGI
transport. Before fuzzing, a namespace ``fuzz`` is filled with keys, jobs in
every state, output, versions and webhook deliveries, and the hooks below
steer generated path parameters, ``X-Namespace``, ``?namespace=`` and
``Range`` to them often, so that many requests get past ``401``/``403``/
``404`` into the handlers. Each operation gets positive examples (valid by
the schema) and negative ones (invalid by it), sent with the root admin
token, a namespace key of every role, or whatever Schemathesis made up.

Every response must: not be a ``5xx``; have a status the document lists for
the operation; have the content type it lists; carry the headers it lists;
and match its schema. Every operation of the served document is fuzzed (the
parametrisation is checked against it) and must have answered at least one
example with a success status: the steering gets requests into every handler.

Streams cannot hang the run: ``GET …/stream`` is pointed at finished jobs
(a replay that ends), and a request may take at most a few seconds; the
long-poll ``?wait=`` is cut to a few milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import Settings, create_app
from service.openapi import build_openapi

from ..support import ADMIN_TOKEN

#: examples per operation: valid by the schema, and invalid by it
POSITIVE_EXAMPLES = 30
NEGATIVE_EXAMPLES = 20
#: at least this many per operation (those without parameters have fewer to try)
MIN_EXAMPLES = 10
#: seconds a request may take (a stream is cut there, keeping what it sent)
REQUEST_TIMEOUT = 5.0
#: the longest ``?wait=`` sent, in seconds
MAX_WAIT = "0.005"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

NS = "fuzz"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def documented_operations() -> list[tuple[str, str]]:
    """``(operationId, "METHOD /path")`` of every operation ``build_openapi`` names."""
    return [
        (op["operationId"], f"{method.upper()} {path}")
        for path, item in build_openapi()["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


OPERATIONS = documented_operations()


@dataclass
class World:
    """What the fuzzer is pointed at: keys, jobs by state, and deliveries."""

    tokens: dict[str, str] = field(default_factory=dict)
    #: queued or running jobs with output (their state changes as the fuzzer writes)
    live: list[str] = field(default_factory=list)
    #: finished jobs with output in several versions (never written to nor deleted)
    done: list[str] = field(default_factory=list)
    #: jobs whose current version is empty (for PUT …/output)
    fresh: list[str] = field(default_factory=list)
    #: finished jobs for DELETE to remove
    disposable: list[str] = field(default_factory=list)
    #: (job id, delivery id)
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    #: ids of the keys above, and of keys for DELETE and rotation to spend
    keys: list[str] = field(default_factory=list)
    spare_keys: list[str] = field(default_factory=list)


def _ok(response: Any, *statuses: int) -> Any:
    assert response.status_code in statuses, (response.status_code, response.text)
    return response.json() if response.content else None


def seed(client: asgi.ASGIClient) -> World:
    """Fill namespace ``fuzz`` through the API, as the root admin."""
    world = World()
    root = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base = f"/api/v1/namespaces/{NS}"
    _ok(client.put(base, json={"webhookUrl": "https://hooks.example/fuzz"}, headers=root), 201)
    for role in ("admin", "producer", "consumer"):
        key = _ok(client.post(f"{base}/keys", json={"role": role}, headers=root), 201)
        world.tokens[role] = key["key"]
        world.keys.append(key["keyId"])
    for _ in range(3):
        key = _ok(client.post(f"{base}/keys", json={"role": "consumer"}, headers=root), 201)
        world.spare_keys.append(key["keyId"])

    def job(job_id: str, *, status: str | None = None, chunks: int = 0, versions: int = 1) -> str:
        _ok(client.post(f"{base}/jobs", json={"jobId": job_id}, headers=root), 201)
        for version in range(versions):
            if version:
                _ok(client.post(f"{base}/jobs/{job_id}/versions", headers=root), 201)
            for i in range(chunks):
                body = f"line {i} of version {version + 1}: héllo\n".encode()
                r = client.post(
                    f"{base}/jobs/{job_id}/output",
                    data=body,
                    headers={**root, "Content-Type": "text/plain", "X-Chunk-Index": str(i)},
                )
                _ok(r, 201)
        if status is not None:
            r = client.patch(f"{base}/jobs/{job_id}/status", json={"status": status}, headers=root)
            _ok(r, 200)
        return job_id

    world.live += [job("live-0", status="Running", chunks=3), job("live-1", chunks=1)]
    world.live += [job("live-2", status="Running", chunks=2, versions=2)]
    world.done += [job("done-0", status="Running", chunks=3, versions=2)]
    _ok(client.patch(f"{base}/jobs/done-0/status", json={"status": "Succeeded"}, headers=root), 200)
    world.done += [job("done-1", status="Cancelled", chunks=1)]
    job("done-2", status="Running")
    r = client.put(
        f"{base}/jobs/done-2/output",
        data=b'{"a": [1, 2]}',
        headers={**root, "Content-Type": "application/json"},
    )
    _ok(r, 201)
    _ok(client.patch(f"{base}/jobs/done-2/status", json={"status": "Succeeded"}, headers=root), 200)
    world.done.append("done-2")
    world.fresh += [job(f"fresh-{i}") for i in range(3)]
    world.disposable += [job(f"gone-{i}", status="Cancelled") for i in range(3)]
    page = _ok(client.get(f"{base}/deliveries?limit=1000", headers=root), 200)
    world.deliveries = [(d["jobId"], d["deliveryId"]) for d in page["items"]]
    assert world.deliveries, "jobs of a namespace with a webhook URL queue deliveries"
    return world


# -- steering the generated requests towards what exists -----------------------------------

#: which jobs each operation (without its InNamespace suffix) is pointed at
_JOB_POOLS = {
    "streamJob": ("done",),
    "deleteJob": ("disposable", "live"),
    "uploadOutput": ("fresh", "done"),
    "updateJobStatus": ("live", "done"),
    "cancelJob": ("live", "done"),
    "appendOutput": ("live", "done"),
    "startVersion": ("live", "done"),
}
_READ_POOLS = ("done", "live")
_KEY_POOLS = {"revokeKey": ("spare_keys",), "rotateKey": ("spare_keys",)}


def _operation_id(ctx: schemathesis.HookContext) -> str:
    assert ctx.operation is not None
    operation_id: str = ctx.operation.definition.raw["operationId"]
    return operation_id.removesuffix("InNamespace")


def _ranges() -> st.SearchStrategy[str]:
    """Byte ranges of every form, mostly within a small output."""
    small = st.integers(min_value=0, max_value=300)
    return st.one_of(
        st.builds("bytes={}-{}".format, small, small),
        st.builds("bytes={}-".format, small),
        st.builds("bytes=-{}".format, small),
        st.builds("bytes={}-{}".format, small, st.integers(min_value=0, max_value=10**30)),
        st.sampled_from(["bytes=0-0,2-3", "items=0-1", "bytes=-", "bytes=x-1", "bytes=0-1 "]),
    )


class Steering:
    """Where the hooks steer generated requests: the world of the test running."""

    world: World | None = None

    def pool(self, name: str) -> list[Any]:
        assert self.world is not None, "the hooks run inside a test, after seeding"
        pool: list[Any] = getattr(self.world, name)
        return pool


def install_hooks(schema: Any, steering: Steering) -> None:
    def flatmap_path_parameters(
        ctx: schemathesis.HookContext, params: dict[str, Any] | None
    ) -> st.SearchStrategy[dict[str, Any] | None]:
        if not params:
            return st.just(params)
        known: dict[str, Any] = {"namespace": NS} if "namespace" in params else {}
        key_param = next((name for name in ("key_id", "keyId") if name in params), None)
        if key_param is not None:
            pools = _KEY_POOLS.get(_operation_id(ctx), ("keys", "spare_keys"))
            keys = st.sampled_from([key for pool in pools for key in steering.pool(pool)])
            steered = keys.map(lambda key: {**params, **known, key_param: key})
        elif "deliveryId" in params:
            pairs = st.sampled_from(steering.pool("deliveries"))
            steered = pairs.map(lambda p: {**params, **known, "jobId": p[0], "deliveryId": p[1]})
        elif "jobId" in params:
            pools = _JOB_POOLS.get(_operation_id(ctx), _READ_POOLS)
            jobs = st.sampled_from([job for pool in pools for job in steering.pool(pool)])
            steered = jobs.map(lambda job: {**params, **known, "jobId": job})
        else:
            steered = st.just({**params, **known})
        return st.one_of(steered, st.just(params))

    def flatmap_headers(
        ctx: schemathesis.HookContext, headers: dict[str, Any] | None
    ) -> st.SearchStrategy[dict[str, Any] | None]:
        assert ctx.operation is not None
        names = {p.name for p in ctx.operation.headers}
        # Steered: none of the generated headers (X-Chunk-Index, If-None-Match, ...)
        # but the namespace, or none at all (a key's own namespace).
        steered = {"X-Namespace": NS} if "X-Namespace" in names else {}
        # Hypothesis draws the first option most (the "simplest"): the steered one.
        options = [st.just(steered), st.just(headers), st.just({})]
        if "Range" in names:
            options.append(_ranges().map(lambda r: {**steered, "Range": r}))
        return st.one_of(options)

    def flatmap_query(
        ctx: schemathesis.HookContext, query: dict[str, Any] | None
    ) -> st.SearchStrategy[dict[str, Any] | None]:
        assert ctx.operation is not None
        names = {p.name for p in ctx.operation.query}
        current = dict(query or {})
        wait = current.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            current["wait"] = MAX_WAIT  # a long-poll, held a few milliseconds
        options = [st.just(current if query is not None else query)]
        if "namespace" in names:
            without = {k: v for k, v in current.items() if k != "namespace"}
            options = [st.just(without), st.just({**without, "namespace": NS}), *options]
        return st.one_of(options)

    def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
        operation = _operation_id(ctx)
        if operation == "updateJobStatus":
            # Most generated patches are refused (a transition the job's status
            # does not allow, an error without Failed); these pass.
            progress = st.integers(min_value=0, max_value=100)
            steered = st.one_of(
                st.builds(lambda p: {"progress": p}, progress),
                st.builds(lambda p: {"status": "Running", "progress": p}, progress),
            )
        elif operation == "appendOutput":
            steered = st.text(st.characters(codec="ascii", min_codepoint=32), min_size=1)
        else:
            return st.just(body)
        return st.one_of(steered, st.just(body))

    for hook in (flatmap_path_parameters, flatmap_headers, flatmap_query, flatmap_body):
        schema.hook(hook)


# -- the run ---------------------------------------------------------------------------------


#: operation label -> status -> how many examples got it (printed by conftest.py)
STATS: dict[str, Counter[int]] = {}


def _settings() -> Settings:
    return Settings(
        storage_url="memory://",
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        access_log=False,
        webhooks=False,  # deliveries are queued and listed, never sent
        janitor=False,
    )


@dataclass
class Loaded:
    """The schema as Schemathesis loaded it from an app's ``/openapi.json``."""

    schema: Any
    #: the document itself
    document: dict[str, Any]
    steering: Steering


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    app = create_app(_settings())
    try:
        # Naming every operation includes GET /openapi.json, which is left out otherwise.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
            operation_id=[operation_id for operation_id, _ in OPERATIONS]
        )
        with asgi.get_client(app) as client:
            document = client.get("/openapi.json").json()
        steering = Steering()
        install_hooks(schema, steering)
        yield Loaded(schema, document, steering)
    finally:
        asgi.shutdown_lifespans()


@dataclass
class Target:
    schema: Any
    #: the app under test, seeded
    app: Any
    world: World


@pytest.fixture
def target(loaded: Loaded) -> Iterator[Target]:
    """A fresh app per operation, seeded: what one operation does cannot starve
    another (Schemathesis' pytest plugin ends ASGI lifespans after every test,
    and ``memory://`` forgets everything when it closes)."""
    app = create_app(_settings())
    try:
        with asgi.get_client(app) as client:
            world = seed(client)
        loaded.steering.world = world
        yield Target(loaded.schema, app, world)
    finally:
        loaded.steering.world = None
        asgi.shutdown_lifespans()


def test_every_served_operation_is_fuzzed(loaded: Loaded) -> None:
    """The parametrisation below is every operation of the served ``/openapi.json``."""
    served = {
        f"{method.upper()} {path}"
        for path, item in loaded.document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert served == {label for _, label in OPERATIONS}
    assert len(served) == len(OPERATIONS)
    fuzzed = [result.ok().label for result in loaded.schema.get_all_operations()]
    assert sorted(fuzzed) == sorted(served)


def _credentials(world: World) -> st.SearchStrategy[str | None]:
    """The root token (drawn most: the simplest), keys of ``fuzz`` of every role,
    and ``None``: the Authorization the case carries, whatever was generated."""
    roles = [world.tokens[role] for role in ("admin", "producer", "consumer")]
    return st.sampled_from([ADMIN_TOKEN, *roles, None])


def _takes_input(operation: Any) -> bool:
    return any(
        len(part) for part in (operation.path_parameters, operation.query, operation.headers)
    ) or bool(operation.body)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("operation_id", "label"), OPERATIONS, ids=[o for o, _ in OPERATIONS])
def test_fuzz(target: Target, operation_id: str, label: str) -> None:
    operation = target.schema.find_operation_by_id(operation_id)
    assert operation.label == label
    statuses: Counter[int] = Counter()
    modes = [(schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
    if _takes_input(operation):
        modes.append((schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
    for mode, examples in modes:

        @hypothesis.settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(mode), token=_credentials(target.world))
        def run(case: schemathesis.Case, token: str | None) -> None:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            response = case.call(headers=headers, timeout=REQUEST_TIMEOUT, app=target.app)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

        run()
    STATS[label] = statuses
    assert sum(statuses.values()) >= MIN_EXAMPLES, statuses
    # Steering works: the handler was reached and did its job at least once.
    assert any(200 <= s < 400 for s in statuses), f"{label}: no example succeeded: {statuses}"
