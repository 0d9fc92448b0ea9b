"""Secure response headers, the TLS settings and context, and log redaction."""

from __future__ import annotations

import io
import logging
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from service.logs import JsonFormatter, log_event, redact, register_secrets
from service.metrics import Metrics
from service.middleware import HSTS, SECURITY_HEADERS, RequestMiddleware
from service.settings import Settings
from service.tls import server_context
from sharding import forward
from storage_adapters import ConfigurationError

from ..api.conftest import running_app
from ..certs import self_signed
from ..support import ADMIN_TOKEN, auth

SECURE = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}


def _assert_secure(response: httpx.Response, *, tls: bool = False) -> None:
    for name, value in SECURE.items():
        assert response.headers.get_list(name) == [value], (name, response.url)
    hsts = response.headers.get_list("strict-transport-security")
    assert hsts == (["max-age=31536000"] if tls else []), response.url
    assert len(response.headers.get_list("cache-control")) <= 1, response.url


# -- headers -----------------------------------------------------------------


async def test_every_kind_of_response_carries_the_secure_headers() -> None:
    admin = {**auth(ADMIN_TOKEN), "X-Namespace": "h"}
    async with running_app() as client:
        created_ns = await client.put("/api/v1/namespaces/h", headers=admin)
        created = await client.post("/api/v1/jobs", json={"jobId": "a"}, headers=admin)
        await client.post("/api/v1/jobs/a/output", content=b"hello", headers=admin)
        done = await client.patch(
            "/api/v1/jobs/a/status", json={"status": "Succeeded"}, headers=admin
        )
        responses = {
            "namespace": created_ns,
            "created": created,
            "patched": done,
            "job": await client.get("/api/v1/jobs/a", headers=admin),
            "status": await client.get("/api/v1/jobs/a/status", headers=admin),
            "list": await client.get("/api/v1/jobs", headers=admin),
            "output": await client.get("/api/v1/jobs/a/output", headers=admin),
            "raw": await client.get("/api/v1/jobs/a/output/raw", headers=admin),
            "stream": await client.get("/api/v1/jobs/a/stream", headers=admin),
            "no-such-job": await client.get("/api/v1/jobs/nope", headers=admin),
            "no-such-route": await client.get("/nowhere"),
            "no-such-api-route": await client.get("/api/v2/nowhere"),
            "unauthenticated": await client.get("/api/v1/jobs/a"),
            "bad-body": await client.post("/api/v1/jobs", content=b"{", headers=admin),
            "healthz": await client.get("/healthz"),
            "metrics": await client.get("/metrics"),
            "openapi": await client.get("/openapi.json"),
        }
    assert responses["created"].status_code == 201
    assert responses["stream"].headers["content-type"].startswith("text/event-stream")
    assert responses["raw"].content == b"hello"
    assert responses["no-such-job"].status_code == 404
    assert responses["no-such-route"].status_code == 404
    assert responses["unauthenticated"].status_code == 401
    assert responses["bad-body"].status_code == 400
    for response in responses.values():
        _assert_secure(response)


async def test_api_responses_are_not_stored_and_conditional_ones_are_revalidated() -> None:
    admin = {**auth(ADMIN_TOKEN), "X-Namespace": "c"}
    async with running_app() as client:
        await client.put("/api/v1/namespaces/c", headers=admin)
        created = await client.post("/api/v1/jobs", json={"jobId": "a"}, headers=admin)
        await client.post("/api/v1/jobs/a/output", content=b"x", headers=admin)
        await client.patch("/api/v1/jobs/a/status", json={"status": "Succeeded"}, headers=admin)
        listed = await client.get("/api/v1/jobs", headers=admin)
        job = await client.get("/api/v1/jobs/a", headers=admin)
        not_modified = await client.get(
            "/api/v1/jobs/a", headers={**admin, "If-None-Match": job.headers["etag"]}
        )
        status = await client.get("/api/v1/jobs/a/status", headers=admin)
        raw = await client.get("/api/v1/jobs/a/output/raw", headers=admin)
        stream = await client.get("/api/v1/jobs/a/stream", headers=admin)
        missing = await client.get("/api/v1/jobs/nope", headers=admin)
        healthz = await client.get("/healthz")
    # no entity tag: never stored
    assert listed.headers["cache-control"] == "no-store"
    assert missing.headers["cache-control"] == "no-store"
    assert stream.headers["cache-control"] == "no-store"  # its own
    # an entity tag: revalidated each time, and never kept by a shared cache
    assert "etag" in created.headers and created.headers["cache-control"] == "private, no-cache"
    assert job.headers["cache-control"] == "private, no-cache"
    assert not_modified.status_code == 304
    assert not_modified.headers["cache-control"] == "private, no-cache"
    assert raw.headers["etag"] and raw.headers["cache-control"] == "private, no-cache"
    # the long-poll's own choice stays
    assert status.headers["etag"] and status.headers["cache-control"] == "no-cache"
    # outside /api/ the service leaves caching alone
    assert "cache-control" not in healthz.headers


async def test_hsts_only_over_tls() -> None:
    async with running_app() as client:
        plain = await client.get("/healthz")
        over_tls = await client.get("https://aos/healthz")
        missing = await client.get("https://aos/api/v1/jobs/nope")
    _assert_secure(plain, tls=False)
    _assert_secure(over_tls, tls=True)
    _assert_secure(missing, tls=True)
    assert missing.status_code == 401


async def test_an_unhandled_error_is_a_500_with_the_secure_headers() -> None:
    async def broken(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("boom")

    app = RequestMiddleware(broken, metrics=Metrics(CollectorRegistry()), access_log=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://aos") as client:
        response = await client.get("/api/v1/jobs")
    assert response.status_code == 500
    _assert_secure(response, tls=True)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]


def test_a_forwarded_response_does_not_carry_the_owners_secure_headers_twice() -> None:
    # The entry node's middleware adds them again; the forwarder drops the owner's.
    names = {name for name, _ in SECURITY_HEADERS} | {HSTS[0]}
    assert names <= forward._RESPONSE_DROP
    assert b"cache-control" not in forward._RESPONSE_DROP  # the owner's decision stands


# -- settings and the TLS context ----------------------------------------------


def test_tls_cert_and_key_go_together() -> None:
    for env in ({"AOS_TLS_CERT": "/c.pem"}, {"AOS_TLS_KEY": "/k.pem"}):
        with pytest.raises(ConfigurationError, match="AOS_TLS_CERT and AOS_TLS_KEY"):
            Settings.from_env(env)
    with pytest.raises(ConfigurationError, match="AOS_TLS_CERT and AOS_TLS_KEY"):
        Settings.from_env({}, tls_cert="/c.pem")
    both = Settings.from_env({"AOS_TLS_CERT": "/c.pem", "AOS_TLS_KEY": "/k.pem"})
    assert (both.tls_cert, both.tls_key) == ("/c.pem", "/k.pem")
    assert Settings.from_env({"AOS_TLS_CERT": "", "AOS_TLS_KEY": ""}).tls_cert is None


def test_https_peers_and_tls_in_a_cluster_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"AOS_PEERS: https://b:8080: .*plain http"):
        Settings.from_env({"AOS_NODE_ID": "a", "AOS_PEERS": "a=http://a:8080,b=https://b:8080"})
    with pytest.raises(ConfigurationError, match="AOS_NODE_URL: https://a:8443"):
        Settings.from_env({"AOS_NODE_URL": "https://a:8443"})
    tls = {"AOS_TLS_CERT": "/c.pem", "AOS_TLS_KEY": "/k.pem"}
    with pytest.raises(ConfigurationError, match="AOS_PEERS or AOS_PEERS_DNS"):
        Settings.from_env({**tls, "AOS_NODE_ID": "a", "AOS_PEERS": "a=http://a:8080"})
    with pytest.raises(ConfigurationError, match="AOS_PEERS or AOS_PEERS_DNS"):
        Settings.from_env({**tls, "AOS_PEERS_DNS": "aos-headless:8080"})
    plain = Settings.from_env({"AOS_NODE_ID": "a", "AOS_PEERS": "a=http://a:8080,b=http://b:1"})
    assert [m.url for m in plain.peers] == ["http://a:8080", "http://b:1"]


def test_the_server_context_requires_tls_1_3(tmp_path: Path) -> None:
    good = self_signed(tmp_path, "good")
    cert, key = good.cert, good.key
    context = server_context(str(cert), str(key))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_NONE  # clients are not asked for certificates


def test_a_bad_certificate_or_key_is_a_clear_configuration_error(tmp_path: Path) -> None:
    a, b = self_signed(tmp_path, "a"), self_signed(tmp_path, "b")
    cert, key, private = a.cert, a.key, a.private
    other_cert, other_key = b.cert, b.key
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = [
        (cert, other_key, r"AOS_TLS_KEY=.*b\.key: the key does not belong to the certificate"),
        (tmp_path / "missing.crt", key, r"AOS_TLS_CERT=.*missing\.crt: cannot read it"),
        (cert, tmp_path / "missing.key", r"AOS_TLS_KEY=.*missing\.key: cannot read it"),
        (junk, key, r"AOS_TLS_CERT=.*junk\.pem: not a PEM file with a certificate"),
        (cert, other_cert, r"AOS_TLS_KEY=.*b\.crt: not a PEM file with a private key"),
        (cert, encrypted, r"AOS_TLS_KEY=.*encrypted\.key: the key is encrypted"),
    ]
    for cert_path, key_path, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            server_context(str(cert_path), str(key_path))


# -- logs ------------------------------------------------------------------------


KEY = "aos.acme.k_01JABCDEFG.Zm9vYmFyYmF6cXV4LXNlY3JldC12YWx1ZS0xMjM0NTY3ODk"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer ***"),
        ("authorization: basic dXNlcjpwYXNzd29yZA==", "authorization: basic ***"),
        (f"GET /api/v1/jobs/{KEY}/status", "GET /api/v1/jobs/aos.acme.k_01JABCDEFG.***/status"),
        ("key aos.my.dotted.ns.k1.abcdefghijklmnop end", "key aos.my.dotted.ns.k1.*** end"),
        ("/stream?access_token=eyJhbGciOi.eyJzdWIi.c2ln&x=1", "/stream?access_token=***&x=1"),
        ("/stream?x=1&token=abc123", "/stream?x=1&token=***"),
        ("?ACCESS_TOKEN=abc", "?ACCESS_TOKEN=***"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret whsec_***"),
        ("aos_admin_9vJ-kq_0x", "aos_admin_***"),
        ("postgresql://aos:p%40ss@db:5432/aos", "postgresql://aos:***@db:5432/aos"),
        ("https://u:hookpw@example.com/h?password=x", "https://u:***@example.com/h?password=***"),
        (
            '{"token":"abc","authorization":"Bearer x","n":1}',
            '{"token":"***","authorization":"***","n":1}',
        ),
        # no secret: untouched
        ('{"logger":"aos.http","route":"/api/v1/jobs/{job_id}"}', None),
        ("http://127.0.0.1:8080/readyz and aos.cluster.ring", None),
        ("mailto:someone@example.com", None),
    ],
)
def test_secrets_are_masked_in_log_text(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


def test_registered_secrets_are_masked_wherever_they_appear() -> None:
    register_secrets("CustomAdminToken-7f3a9", "short", None)
    assert redact("token CustomAdminToken-7f3a9 in a message") == "token *** in a message"
    assert redact("short stays") == "short stays"  # too short to mask safely


def test_a_log_line_never_carries_a_secret_whatever_the_call_passed() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aos.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, "careless", header=f"Bearer {KEY}", url="/x?access_token=s3cr3t")
        try:
            raise RuntimeError(f"could not use {KEY}")
        except RuntimeError as exc:
            logger.error("failed", exc_info=exc)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert KEY not in text and "s3cr3t" not in text
    assert "Bearer ***" in text and "access_token=***" in text
    assert "could not use aos.acme.k_01JABCDEFG.***" in text
