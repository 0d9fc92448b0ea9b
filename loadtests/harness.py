"""What every benchmark needs: the service in a process, fresh databases, results."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

__all__ = ["AosProcess", "database_url", "emit", "exports", "free_port", "percentiles"]


def emit(system: str, scenario: str, metric: str, value: float | int | str, unit: str) -> None:
    """One result, as one JSON line on stdout."""
    line = {"system": system, "scenario": scenario, "metric": metric, "value": value, "unit": unit}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def exports(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of a setup script's output, as a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value.strip("'\"")
    return env


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": ordered[-1],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AosProcess:
    """``aos serve`` on a free port, without access logs."""

    def __init__(self, storage_url: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.storage_url = storage_url
        self.workdir = workdir
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> AosProcess:
        aos = shutil.which("aos", path=str(Path(sys.executable).parent)) or "aos"
        env = {
            **os.environ,
            "AOS_STORAGE_URL": self.storage_url,
            "AOS_PORT": str(self.port),
            "AOS_HOST": "127.0.0.1",
            "AOS_ACCESS_LOG": "false",
            "AOS_LOG_LEVEL": "warning",
            **self.env,
        }
        log = open(self.workdir / "aos.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [aos, "serve"], cwd=self.workdir, env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.workdir / "aos.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("aos serve did not become ready")

    def cpu_seconds(self) -> float:
        """User and system CPU the process has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The process's high-water mark of resident memory (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@asynccontextmanager
async def database_url(store: str) -> AsyncIterator[str]:
    """A new, empty database (keyspace, table prefix) on the store's test server,
    dropped afterwards: the test suite's own store factories (tests/stores.py).

    Raises :class:`LookupError` when the server's URL is not in the environment.
    """
    from tests.stores import SERVERS, STORES, VARIABLES

    variable = VARIABLES.get(store)
    if store not in SERVERS or variable is None:
        raise LookupError(f"no test server for {store!r}; known: {', '.join(sorted(SERVERS))}")
    if not os.environ.get(variable):
        raise LookupError(f"no server for {store}: set {variable} (make test sets it)")
    with tempfile.TemporaryDirectory() as scratch:
        async with STORES[store](Path(scratch), empty=True) as url:
            yield url
