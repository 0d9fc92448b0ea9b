"""Keys, subscriber tokens, rate limits, quotas and the audit log, in process.

Every test drives the real app (memory store) through HTTP; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage_adapters import AuditQuery, adapter_for

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app

ADMIN = auth(ADMIN_TOKEN)
NS = "/api/v1/namespaces"


async def setup(client: httpx.AsyncClient, ns: str = "sec", **config: Any) -> dict[str, str]:
    """Create ``ns`` with ``config``, and a key of each role: role -> token."""
    response = await client.put(f"{NS}/{ns}", json=config, headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    keys = {}
    for role in ("admin", "producer", "consumer"):
        made = await client.post(f"{NS}/{ns}/keys", json={"role": role}, headers=ADMIN)
        assert made.status_code == 201, made.text
        keys[role] = made.json()["key"]
    return keys


async def submit(
    client: httpx.AsyncClient, key: str, job_id: str, ns: str = "sec"
) -> httpx.Response:
    return await client.post(f"{NS}/{ns}/jobs", json={"jobId": job_id}, headers=auth(key))


async def audit_log(
    client: httpx.AsyncClient, ns: str = "sec", **params: str
) -> list[dict[str, Any]]:
    response = await client.get(f"{NS}/{ns}/audit", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# -- keys ---------------------------------------------------------------------------


async def test_key_lifecycle_create_list_use_revoke() -> None:
    async with running_app(key_last_used_interval=0.0) as client:
        await setup(client)
        made = await client.post(
            f"{NS}/sec/keys",
            json={"role": "producer", "name": "ci deploy", "expiresIn": "P30D"},
            headers=ADMIN,
        )
        assert made.status_code == 201
        key = made.json()
        assert key["name"] == "ci deploy" and key["state"] == "active"
        assert key["expiresAt"] is not None and key["lastUsedAt"] is None
        token, key_id = key["key"], key["keyId"]

        assert (await submit(client, token, "j1")).status_code == 201
        await asyncio.sleep(0.05)  # lastUsedAt is written in the background
        listed = await client.get(f"{NS}/sec/keys", headers=ADMIN)
        assert listed.status_code == 200
        mine = next(k for k in listed.json()["items"] if k["keyId"] == key_id)
        assert mine["lastUsedAt"] is not None
        assert "key" not in mine and token not in listed.text
        assert len(listed.json()["items"]) == 4

        assert (await client.delete(f"{NS}/sec/keys/{key_id}", headers=ADMIN)).status_code == 204
        refused = await submit(client, token, "j2")
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        got = await client.get(f"{NS}/sec/keys/{key_id}", headers=ADMIN)
        assert got.json()["state"] == "revoked" and got.json()["revokedAt"] is not None
        # revoking again is a no-op; unknown keys are 404
        assert (await client.delete(f"{NS}/sec/keys/{key_id}", headers=ADMIN)).status_code == 204
        assert (await client.get(f"{NS}/sec/keys/nope", headers=ADMIN)).status_code == 404
        assert (await client.delete(f"{NS}/sec/keys/NOPE!", headers=ADMIN)).status_code == 404


async def test_an_expired_key_stops_working() -> None:
    async with running_app() as client:
        await setup(client)
        made = await client.post(
            f"{NS}/sec/keys", json={"role": "consumer", "expiresIn": 2}, headers=ADMIN
        )
        token = made.json()["key"]
        assert (await client.get(f"{NS}/sec/jobs", headers=auth(token))).status_code == 200
        await asyncio.sleep(2.1)  # it was cached as valid: the expiry still applies
        refused = await client.get(f"{NS}/sec/jobs", headers=auth(token))
        assert refused.status_code == 401 and "expired" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"role": "root"}, "/role"),
        ({"role": "subscriber"}, "/role"),
        ({"role": "consumer", "name": ""}, "/name"),
        ({"role": "consumer", "expiresIn": -5}, "/expiresIn"),
        ({"role": "consumer", "expiresAt": "2000-01-01T00:00:00Z"}, "/expiresAt"),
        ({"role": "consumer", "expiresAt": "tomorrow"}, "/expiresAt"),
        ({"role": "consumer", "expiresIn": 60, "expiresAt": "2999-01-01T00:00:00Z"}, "/expiresAt"),
        ({"role": "consumer", "colour": "red"}, "/colour"),
    ],
)
async def test_bad_key_requests_are_422_and_create_nothing(
    body: dict[str, Any], pointer: str
) -> None:
    async with running_app() as client:
        await setup(client)
        response = await client.post(f"{NS}/sec/keys", json=body, headers=ADMIN)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert pointer in {e["pointer"] for e in response.json()["errors"]}
        assert len((await client.get(f"{NS}/sec/keys", headers=ADMIN)).json()["items"]) == 3


async def test_rotation_keeps_the_old_key_for_the_grace_period() -> None:
    async with running_app() as client:
        keys = await setup(client)
        listed = (await client.get(f"{NS}/sec/keys", headers=ADMIN)).json()["items"]
        producer = next(k for k in listed if k["role"] == "producer")
        rotated = await client.post(
            f"{NS}/sec/keys/{producer['keyId']}/rotate", json={"gracePeriod": 2}, headers=ADMIN
        )
        assert rotated.status_code == 201
        new = rotated.json()
        assert new["role"] == "producer" and new["keyId"] != producer["keyId"]
        assert (await submit(client, new["key"], "by-new")).status_code == 201
        assert (await submit(client, keys["producer"], "by-old")).status_code == 201
        await asyncio.sleep(2.1)
        assert (await submit(client, keys["producer"], "too-late")).status_code == 401
        old = await client.get(f"{NS}/sec/keys/{producer['keyId']}", headers=ADMIN)
        assert old.json()["state"] == "expired"
        again = await client.post(f"{NS}/sec/keys/{producer['keyId']}/rotate", headers=ADMIN)
        assert again.status_code == 409
        # rotation with no grace ends the old key at once
        consumer = next(k for k in listed if k["role"] == "consumer")
        await client.post(
            f"{NS}/sec/keys/{consumer['keyId']}/rotate", json={"gracePeriod": 0}, headers=ADMIN
        )
        assert (
            await client.get(f"{NS}/sec/jobs", headers=auth(keys["consumer"]))
        ).status_code == 401


async def test_the_key_count_of_a_namespace_is_bounded() -> None:
    async with running_app(max_keys_per_namespace=4) as client:
        await setup(client)  # three keys
        assert (
            await client.post(f"{NS}/sec/keys", json={"role": "consumer"}, headers=ADMIN)
        ).status_code == 201
        refused = await client.post(f"{NS}/sec/keys", json={"role": "consumer"}, headers=ADMIN)
        assert refused.status_code == 409 and refused.json()["type"] == "urn:aos:problem:key-limit"


# -- subscriber tokens --------------------------------------------------------------


async def mint(client: httpx.AsyncClient, key: str, ns: str = "sec", **body: Any) -> str:
    response = await client.post(f"{NS}/{ns}/subscriber-tokens", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_a_subscriber_token_reads_but_never_writes() -> None:
    async with running_app() as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        await client.post(
            f"{NS}/sec/jobs/j1/output",
            content=b"hello",
            headers={**auth(keys["producer"]), "content-type": "text/plain"},
        )
        await client.patch(
            f"{NS}/sec/jobs/j1/status", json={"status": "Succeeded"}, headers=auth(keys["producer"])
        )
        token = await mint(client, keys["producer"], subject="browser-7")
        header = auth(token)
        assert (await client.get(f"{NS}/sec/jobs/j1/status", headers=header)).status_code == 200
        assert (await client.get("/api/v1/jobs/j1/output", headers=header)).json()[
            "output"
        ] == "hello"
        # EventSource cannot send headers: the query parameter does
        stream = await client.get(f"{NS}/sec/jobs/j1/stream?access_token={token}")
        assert stream.status_code == 200 and "data:" in stream.text and "event: end" in stream.text
        assert (await client.get(f"{NS}/sec/jobs", headers=header)).status_code == 200
        for method, path in (
            ("POST", f"{NS}/sec/jobs/j1/cancel"),
            ("DELETE", f"{NS}/sec/jobs/j1"),
            ("POST", f"{NS}/sec/jobs"),
            ("GET", f"{NS}/sec/jobs/j1/deliveries"),
            ("GET", f"{NS}/sec"),
            ("POST", f"{NS}/sec/subscriber-tokens"),
        ):
            response = await client.request(method, path, headers=header, json={"jobId": "x"})
            assert response.status_code == 403, (method, path, response.text)
        # another namespace
        await setup(client, "other")
        assert (await client.get(f"{NS}/other/jobs", headers=header)).status_code == 403


async def test_a_job_scoped_token_reads_that_job_only() -> None:
    async with running_app() as client:
        keys = await setup(client)
        for job in ("mine", "theirs"):
            await submit(client, keys["producer"], job)
        token = await mint(client, keys["consumer"], jobId="mine", ttl="PT5M")
        assert (await client.get(f"{NS}/sec/jobs/mine", headers=auth(token))).status_code == 200
        assert (await client.get(f"{NS}/sec/jobs/theirs", headers=auth(token))).status_code == 403
        assert (await client.get(f"{NS}/sec/jobs", headers=auth(token))).status_code == 403


async def test_tokens_in_the_query_only_for_get_and_never_keys() -> None:
    async with running_app() as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        token = await mint(client, keys["producer"])
        posted = await client.post(f"{NS}/sec/jobs/j1/cancel?access_token={token}")
        assert posted.status_code == 401
        key_in_query = await client.get(f"{NS}/sec/jobs/j1?access_token={keys['consumer']}")
        assert key_in_query.status_code == 401
        assert "Authorization header" in key_in_query.json()["detail"]


async def test_expired_and_forged_tokens_are_refused() -> None:
    async with running_app(max_token_lifetime=3600.0) as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        short = await mint(client, keys["producer"], ttl=1)
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(short))).status_code == 200
        # past exp plus the 30 s leeway: sign one that expired a minute ago
        namespace = (await client.get(f"{NS}/sec", headers=ADMIN)).json()
        kid = namespace["subscriberKeys"][0]["kid"]
        assert "secret" not in namespace["subscriberKeys"][0]
        wrong_secret = jwt.encode(
            {"aud": "aos", "ns": "sec", "exp": int(time.time()) + 60},
            "x" * 32,
            algorithm="HS256",
            headers={"kid": kid},
        )
        for bad, why in (
            (wrong_secret, "signature"),
            ("a.b.c", "not a JWT"),
            (short[:-4] + "AAAA", "signature"),
        ):
            refused = await client.get(f"{NS}/sec/jobs/j1", headers=auth(bad))
            assert refused.status_code == 401, why
        too_long = await client.post(
            f"{NS}/sec/subscriber-tokens", json={"ttl": "P2D"}, headers=auth(keys["producer"])
        )
        assert too_long.status_code == 422


async def test_app_signed_eddsa_tokens_and_key_removal() -> None:
    private = Ed25519PrivateKey.generate()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    async with running_app() as client:
        keys = await setup(
            client, subscriberKeys=[{"kid": "app-1", "alg": "EdDSA", "publicKey": public_pem}]
        )
        await submit(client, keys["producer"], "j1")
        now = int(time.time())
        claims = {
            "aud": "aos",
            "ns": "sec",
            "job": "j1",
            "sub": "u42",
            "iat": now,
            "exp": now + 300,
        }
        token = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "app-1"})
        assert (
            await client.get(f"{NS}/sec/jobs/j1/status", headers=auth(token))
        ).status_code == 200
        # algorithm confusion: HS256 "signed" with the public key must not pass
        confused = jwt.encode(
            claims, public_pem.encode()[:64], algorithm="HS256", headers={"kid": "app-1"}
        )
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(confused))).status_code == 401
        # a token living longer than AOS_MAX_TOKEN_LIFETIME is refused
        forever = jwt.encode(
            {**claims, "exp": now + 10 * 86_400},
            private,
            algorithm="EdDSA",
            headers={"kid": "app-1"},
        )
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(forever))).status_code == 401
        # another namespace's claim with this key: no key of that namespace has this kid
        await setup(client, "other")
        elsewhere = jwt.encode(
            {**claims, "ns": "other"}, private, algorithm="EdDSA", headers={"kid": "app-1"}
        )
        assert (await client.get(f"{NS}/other/jobs/j1", headers=auth(elsewhere))).status_code == 401
        # removing the key revokes its tokens
        await client.put(f"{NS}/sec", json={"subscriberKeys": []}, headers=ADMIN)
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 401


@pytest.mark.parametrize(
    "entry",
    [
        {"kid": "k", "alg": "HS256", "secret": "short"},
        {"kid": "k", "alg": "RS256", "secret": "x" * 40},
        {"kid": "k", "alg": "EdDSA", "publicKey": "not a key"},
        {"kid": "bad kid", "alg": "HS256", "secret": "x" * 40},
        {"kid": "aos-mine", "alg": "HS256", "secret": "x" * 40},
        {"kid": "k", "alg": "HS256", "secret": "x" * 40, "publicKey": "x"},
    ],
)
async def test_bad_subscriber_keys_are_422(entry: dict[str, Any]) -> None:
    async with running_app() as client:
        response = await client.put(f"{NS}/sec", json={"subscriberKeys": [entry]}, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"].startswith("/subscriberKeys")


# -- rate limits --------------------------------------------------------------------


async def test_per_key_rate_limit_is_429_with_retry_after_and_writes_nothing() -> None:
    async with running_app() as client:
        keys = await setup(client, rateLimits={"perKey": {"rate": 0.5, "burst": 3}})
        producer = auth(keys["producer"])
        assert (await submit(client, keys["producer"], "j1")).status_code == 201
        for n in range(2):
            appended = await client.post(
                f"{NS}/sec/jobs/j1/output",
                content=f"{n}".encode(),
                headers={**producer, "content-type": "text/plain"},
            )
            assert appended.status_code == 201
        limited = await client.post(
            f"{NS}/sec/jobs/j1/output",
            content=b"lost?",
            headers={**producer, "content-type": "text/plain"},
        )
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["type"] == "urn:aos:problem:rate-limited"
        assert limited.json()["limit"] == "rate:perKey"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        # nothing of the refused request was written
        output = await client.get(f"{NS}/sec/jobs/j1/output", headers=ADMIN)
        assert output.json()["output"] == "01"
        # other keys have their own buckets; the root admin is never limited
        assert (
            await client.get(f"{NS}/sec/jobs/j1", headers=auth(keys["consumer"]))
        ).status_code == 200
        for _ in range(5):
            assert (await client.get(f"{NS}/sec/jobs/j1", headers=ADMIN)).status_code == 200
        await asyncio.sleep(2.1)  # one token back at 0.5/s
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=producer)).status_code == 200


async def test_namespace_rate_limit_covers_every_key() -> None:
    async with running_app() as client:
        keys = await setup(client, rateLimits={"namespace": {"rate": 0.1, "burst": 4}})
        statuses = [
            (await client.get(f"{NS}/sec/jobs", headers=auth(keys[role]))).status_code
            for role in ("admin", "producer", "consumer", "admin", "producer")
        ]
        assert statuses == [200, 200, 200, 200, 429]
        # the limit is the namespace's: another namespace is not affected
        other = await setup(client, "other")
        assert (
            await client.get(f"{NS}/other/jobs", headers=auth(other["consumer"]))
        ).status_code == 200


async def test_status_polls_are_limited_per_job() -> None:
    async with running_app() as client:
        keys = await setup(client, rateLimits={"statusPolls": {"rate": 0.1, "burst": 2}})
        for job in ("a", "b"):
            await submit(client, keys["producer"], job)
        consumer = auth(keys["consumer"])
        codes = [
            (await client.get(f"{NS}/sec/jobs/a/status", headers=consumer)).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        assert (await client.get(f"{NS}/sec/jobs/b/status", headers=consumer)).status_code == 200
        # only status reads count
        assert (await client.get(f"{NS}/sec/jobs/a", headers=consumer)).status_code == 200


@pytest.mark.parametrize(
    ("config", "pointer"),
    [
        ({"rateLimits": {"perKey": {"rate": 0, "burst": 1}}}, "/rateLimits/perKey/rate"),
        ({"rateLimits": {"perKey": {"rate": 1}}}, "/rateLimits/perKey"),
        ({"rateLimits": {"perKey": {"rate": 1, "burst": 0.5}}}, "/rateLimits/perKey/burst"),
        ({"rateLimits": {"everyone": {"rate": 1, "burst": 1}}}, "/rateLimits/everyone"),
        ({"quotas": {"maxJobs": -1}}, "/quotas/maxJobs"),
        ({"quotas": {"maxJobs": 1.5}}, "/quotas/maxJobs"),
        ({"quotas": {"maxJobs": True}}, "/quotas/maxJobs"),
        ({"quotas": {"maxWidgets": 1}}, "/quotas/maxWidgets"),
        ({"quotas": []}, "/quotas"),
        ({"auditRetention": "forever"}, "/auditRetention"),
    ],
)
async def test_bad_limits_are_422(config: dict[str, Any], pointer: str) -> None:
    async with running_app() as client:
        response = await client.put(f"{NS}/sec", json=config, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert pointer in {e["pointer"] for e in response.json()["errors"]}
        assert (await client.get(f"{NS}/sec", headers=ADMIN)).status_code == 404


# -- quotas -------------------------------------------------------------------------


async def test_job_quota_refuses_the_next_job_and_frees_up_on_delete() -> None:
    async with running_app() as client:
        keys = await setup(client, quotas={"maxJobs": 2})
        assert (await submit(client, keys["producer"], "j1")).status_code == 201
        assert (await submit(client, keys["producer"], "j2")).status_code == 201
        refused = await submit(client, keys["producer"], "j3")
        assert (
            refused.status_code == 429
            and refused.json()["type"] == "urn:aos:problem:quota-exceeded"
        )
        assert (
            refused.json()["limit"] == "quota:maxJobs" and int(refused.headers["retry-after"]) > 0
        )
        assert (await client.get(f"{NS}/sec/jobs/j3", headers=ADMIN)).status_code == 404
        # a retry of a job that exists is not a new job
        assert (await submit(client, keys["producer"], "j1")).status_code == 200
        await client.post(f"{NS}/sec/jobs/j1/cancel", headers=auth(keys["producer"]))
        assert (
            await client.delete(f"{NS}/sec/jobs/j1", headers=auth(keys["producer"]))
        ).status_code == 204
        assert (await submit(client, keys["producer"], "j3")).status_code == 201


async def test_concurrent_submits_never_pass_the_job_quota() -> None:
    async with running_app() as client:
        keys = await setup(client, quotas={"maxJobs": 5})
        results = await asyncio.gather(
            *(submit(client, keys["producer"], f"j{n}") for n in range(20))
        )
        assert sorted(r.status_code for r in results) == [201] * 5 + [429] * 15
        listed = await client.get(f"{NS}/sec/jobs", headers=ADMIN)
        assert len(listed.json()["items"]) == 5


async def test_stored_bytes_quota_and_output_size_quota() -> None:
    async with running_app() as client:
        keys = await setup(client, quotas={"maxStoredBytes": 100, "maxOutputBytes": 80})
        producer = {**auth(keys["producer"]), "content-type": "application/octet-stream"}
        for job in ("a", "b"):
            await submit(client, keys["producer"], job)
        assert (
            await client.post(f"{NS}/sec/jobs/a/output", content=b"x" * 60, headers=producer)
        ).status_code == 201
        too_big = await client.post(f"{NS}/sec/jobs/a/output", content=b"x" * 30, headers=producer)
        assert too_big.status_code == 413, too_big.text  # past maxOutputBytes for one output
        over = await client.post(f"{NS}/sec/jobs/b/output", content=b"y" * 50, headers=producer)
        assert over.status_code == 429 and over.json()["limit"] == "quota:maxStoredBytes"
        job_b = (await client.get(f"{NS}/sec/jobs/b", headers=ADMIN)).json()
        assert job_b["lastSeq"] == 1 and job_b["status"] == "Queued"  # nothing written
        fits = await client.post(f"{NS}/sec/jobs/b/output", content=b"y" * 40, headers=producer)
        assert fits.status_code == 201

        async def chunked() -> Any:
            yield b"z" * 10

        unsized = await client.put(f"{NS}/sec/jobs/b/output", content=chunked(), headers=producer)
        assert unsized.status_code == 411
        await submit(client, keys["producer"], "c")
        sized = await client.put(
            f"{NS}/sec/jobs/c/output",
            content=b"z" * 10,
            headers={**producer, "content-length": "10"},
        )
        assert sized.status_code == 429


# -- audit --------------------------------------------------------------------------


async def test_every_audited_action_leaves_an_entry() -> None:
    async with running_app(webhook_allow_networks=("127.0.0.0/8",)) as client:
        keys = await setup(client)
        await setup(client, "other")
        producer = auth(keys["producer"])
        rid = {"X-Request-ID": "req-submit-1"}
        await client.post(f"{NS}/sec/jobs", json={"jobId": "j1"}, headers={**producer, **rid})
        await client.post(f"{NS}/sec/jobs/j1/cancel", headers=producer)
        await client.delete(f"{NS}/sec/jobs/j1", headers=producer)
        await client.put(f"{NS}/sec", json={"quotas": {"maxJobs": 10}}, headers=ADMIN)
        await client.post(f"{NS}/sec/webhook-secrets", headers=ADMIN)
        await client.post(
            f"{NS}/sec/webhook-endpoints/enable",
            json={"url": "http://127.0.0.1:9/h"},
            headers=ADMIN,
        )
        await client.post(
            f"{NS}/sec/deliveries/replay", json={"since": "2020-01-01T00:00:00Z"}, headers=producer
        )
        # failures: a wrong secret, a key used on another namespace, a consumer writing
        wrong = keys["consumer"][:-3] + "zzz"
        assert (await client.get(f"{NS}/sec/jobs", headers=auth(wrong))).status_code == 401
        assert (await client.get(f"{NS}/other/jobs", headers=producer)).status_code == 403
        assert (await submit(client, keys["consumer"], "nope")).status_code == 403
        listed = (await client.get(f"{NS}/sec/keys", headers=ADMIN)).json()["items"]
        consumer_id = next(k["keyId"] for k in listed if k["role"] == "consumer")
        await client.post(f"{NS}/sec/keys/{consumer_id}/rotate", headers=ADMIN)
        await client.delete(f"{NS}/sec/keys/{consumer_id}", headers=ADMIN)

        entries = await audit_log(client, limit="100")
        actions = [e["action"] for e in entries]
        for action in (
            "namespace.create",
            "key.create",
            "job.submit",
            "job.cancel",
            "job.delete",
            "namespace.update",
            "webhook.secret.rotate",
            "webhook.endpoint.enable",
            "delivery.replay",
            "auth.failure",
            "auth.forbidden",
            "key.rotate",
            "key.revoke",
        ):
            assert action in actions, action
        assert actions.index("key.revoke") < actions.index("job.submit"), "newest first"
        submit_entry = next(e for e in entries if e["action"] == "job.submit")
        producer_id = next(k["keyId"] for k in listed if k["role"] == "producer")
        assert submit_entry["actor"] == f"key:{producer_id}"
        assert submit_entry["target"] == "j1" and submit_entry["requestId"] == "req-submit-1"
        assert submit_entry["outcome"] == "success"
        failure = next(e for e in entries if e["action"] == "auth.failure")
        assert failure["outcome"] == "failure" and failure["actor"] == f"key:{consumer_id}"
        forbidden = [e for e in entries if e["action"] == "auth.forbidden"]
        assert {e["detail"]["requestedNamespace"] for e in forbidden} == {"other", "sec"}
        update = next(e for e in entries if e["action"] == "namespace.update")
        assert update["detail"]["fields"] == ["quotas"] and update["actor"] == "root"
        # no secret ever lands in the log
        text = (await client.get(f"{NS}/sec/audit?limit=1000", headers=ADMIN)).text
        for secret in (*keys.values(), wrong):
            assert secret not in text and secret.rsplit(".", 1)[1] not in text
        # the other namespace's log holds only its own entries
        assert {e["action"] for e in await audit_log(client, "other")} == {
            "namespace.create",
            "key.create",
        }


async def test_audit_pages_filters_and_is_admin_only() -> None:
    async with running_app() as client:
        keys = await setup(client)
        for n in range(7):
            await submit(client, keys["producer"], f"j{n}")
        first = await client.get(f"{NS}/sec/audit", params={"limit": 4}, headers=ADMIN)
        page = first.json()
        assert len(page["items"]) == 4 and page["nextCursor"]
        seen = [e["id"] for e in page["items"]]
        while page["nextCursor"]:
            page = (
                await client.get(
                    f"{NS}/sec/audit",
                    params={"limit": 4, "cursor": page["nextCursor"]},
                    headers=ADMIN,
                )
            ).json()
            seen += [e["id"] for e in page["items"]]
        assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 11
        jobs_only = await audit_log(client, action="job.")
        assert [e["target"] for e in jobs_only] == [f"j{n}" for n in reversed(range(7))]
        assert await audit_log(client, since="2999-01-01T00:00:00Z") == []
        assert len(await audit_log(client, until="2999-01-01T00:00:00Z", limit="1000")) == 11
        for bad in (
            {"cursor": "garbage"},
            {"limit": "0"},
            {"since": "yesterday"},
            {"action": "DROP TABLE"},
        ):
            response = await client.get(f"{NS}/sec/audit", params=bad, headers=ADMIN)
            assert response.status_code == 400, bad
        for role in ("producer", "consumer"):
            refused = await client.get(f"{NS}/sec/audit", headers=auth(keys[role]))
            assert refused.status_code == 403
        assert (await client.get(f"{NS}/sec/audit", headers=auth(keys["admin"]))).status_code == 200


async def test_audit_retention_hides_and_purges_old_entries() -> None:
    store = adapter_for("memory://")
    async with running_app(store, janitor=False) as client:
        keys = await setup(client, auditRetention=3)  # (room for a slow machine)
        await submit(client, keys["producer"], "old")
        assert len(await audit_log(client)) == 5
        await asyncio.sleep(3.1)
        await client.put(f"{NS}/sec", json={"auditRetention": "P1D"}, headers=ADMIN)
        await submit(client, keys["producer"], "new")
        entries = await audit_log(client)
        assert [e["action"] for e in entries] == ["job.submit", "namespace.update"]
        state = client._transport.app.state.aos  # type: ignore[attr-defined]
        assert await state.audit.purge(100) == 5
        assert [e["target"] for e in await audit_log(client)] == ["new", "sec"]


async def test_concurrent_first_mints_all_give_working_tokens() -> None:
    async with running_app() as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        minted = await asyncio.gather(*(mint(client, keys["producer"]) for _ in range(8)))
        for token in minted:
            assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 200
        listed = (await client.get(f"{NS}/sec", headers=ADMIN)).json()["subscriberKeys"]
        assert [k["managed"] for k in listed] == [True]


async def test_token_secrets_are_sealed_at_rest_when_encryption_is_on() -> None:
    master = "mk1:" + base64.b64encode(os.urandom(32)).decode()
    store = adapter_for("memory://")
    secret = "s" * 40
    async with running_app(store, master_keys=master) as client:
        keys = await setup(
            client, subscriberKeys=[{"kid": "app", "alg": "HS256", "secret": secret}]
        )
        await submit(client, keys["producer"], "j1")
        minted = await mint(client, keys["producer"])
        record = await store.get_namespace("sec")
        assert record is not None
        stored = str(record.config["subscriberKeys"])
        managed = next(k for k in record.config["subscriberKeys"] if k.get("managed"))
        assert secret not in stored and managed["secret"].startswith("enc:v1:")
        signed = jwt.encode(
            {"aud": "aos", "ns": "sec", "exp": int(time.time()) + 60},
            secret,
            algorithm="HS256",
            headers={"kid": "app"},
        )
        for token in (minted, signed):
            assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 200
        view = (await client.get(f"{NS}/sec", headers=ADMIN)).text
        assert secret not in view and "enc:v1" not in view


async def test_a_flood_of_bad_keys_cannot_flood_the_audit_log() -> None:
    store = adapter_for("memory://")
    async with running_app(store) as client:
        await setup(client)
        for n in range(200):  # every one a different made-up key id
            bad = f"aos.sec.k{n:04d}.{'x' * 43}"
            assert (await client.get(f"{NS}/sec/jobs", headers=auth(bad))).status_code == 401
            ghost = f"aos.ghost.k{n:04d}.{'x' * 43}"
            assert (await client.get(f"{NS}/ghost/jobs", headers=auth(ghost))).status_code == 401
        failures = await audit_log(client, action="auth.", limit="1000")
        assert len(failures) == 50
        assert all(e["detail"]["reason"] == "unknown key or wrong secret" for e in failures)
        state = client._transport.app.state.aos  # type: ignore[attr-defined]
        await state.audit.flush()
        assert await store.list_audit("ghost", AuditQuery(limit=10)) == []
        metrics = (await client.get("/metrics")).text
        assert "aos_audit_suppressed_total 150.0" in metrics


async def test_minted_tokens_live_no_longer_than_the_key_that_minted_them() -> None:
    async with running_app() as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        short = await client.post(
            f"{NS}/sec/keys", json={"role": "consumer", "expiresIn": 60}, headers=ADMIN
        )
        minted = await client.post(
            f"{NS}/sec/subscriber-tokens",
            json={"ttl": "PT1H"},
            headers=auth(short.json()["key"]),
        )
        assert minted.status_code == 201
        claims = jwt.decode(minted.json()["token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] <= 60, "capped at the key's expiry"
        assert claims["mk"] == short.json()["keyId"]
        # revoking the key revokes what it minted
        token = minted.json()["token"]
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 200
        await client.delete(f"{NS}/sec/keys/{short.json()['keyId']}", headers=ADMIN)
        refused = await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))
        assert refused.status_code == 401 and "minted" in refused.json()["detail"]


async def test_the_service_key_is_kept_only_when_named_and_removing_it_revokes() -> None:
    async with running_app() as client:
        keys = await setup(client)
        await submit(client, keys["producer"], "j1")
        token = await mint(client, keys["producer"])
        kid = (await client.get(f"{NS}/sec", headers=ADMIN)).json()["subscriberKeys"][0]["kid"]
        kept = await client.put(f"{NS}/sec", json={"subscriberKeys": [{"kid": kid}]}, headers=ADMIN)
        assert [k["kid"] for k in kept.json()["subscriberKeys"]] == [kid]
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 200
        unknown = await client.put(
            f"{NS}/sec", json={"subscriberKeys": [{"kid": "aos-nope"}]}, headers=ADMIN
        )
        assert unknown.status_code == 422
        dropped = await client.put(f"{NS}/sec", json={"subscriberKeys": []}, headers=ADMIN)
        assert dropped.json()["subscriberKeys"] == []
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(token))).status_code == 401
        # the next mint makes a new service key
        fresh = await mint(client, keys["producer"])
        assert (await client.get(f"{NS}/sec/jobs/j1", headers=auth(fresh))).status_code == 200


async def test_the_admin_token_and_malformed_keys_in_the_query_are_refused() -> None:
    async with running_app() as client:
        await setup(client)
        for token in (ADMIN_TOKEN, "aos.sec.k1.secret", "not-a-jwt"):
            refused = await client.get(f"{NS}/sec?access_token={token}")
            assert refused.status_code == 401, token
        assert (await client.get(f"{NS}/sec", headers=ADMIN)).status_code == 200


async def test_a_refused_upload_reserves_nothing() -> None:
    async with running_app() as client:
        keys = await setup(client, quotas={"maxStoredBytes": 1000})
        producer = {**auth(keys["producer"]), "content-type": "application/octet-stream"}
        await submit(client, keys["producer"], "j1")
        for _ in range(3):  # each refused for its own reason, none keeps bytes reserved
            missing = await client.put(
                f"{NS}/sec/jobs/nope/output", content=b"x" * 900, headers=producer
            )
            assert missing.status_code == 404
            ahead = await client.put(
                f"{NS}/sec/jobs/j1/output",
                content=b"x" * 900,
                headers={**producer, "x-chunk-index": "5"},
            )
            assert ahead.status_code == 409
        fits = await client.put(f"{NS}/sec/jobs/j1/output", content=b"x" * 900, headers=producer)
        assert fits.status_code == 201, fits.text


async def test_only_root_shortens_audit_retention_and_null_means_the_default() -> None:
    async with running_app() as client:
        keys = await setup(client)
        shorter = await client.put(
            f"{NS}/sec", json={"auditRetention": 1}, headers=auth(keys["admin"])
        )
        assert shorter.status_code == 403
        longer = await client.put(
            f"{NS}/sec", json={"auditRetention": "P400D"}, headers=auth(keys["admin"])
        )
        assert longer.json()["auditRetention"] == 400 * 86_400
        reset = await client.put(f"{NS}/sec", json={"auditRetention": None}, headers=ADMIN)
        assert reset.json()["auditRetention"] is None
        assert (
            await client.put(f"{NS}/sec", json={"auditRetention": 1}, headers=ADMIN)
        ).status_code == 200


async def test_malformed_keys_cost_no_audit_entry_and_sealed_looking_secrets_are_422() -> None:
    async with running_app() as client:
        await setup(client)
        long_id = f"aos.sec.{'k' * 6000}.x"
        assert (await client.get(f"{NS}/sec/jobs", headers=auth(long_id))).status_code == 401
        assert [e for e in await audit_log(client) if e["action"] == "auth.failure"] == []
        sealed = {"kid": "k", "alg": "HS256", "secret": "enc:v1:" + "x" * 40}
        response = await client.put(f"{NS}/sec", json={"subscriberKeys": [sealed]}, headers=ADMIN)
        assert response.status_code == 422
