"""A 10 GB output through the service, next to nginx moving the same bytes.

    python -m loadtests.bench_large_output --size 10GiB --stores sqlite,postgresql,mysql

Writes one file of ``--size`` bytes (half random bytes in 2 MiB runs, half
text, so chunks go both ways through the codec) and measures, with ``curl``
as the client for every system so the client costs the same:

* **ingest**: ``curl -T file`` into ``PUT /api/v1/jobs/{id}/output``;
* **egress**: ``GET …/output/raw`` (identity), and again with
  ``Accept-Encoding: zstd`` (stored frames passed through: fewer bytes);
* the service's peak RSS (``VmHWM``) and CPU seconds per GiB;
* the **loopback ceiling** in the same run: a private nginx serving the same
  file from disk (``sendfile``) and taking the same upload (``dav_methods PUT``).

Dirty pages are flushed (``sync``) after each ingest, so an egress measures
reading, not the write-back of what was just written.

The uploaded version's SHA-256 is checked against the file's. Prints one JSON
line per result.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx

from service.settings import _size

from .harness import AosProcess, database_url, emit, free_port

ADMIN = "bench-admin-token"
MIB = 1024 * 1024
GIB = 1024 * MIB
NGINX = "/usr/sbin/nginx"
ROOT = Path(__file__).resolve().parents[1]


def make_file(path: Path, size: int) -> str:
    """The benchmark's output: 2 MiB of fresh random bytes, then 2 MiB of text, …"""
    text = b"".join(
        b"%08d some build output, a line of text that compresses\n" % i for i in range(40_000)
    )
    text = text[: 2 * MIB]
    sha = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            for block in (os.urandom(2 * MIB), text):
                block = block[: size - written]
                out.write(block)
                sha.update(block)
                written += len(block)
    return sha.hexdigest()


def curl(*args: str) -> tuple[int, float, bytes]:
    """Run curl; ``(bytes moved, seconds, body)`` from its own counters."""
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--http1.1",
            "-H",
            "Expect:",
            "--write-out",
            "\n%{size_download} %{size_upload} %{time_total}",
            *args,
        ],
        check=True,
        capture_output=True,
    )
    body, _, counters = done.stdout.rpartition(b"\n")
    down, up, seconds = counters.split()
    return max(int(down), int(up)), float(seconds), body


def report(system: str, scenario: str, moved: int, seconds: float, logical: int) -> None:
    emit(system, scenario, "throughput", round(logical / MIB / seconds, 1), "MiB/s")
    emit(system, scenario, "seconds", round(seconds, 2), "s")
    if moved != logical:
        emit(system, scenario, "wire_bytes", moved, "bytes")


@contextmanager
def nginx(workdir: Path, data_dir: Path) -> Iterator[int]:
    """A private nginx: ``GET /data/<file>`` from disk, ``PUT /upload/<file>`` to disk."""
    if not Path(NGINX).exists():
        subprocess.run([str(ROOT / "loadtests/peers/nchan.sh"), "install"], check=True)
    port = free_port()
    home = workdir / "nginx"
    for sub in ("logs", "tmp", "upload"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 2;
pid {home}/nginx.pid;
error_log {home}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    client_body_temp_path {home}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location /data/ {{ alias {data_dir}/; }}
        location /upload/ {{
            alias {home}/upload/;
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""
    )
    process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(home)])
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/data/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(home / "upload", ignore_errors=True)


def bench_nginx(workdir: Path, data: Path, size: int) -> None:
    with nginx(workdir, data.parent) as port:
        base = f"http://127.0.0.1:{port}"
        moved, seconds, _ = curl("-o", "/dev/null", f"{base}/data/{data.name}")
        report("nginx", "egress", moved, seconds, size)
        moved, seconds, _ = curl("-T", str(data), "-o", "/dev/null", f"{base}/upload/{data.name}")
        report("nginx", "ingest", moved, seconds, size)
        os.sync()


async def bench_aos(store: str, workdir: Path, data: Path, size: int, sha256: str) -> None:
    async with AsyncExitStack() as stack:
        if store == "sqlite":
            url = f"sqlite:///{workdir}/bench.db"
        else:
            url = await stack.enter_async_context(database_url(store))
        node = AosProcess(url, workdir, env={"AOS_ADMIN_TOKEN": ADMIN}).start()
        stack.callback(node.stop)
        base = f"http://127.0.0.1:{node.port}"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=base, headers=admin) as client:
            (await client.put("/api/v1/namespaces/bench")).raise_for_status()
            r = await client.post("/api/v1/jobs", json={"namespace": "bench", "jobId": "big"})
            r.raise_for_status()
        system = f"aos-{store}"
        job = f"{base}/api/v1/namespaces/bench/jobs/big"
        auth = ["-H", f"Authorization: Bearer {ADMIN}"]

        def measured(scenario: str, *args: str) -> bytes:
            """One curl transfer: throughput and the service's CPU per GiB."""
            cpu = node.cpu_seconds()
            moved, seconds, body = curl(*auth, *args)
            report(system, scenario, moved, seconds, size)
            per_gib = (node.cpu_seconds() - cpu) / (size / GIB)
            emit(system, scenario, "cpu_per_gib", round(per_gib, 2), "s")
            return body

        body = measured(
            "ingest",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(data),
            f"{job}/output",
        )
        emit(system, "ingest", "peak_rss", node.peak_rss_mb(), "MB")
        version = httpx.Response(200, content=body).json()
        if version["sha256"] != sha256 or version["size"] != size:
            raise SystemExit(f"{system}: stored {version} does not match the file ({sha256})")
        emit(system, "ingest", "stored_ratio", round(version["storedSize"] / size, 3), "")
        os.sync()  # egress reads; it does not compete with the write-back of the ingest

        measured(
            "egress", "-H", "Accept-Encoding: identity", "-o", "/dev/null", f"{job}/output/raw"
        )
        emit(system, "egress", "peak_rss", node.peak_rss_mb(), "MB")

        measured(
            "egress-zstd", "-H", "Accept-Encoding: zstd", "-o", "/dev/null", f"{job}/output/raw"
        )
        emit(system, "all", "peak_rss", node.peak_rss_mb(), "MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="10GiB", help="output size (bytes, or with KiB/MiB/GiB)")
    parser.add_argument(
        "--stores", default="sqlite", help="comma-separated: sqlite,postgresql,mysql"
    )
    parser.add_argument(
        "--workdir", help="where the file and the SQLite store go (default: a temp dir)"
    )
    args = parser.parse_args()
    size = _size(args.size)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="aos-bench-large-") as tmp:
        workdir = Path(tmp)
        data = workdir / "output.bin"
        started = time.monotonic()
        sha256 = make_file(data, size)
        emit("bench", "setup", "file_seconds", round(time.monotonic() - started, 1), "s")
        emit("bench", "setup", "size", size, "bytes")
        bench_nginx(workdir, data, size)
        for store in args.stores.split(","):
            store_dir = workdir / store
            store_dir.mkdir()
            await bench_aos(store, store_dir, data, size, sha256)
            shutil.rmtree(store_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
