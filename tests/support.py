"""Helpers for tests that talk HTTP: a real ``aos serve`` process, SSE parsing, clients."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def aos_executable() -> list[str]:
    found = shutil.which("aos", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "service"]


@dataclass
class Server:
    """``aos serve`` in a subprocess on a free port."""

    storage_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    #: ``None``: let ``aos serve`` make (or read) its own token file, as on a first run
    admin_token: str | None = ADMIN_TOKEN
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Server:
        self.port = self.port or free_port()
        self.log_path = self.workdir / f"aos-{self.port}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AOS_")},
            "AOS_STORAGE_URL": self.storage_url,
            "AOS_PORT": str(self.port),
            "AOS_HOST": "127.0.0.1",
            "AOS_SSE_HEARTBEAT": "1",
            **({"AOS_ADMIN_TOKEN": self.admin_token} if self.admin_token else {}),
            **self.env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*aos_executable(), "serve"], cwd=self.workdir, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aos serve exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"aos serve did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path else ""


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.data)


async def sse_events(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Parse a ``text/event-stream`` body into events (comments are skipped)."""
    event, data, last_id = "message", [], None
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SSEEvent(event, "\n".join(data), last_id)
            event, data, last_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value


async def chunk_data(response: httpx.Response) -> list[str]:
    """The ``data`` of every ``chunk`` event of an SSE response, up to ``end``."""
    found = []
    async for event in sse_events(response):
        if event.event == "chunk":
            found.append(event.json()["data"])
        elif event.event == "end":
            break
    return found


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Tenant:
    """A namespace with one key per role, on a running service."""

    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self.client = client
        self.name = name
        self.keys: dict[str, str] = {}

    async def setup(self, config: dict[str, Any] | None = None) -> Tenant:
        admin = auth(ADMIN_TOKEN)
        r = await self.client.put(
            f"/api/v1/namespaces/{self.name}", json=config or {}, headers=admin
        )
        assert r.status_code in (200, 201), r.text
        for role in ("admin", "producer", "consumer"):
            r = await self.client.post(
                f"/api/v1/namespaces/{self.name}/keys", json={"role": role}, headers=admin
            )
            assert r.status_code == 201, r.text
            self.keys[role] = r.json()["key"]
        return self

    def headers(self, role: str = "producer") -> dict[str, str]:
        return auth(self.keys[role])

    async def job(self, job_id: str, **body: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/api/v1/jobs", json={"jobId": job_id, **body}, headers=self.headers()
        )
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def append(
        self, job_id: str, data: bytes | str, content_type: str = "text/plain", **headers: str
    ) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/jobs/{job_id}/output",
            content=data if isinstance(data, bytes) else data.encode(),
            headers={**self.headers(), "Content-Type": content_type, **headers},
        )

    async def patch(self, job_id: str, **body: Any) -> httpx.Response:
        return await self.client.patch(
            f"/api/v1/jobs/{job_id}/status", json=body, headers=self.headers()
        )
