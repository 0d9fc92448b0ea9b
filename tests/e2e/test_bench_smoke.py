"""A smoke-size run of ``make bench`` (``python -m loadtests.bench --smoke``), so it never rots.

It drives every system (AOS on SQLite and PostgreSQL, Nchan, Centrifugo) and
both ceilings through every scenario with a handful of connections, then
checks the JSON lines: every figure is there, nothing published was lost,
and the summary compares AOS with each peer. It measures nothing: timings of
a smoke run on a shared machine mean nothing (DESIGN §9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stores import require_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("nchan", "centrifugo")
DELIVERY = ("fanout-20", "many-jobs-20")
AOS = ("aos-sqlite", "aos-postgresql")


def _peer_serving(name: str) -> bool:
    script = ROOT / "loadtests" / "peers" / f"{name}.sh"
    return subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def results() -> tuple[dict[tuple[str, str, str], float], str]:
    if not os.environ.get("AOS_TEST_POSTGRES_URL"):
        require_server("AOS_TEST_POSTGRES_URL is not set (make test starts PostgreSQL)")
    for peer in PEERS:
        if not _peer_serving(peer):
            require_server(
                f"{peer} is not running (make test starts it: loadtests/peers/{peer}.sh)"
            )
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    values: dict[tuple[str, str, str], float] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        assert set(record) == {"system", "scenario", "metric", "value", "unit"}, record
        values[(record["system"], record["scenario"], record["metric"])] = record["value"]
    return values, done.stderr


@pytest.mark.parametrize("system", [*AOS, *PEERS])
@pytest.mark.parametrize("scenario", DELIVERY)
def test_every_system_delivers_every_message(results, system, scenario) -> None:
    values, _ = results
    assert values[(system, scenario, "lost")] == 0
    assert values[(system, scenario, "publish_errors")] == 0
    assert values[(system, scenario, "delivered_per_s")] > 0
    assert 0 < values[(system, scenario, "p50")] <= values[(system, scenario, "p99")]
    assert ((system, scenario, "rss_per_connection") in values) == scenario.startswith("fanout")
    assert values[(system, scenario, "server_cpu")] >= 0


@pytest.mark.parametrize(
    ("system", "scenario"),
    [
        ("aos-sqlite", "status"),
        ("aos-postgresql", "status"),
        ("nginx-static", "status"),
        ("aos-sqlite", "submit"),
        ("aos-postgresql", "submit"),
        ("asyncpg-insert", "submit"),
    ],
)
def test_request_scenarios_report_throughput_and_latency(results, system, scenario) -> None:
    values, _ = results
    assert values[(system, scenario, "throughput")] > 0
    assert 0 < values[(system, scenario, "p50")] <= values[(system, scenario, "p99")]


def test_the_summary_compares_aos_with_the_peers_and_ceilings(results) -> None:
    values, stderr = results
    for aos in AOS:
        for scenario in DELIVERY:
            for peer in PEERS:
                ratio = values[(aos, scenario, f"delivered_per_s_vs_{peer}")]
                expected = (
                    values[(aos, scenario, "delivered_per_s")]
                    / values[(peer, scenario, "delivered_per_s")]
                )
                assert ratio == pytest.approx(expected, rel=0.01)
        assert values[(aos, "status", "throughput_vs_nginx-static")] > 0
        assert values[(aos, "submit", "throughput_vs_asyncpg-insert")] > 0
    assert "summary (AOS figure" in stderr
