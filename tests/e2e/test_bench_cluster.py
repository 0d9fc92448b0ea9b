"""A smoke-size run of ``make bench-cluster`` on SQLite, so it never rots.

``python -m loadtests.bench_cluster --smoke --store sqlite`` starts two nodes
over one SQLite file and measures each scenario through the owner and through
the other node. The test checks the JSON lines: every figure is there and
sane, the requests through ``b`` really were forwarded (the entry node's
forwarded counter grew) and those through ``a`` were not, and the ratios are
the figures' quotients. It measures nothing: timings of a smoke run on a
shared machine mean nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..stores import require_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
OWNER, FORWARDED = "aos-owner", "aos-forwarded"
SYSTEMS = (OWNER, FORWARDED)
SCENARIOS = ("status", "append-sse", "raw-download")
RATIOS = [
    ("status", "throughput"),
    ("status", "p50"),
    ("status", "p99"),
    ("status", "entry_cpu_per_1k"),
    ("status", "cluster_cpu_per_1k"),
    ("append-sse", "p50"),
    ("append-sse", "p99"),
    ("raw-download", "throughput"),
]

Values = dict[tuple[str, str, str], float | str]


@pytest.fixture(scope="module")
def results() -> tuple[Values, dict[tuple[str, str, str], str], str]:
    if shutil.which("curl") is None:
        require_server("curl is not installed (the raw-download scenario needs it)")
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_cluster", "--smoke", "--store", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=75,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    values: Values = {}
    units: dict[tuple[str, str, str], str] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        assert set(record) == {"system", "scenario", "metric", "value", "unit"}, record
        key = (record["system"], record["scenario"], record["metric"])
        assert key not in values, f"{key} reported twice"
        values[key] = record["value"]
        units[key] = record["unit"]
    return values, units, done.stderr


def test_the_run_says_what_it_ran_on(results) -> None:
    values, _, _ = results
    assert values[("bench", "setup", "store")] == "sqlite"
    assert str(values[("bench", "setup", "namespace")]).startswith("bench-")
    assert values[("bench", "setup", "download_size")] > 0


@pytest.mark.parametrize("system", SYSTEMS)
def test_status_reports_throughput_latency_and_cpu(results, system) -> None:
    values, units, _ = results
    assert values[(system, "status", "throughput")] > 0
    assert units[(system, "status", "throughput")] == "req/s"
    assert 0 < values[(system, "status", "p50")] <= values[(system, "status", "p99")]
    assert values[(system, "status", "requests")] > 0
    assert values[(system, "status", "entry_cpu_per_1k")] > 0
    assert (
        values[(system, "status", "cluster_cpu_per_1k")]
        >= values[(system, "status", "entry_cpu_per_1k")]
        > 0
    )


@pytest.mark.parametrize("system", SYSTEMS)
def test_append_sse_delivers_every_chunk(results, system) -> None:
    values, _, _ = results
    assert values[(system, "append-sse", "lost")] == 0
    assert values[(system, "append-sse", "publish_errors")] == 0
    assert values[(system, "append-sse", "delivered_per_s")] > 0
    assert 0 < values[(system, "append-sse", "p50")] <= values[(system, "append-sse", "p99")]


@pytest.mark.parametrize("system", SYSTEMS)
def test_raw_download_reports_throughput(results, system) -> None:
    values, units, _ = results
    assert values[(system, "raw-download", "throughput")] > 0
    assert units[(system, "raw-download", "throughput")] == "MiB/s"
    assert values[(system, "raw-download", "seconds")] > 0
    assert values[(system, "raw-download", "entry_cpu_per_gib")] >= 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_the_requests_through_the_other_node_were_forwarded(results, scenario) -> None:
    values, _, _ = results
    assert values[(OWNER, scenario, "forwarded_requests")] == 0
    assert values[(FORWARDED, scenario, "forwarded_requests")] > 0


def test_every_status_request_through_the_other_node_was_forwarded(results) -> None:
    values, _, _ = results
    requests = values[(FORWARDED, "status", "requests")]
    forwarded = values[(FORWARDED, "status", "forwarded_requests")]
    # the last request of each client may be counted just after the bench looked
    assert requests - 4 <= forwarded <= requests


def test_the_ratios_are_forwarded_over_owner(results) -> None:
    values, units, stderr = results
    for scenario, metric in RATIOS:
        key = (FORWARDED, scenario, f"{metric}_vs_owner")
        assert units[key] == "ratio"
        expected = values[(FORWARDED, scenario, metric)] / values[(OWNER, scenario, metric)]
        assert values[key] == pytest.approx(expected, rel=0.02, abs=0.002)
        assert values[key] > 0
    assert "summary (forwarded ÷ owner)" in stderr


def test_idle_streams_report_memory_on_the_entry_and_the_owner(results) -> None:
    values, units, _ = results
    # measured through b only: the proxy's memory on b, the stream's on the owner
    assert units[(FORWARDED, "idle-streams", "entry_rss_per_stream")] == "KiB"
    assert units[(FORWARDED, "idle-streams", "owner_rss_per_stream")] == "KiB"
    assert not any(key[:2] == (OWNER, "idle-streams") for key in values)
