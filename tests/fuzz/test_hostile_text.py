"""Text no store wants, in every field that reaches a store, on every store.

Schemathesis fuzzes on ``memory://``, which holds any Python string; the real
stores do not: PostgreSQL refuses NUL in text, MariaDB refuses to compare an
ASCII column with non-ASCII text, and so on. Here each free-text input of
the API (bodies, path segments, query parameters) gets NUL, non-ASCII, lone
surrogates, separators and long strings, and every answer must be a success
or a ``4xx`` problem: validation refuses what a store could not hold.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..support import ADMIN_TOKEN
from .portal import SyncClient, app_on

ROOT = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NS = "/api/v1/namespaces/h"

HOSTILE = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
    st.sampled_from(
        [
            *("\x00", "a\x00b", "é", "💥", "\u2028", "\ud800", "\ufeff", "%00", "..", "/"),
            *("\\", "'; DROP TABLE jobs; --", "a" * 5000, " ", "\t", "\r\n", "0" * 30),
        ]
    ),
)

#: a request: (method, url, JSON body or None)
Request = tuple[str, str, Any]
_serial = itertools.count()


def _segment(text: str) -> str:
    """``text`` as one path segment or query value, lone surrogates and all."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _failed_job(text: str) -> list[Request]:
    job = f"f{next(_serial)}"
    error = {"message": text or "m", "code": text[:128], "details": {text: text}}
    return [
        ("POST", f"{NS}/jobs", {"jobId": job}),
        ("PATCH", f"{NS}/jobs/{job}/status", {"status": "Running"}),
        ("PATCH", f"{NS}/jobs/{job}/status", {"status": "Failed", "error": error}),
    ]


TEMPLATES: dict[str, Callable[[str], list[Request]]] = {
    "metadata": lambda t: [
        ("POST", f"{NS}/jobs", {"metadata": {"title": t, "description": t, "tags": [t], t: t}})
    ],
    "job webhookUrl": lambda t: [("POST", f"{NS}/jobs", {"webhookUrl": f"https://h.example/{t}"})],
    "jobId": lambda t: [("POST", f"{NS}/jobs", {"jobId": t})],
    "job error": _failed_job,
    "estimatedCompletion": lambda t: [
        ("PATCH", f"{NS}/jobs/x/status", {"progress": 1, "estimatedCompletion": t})
    ],
    "namespace config": lambda t: [
        ("PUT", NS, {"webhookUrl": f"https://h.example/{t}", "webhookRetrySchedule": [t]})
    ],
    "webhookSecret": lambda t: [("PUT", NS, {"webhookSecret": f"whsec_{t}"})],
    "key name": lambda t: [("POST", f"{NS}/keys", {"role": "consumer", "name": t})],
    "token subject": lambda t: [("POST", f"{NS}/subscriber-tokens", {"subject": t})],
    "token jobId": lambda t: [("POST", f"{NS}/subscriber-tokens", {"jobId": t})],
    "endpoint url": lambda t: [("POST", f"{NS}/webhook-endpoints/enable", {"url": t})],
    "replay since": lambda t: [("POST", f"{NS}/deliveries/replay", {"since": t})],
    "delivery id": lambda t: [("POST", f"{NS}/jobs/x/deliveries/{_segment(t)}/retry", None)],
    "key id": lambda t: [("GET", f"{NS}/keys/{_segment(t)}", None)],
    "rotated key id": lambda t: [("POST", f"{NS}/keys/{_segment(t)}/rotate", {})],
    "job id path": lambda t: [("GET", f"{NS}/jobs/{_segment(t)}", None)],
    "namespace path": lambda t: [("GET", f"/api/v1/namespaces/{_segment(t)}", None)],
    "tag": lambda t: [("GET", f"{NS}/jobs?tag={_segment(t)}", None)],
    "status filter": lambda t: [("GET", f"{NS}/jobs?status={_segment(t)}", None)],
    "created bounds": lambda t: [("GET", f"{NS}/jobs?createdAfter={_segment(t)}", None)],
    "audit filters": lambda t: [
        ("GET", f"{NS}/audit?action={_segment(t)}&since={_segment(t)}", None)
    ],
    "delivery filters": lambda t: [
        ("GET", f"{NS}/deliveries?state={_segment(t)}&since={_segment(t)}", None)
    ],
}


@pytest.fixture(scope="module", params=["memory", "sqlite", "postgresql", "mysql"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SyncClient]:
    store: str = request.param
    path: Path = tmp_path_factory.mktemp(store)
    with app_on(store, path) as client:
        r = client.put(NS, json={"webhookUrl": "https://hooks.example/h"}, headers=ROOT)
        assert r.status_code == 201, r.text
        r = client.post(f"{NS}/jobs", json={"jobId": "x"}, headers=ROOT)
        assert r.status_code == 201, r.text
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(TEMPLATES)), HOSTILE)
def test_hostile_text_is_stored_or_refused_never_a_500(
    client: SyncClient, field: str, text: str
) -> None:
    for method, url, body in TEMPLATES[field](text):
        # JSON with \u escapes: lone surrogates too, which UTF-8 cannot carry
        content = json.dumps(body).encode() if body is not None else None
        headers = {**ROOT, "Content-Type": "application/json"}
        r = client.request(method, url, content=content, headers=headers)
        assert r.status_code < 500, (field, text, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", r.text
