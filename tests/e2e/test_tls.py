"""``aos serve --tls-cert --tls-key`` over real sockets, and secrets kept out of
the logs of a real ``aos serve``."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..certs import Certificate, self_signed
from ..receiver import Received, Receiver, Reply
from ..support import ADMIN_TOKEN, Server, Tenant, aos_executable, auth, free_port

pytestmark = pytest.mark.e2e


def _env(**extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AOS_")},
        "AOS_STORAGE_URL": "memory://",
        "AOS_HOST": "127.0.0.1",
        "AOS_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


def _client_context(pair: Certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pair.cert))


@dataclass
class TLSServer:
    port: int
    pair: Certificate
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    workdir = tmp_path_factory.mktemp("aos-tls")
    pair = self_signed(workdir, "server")
    port = free_port()
    log = workdir / "aos.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*aos_executable(), "serve", "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],
            cwd=workdir,
            env=_env(AOS_PORT=str(port)),
            stdout=out,
            stderr=out,
        )
    server = TLSServer(port, pair, process)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"aos serve exited early:\n{log.read_text()}"
            try:
                r = httpx.get(f"{server.url}/readyz", verify=_client_context(pair), timeout=1)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(15)


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def test_tls_1_3_is_served_and_tls_1_2_is_refused(tls_server: TLSServer) -> None:
    assert _handshake(tls_server.port, _client_context(tls_server.pair)) == "TLSv1.3"
    old = _client_context(tls_server.pair)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server.port, old)


async def test_responses_over_tls_carry_hsts_and_the_secure_headers(
    tls_server: TLSServer,
) -> None:
    async with httpx.AsyncClient(
        base_url=tls_server.url, verify=_client_context(tls_server.pair), timeout=10
    ) as client:
        ready = await client.get("/readyz")
        admin = {**auth(ADMIN_TOKEN), "X-Namespace": "tls"}
        await client.put("/api/v1/namespaces/tls", headers=admin)
        missing = await client.get("/api/v1/jobs/none", headers=admin)
        created = await client.post("/api/v1/jobs", json={"jobId": "j"}, headers=admin)
    assert (ready.status_code, missing.status_code, created.status_code) == (200, 404, 201)
    for response in (ready, missing, created):
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
    assert missing.headers["cache-control"] == "no-store"


def test_plain_http_on_the_tls_port_gets_no_answer(tls_server: TLSServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)


def _serve_fails(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*aos_executable(), "serve", *args],
        cwd=tmp_path,
        env=_env(AOS_PORT=str(free_port()), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_certificate_or_key_stops_the_process_at_start(tmp_path: Path) -> None:
    a, b = self_signed(tmp_path, "a"), self_signed(tmp_path, "b")
    mismatched = _serve_fails(tmp_path, "--tls-cert", str(a.cert), "--tls-key", str(b.key))
    assert mismatched.returncode == 2
    assert "the key does not belong to the certificate" in mismatched.stderr
    assert f"AOS_TLS_KEY={b.key}" in mismatched.stderr

    missing = _serve_fails(tmp_path, AOS_TLS_CERT=str(a.cert), AOS_TLS_KEY=str(tmp_path / "no"))
    assert missing.returncode == 2
    assert f"AOS_TLS_KEY={tmp_path / 'no'}: cannot read it" in missing.stderr

    alone = _serve_fails(tmp_path, "--tls-cert", str(a.cert))
    assert alone.returncode == 2
    assert "AOS_TLS_CERT and AOS_TLS_KEY" in alone.stderr and "set both" in alone.stderr
    for failed in (mismatched, missing, alone):
        assert "Uvicorn running" not in failed.stdout + failed.stderr


# -- secrets never logged ----------------------------------------------------------


STORE_PASSWORD = "StorePassw0rd-Q7x"
CLUSTER_SECRET = "ClusterSecret-5mKq2"
HOOK_PASSWORD = "HookPassw0rd-9Lw"
HOOK_TOKEN = "HookQueryToken-3Vd"
QUERY_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0In0.QueryTokenSig-8Rt"


def _gone(_: Received) -> Reply:
    return 410, {}, b"gone"


async def test_no_secret_reaches_the_logs(tmp_path: Path) -> None:
    receiver = await Receiver(_gone).start()
    server = Server(
        f"memory://aos:{STORE_PASSWORD}@localhost",
        tmp_path,
        env={
            "AOS_LOG_LEVEL": "debug",
            "AOS_CLUSTER_SECRET": CLUSTER_SECRET,
            "AOS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "AOS_WEBHOOK_POLL": "0.2",
        },
    ).start()
    secrets = [ADMIN_TOKEN, STORE_PASSWORD, CLUSTER_SECRET, HOOK_PASSWORD, HOOK_TOKEN, QUERY_TOKEN]
    try:
        host_port = receiver.url.removeprefix("http://")
        hook = f"http://hook:{HOOK_PASSWORD}@{host_port}/hooks?token={HOOK_TOKEN}"
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            tenant = await Tenant(client, "leaky").setup({"webhookUrl": hook})
            keys = list(tenant.keys.values())
            secrets += [key.rpartition(".")[2] for key in keys]
            rotated = await client.post(
                "/api/v1/namespaces/leaky/webhook-secrets", headers=auth(ADMIN_TOKEN)
            )
            assert rotated.status_code in (200, 201), rotated.text
            namespace = await client.get("/api/v1/namespaces/leaky", headers=auth(ADMIN_TOKEN))
            whsecs = [s["secret"] for s in namespace.json()["webhookSecrets"]]
            assert whsecs and all(s.startswith("whsec_") for s in whsecs)
            secrets += [s.removeprefix("whsec_") for s in whsecs]
            await tenant.job("j1")  # a job.created webhook, answered 410 Gone: logged
            await receiver.wait_for(lambda got: len(got) >= 1)
            producer = tenant.keys["producer"]
            # a secret in every place a careless client can put one
            await client.get(f"/api/v1/jobs/j1/status?access_token={QUERY_TOKEN}")
            await client.get(f"/api/v1/jobs/j1/stream?token={QUERY_TOKEN}&x=1")
            await client.get(f"/api/v1/jobs/{producer}", headers=tenant.headers())
            await client.get("/api/v1/jobs/j1", headers={"X-Request-ID": producer})
            await client.get("/api/v1/jobs/j1", headers={"Authorization": f"Bearer {QUERY_TOKEN}"})
            await client.get("/api/v1/jobs/j1", headers={"Authorization": f"Basic {QUERY_TOKEN}"})
            await client.get("/api/v1/jobs/j1", headers=auth(f"{producer[:-4]}XXXX"))  # wrong
        deadline = time.monotonic() + 10
        while "410 Gone" not in (server.log_path or Path()).read_text():
            assert time.monotonic() < deadline, "the drainer did not log the 410"
            await asyncio.sleep(0.1)
    finally:
        server.stop()
        await receiver.stop()
    assert server.log_path is not None
    log = server.log_path.read_text()
    # the logs were written: requests, the store, the webhook endpoint
    assert log.count('"event":"http.request"') >= 10
    assert '"event":"store.opened"' in log and "memory://aos:***@localhost" in log
    assert f"http://hook:***@{host_port}/hooks?token=***" in log
    assert f"/api/v1/jobs/{producer.rpartition('.')[0]}.***" in log  # a key in the path
    for secret in secrets:
        assert secret not in log, secret
