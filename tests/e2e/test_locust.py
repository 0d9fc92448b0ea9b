"""The operators' Locust load test (loadtests/locustfile.py), headless against ``aos serve``.

A short run with a few users must finish without a single failure, exercise
every request of the mix, and leave the service with the jobs its producers
made finished and holding exactly the text they appended.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ..support import ADMIN_TOKEN, Server, auth

pytestmark = pytest.mark.e2e

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
NAMESPACE = "locust-e2e"
CHUNKS = 5
CHUNK_BYTES = 100

#: (method, name) of every request of the mix
CANCEL = "/api/v1/namespaces/[ns]/jobs/[id]/cancel"
MIX = {
    ("POST", "/api/v1/namespaces/[ns]/jobs"),  # submit
    ("POST", "/api/v1/namespaces/[ns]/jobs/[id]/output"),  # append
    ("PATCH", "/api/v1/namespaces/[ns]/jobs/[id]/status"),  # progress
    ("PATCH", "/api/v1/namespaces/[ns]/jobs/[id]/status (finish)"),
    ("GET", "/api/v1/namespaces/[ns]/jobs/[id]/stream"),
    ("GET", "/api/v1/namespaces/[ns]/jobs/[id]/status"),  # the ETag for the long-poll
    ("GET", "/api/v1/namespaces/[ns]/jobs/[id]/status?wait"),  # long-poll
    ("GET", "/api/v1/namespaces/[ns]/jobs/[id]/output"),
    ("GET", "/api/v1/namespaces/[ns]/jobs/[id]/output/raw"),
}


def chunk_text(job_id: str, index: int, size: int) -> str:
    """The same as ``chunk_text`` in the locustfile (not imported: Locust patches with gevent)."""
    head = f"{job_id} chunk {index}: "
    filler = "abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1)
    return (head + filler)[: size - 1] + "\n"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_locust_mix_runs_clean_and_leaves_finished_jobs(server: Server, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AOS_", "LOCUST_"))},
        "AOS_TOKEN": ADMIN_TOKEN,  # the root token: the run creates its namespace
        "AOS_NAMESPACE": NAMESPACE,
        "AOS_CHUNKS": str(CHUNKS),
        "AOS_CHUNK_BYTES": str(CHUNK_BYTES),
        "AOS_CHUNK_PAUSE": "0.1",
        "AOS_POLL_WAIT": "2",
        "AOS_STREAM_SECONDS": "3",
        "AOS_THINK_TIME": "0.1-0.5",  # more tasks in a short run, so that each kind has its turn
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users=6",
        "--spawn-rate=6",
        "--run-time=8s",
        # let every user finish its task, so that no producer leaves a job Running
        # (a slow machine may still take longer: those jobs are cancelled, see below)
        "--stop-timeout=30",
        f"--host={server.url}",
        f"--csv={tmp_path / 'run'}",
        "--only-summary",
        "--exit-code-on-error=1",
    ]
    # cwd: Locust reads locust.conf and pyproject.toml from there; the repository's must not count
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]

    stats = read_csv(tmp_path / "run_stats.csv")
    assert read_csv(tmp_path / "run_failures.csv") == [], output[-5000:]
    assert read_csv(tmp_path / "run_exceptions.csv") == []
    assert all(row["Failure Count"] == "0" for row in stats), stats
    counts = {(row["Type"], row["Name"]): int(row["Request Count"]) for row in stats}
    missing = {request for request in MIX if counts.get(request, 0) < 1}
    assert not missing, f"never requested: {missing}\n{output[-5000:]}"
    # and the cancel of a job a stop interrupted all the same (a slow machine)
    extra = set(counts) - MIX - {("", "Aggregated")}
    assert extra <= {("POST", CANCEL)}, f"only the mix's names: {extra}"
    cancels = counts.get(("POST", CANCEL), 0)
    sizes = {row["Name"]: float(row["Average Content Size"]) for row in stats if row["Type"]}
    assert sizes["/api/v1/namespaces/[ns]/jobs/[id]/stream"] > 0, "stream bytes are counted"

    with httpx.Client(base_url=server.url, headers=auth(ADMIN_TOKEN), timeout=30) as http:
        assert http.get(f"/api/v1/namespaces/{NAMESPACE}").status_code == 200
        r = http.get(f"/api/v1/namespaces/{NAMESPACE}/jobs", params={"limit": 1000})
        assert r.status_code == 200, r.text
        jobs = r.json()["items"]
        # Locust rewrites the CSV files every second and not at the end, so the
        # last second's requests may be missing from them.
        assert len(jobs) >= max(2, counts[("POST", "/api/v1/namespaces/[ns]/jobs")])
        interrupted = [job for job in jobs if job["status"] == "Cancelled"]
        assert len(interrupted) <= cancels, interrupted
        for job in jobs:
            if job in interrupted:
                continue
            job_id = job["jobId"]
            assert (job["status"], job["progress"]) == ("Succeeded", 100), job
            assert job["metadata"]["title"] == f"Load test job {job_id}"
            raw = http.get(f"/api/v1/namespaces/{NAMESPACE}/jobs/{job_id}/output/raw")
            assert raw.status_code == 200, raw.text
            expected = "".join(chunk_text(job_id, i, CHUNK_BYTES) for i in range(CHUNKS))
            assert raw.text == expected
            assert len(raw.content) == CHUNKS * CHUNK_BYTES
