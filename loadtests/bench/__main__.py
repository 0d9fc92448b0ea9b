"""Side by side: AOS (SQLite, PostgreSQL), Nchan and Centrifugo, one run, one client.

    python -m loadtests.bench            # the full run (make bench), ~10 minutes
    python -m loadtests.bench --smoke    # seconds per system (part of make test)

Scenarios (docs/benchmarks.md explains each figure):

* ``fanout-N``: one publisher, N SSE subscribers on one job/channel —
  delivered events/s, publish→receive p50/p99, server RSS per connection;
* ``many-jobs-N``: N jobs/channels with one subscriber each, messages
  round-robin — the same figures;
* ``status``: ``GET`` of a job's status, closed loop — requests/s and p99,
  next to nginx serving a static JSON file of the same shape (the ceiling);
* ``submit``: ``POST /api/v1/jobs``, closed loop — jobs/s and p99, next to
  a bare asyncpg ``INSERT`` loop on the same PostgreSQL (the ceiling).

The harness starts what it needs: ``aos serve`` children, PostgreSQL through
``scripts/testenv/up`` (unless ``AOS_TEST_POSTGRES_URL`` is set), and the peers
through ``loadtests/peers/{nchan,centrifugo}.sh``. Every result is one JSON line
on stdout; the summary of ratios follows as JSON lines with ``"unit": "ratio"``
and, for people, as a table on stderr.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from loadtests.harness import database_url, emit, exports

from . import scenarios
from .scenarios import FULL, SMOKE, Plan, Results
from .systems import ADMIN, AOS, Centrifugo, Nchan, System

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("aos-sqlite", "aos-postgresql", "nchan", "centrifugo")
#: other stores, on request (--systems): their test servers must be up
#: (``eval "$(scripts/testenv/up mariadb cassandra dynamodb ferretdb)"``)
MORE_SYSTEMS = ("aos-mysql", "aos-cassandra", "aos-mongodb", "aos-dynamodb")
SCENARIOS = ("fanout", "many-jobs", "status", "submit")
PEERS = {"nchan": Nchan, "centrifugo": Centrifugo}


def ensure_postgres() -> None:
    if os.environ.get("AOS_TEST_POSTGRES_URL"):
        return
    out = subprocess.run(
        [str(ROOT / "scripts/testenv/up"), "postgres"], check=True, capture_output=True, text=True
    ).stdout
    os.environ.update(exports(out))


def raise_fd_limit() -> None:
    """Up to the hard limit, for this process and the ``aos serve`` children."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_system(record: Results, system: System, plan: Plan, chosen: set[str]) -> None:
    if "fanout" in chosen:
        for n in plan.fanout:
            await scenarios.fanout(record, system, plan, n)
    if "many-jobs" in chosen:
        await scenarios.many_jobs(record, system, plan)
    if isinstance(system, AOS):
        if "status" in chosen:
            job = "status-probe"
            await system.make_channels([job])
            await scenarios.status(
                record,
                system.name,
                system.port,
                f"{system.job_path(job)}/status",
                {"Authorization": f"Bearer {ADMIN}"},
                plan,
                system.pids(),
            )
        if "submit" in chosen:
            await scenarios.submit(record, system, plan)


async def ceilings(record: Results, plan: Plan, systems: list[str], chosen: set[str]) -> None:
    if "status" in chosen:
        nchan = await Nchan().__aenter__()  # the peer's nginx also serves the static file
        await scenarios.status(
            record, "nginx-static", nchan.port, "/static/status.json", {}, plan, nchan.pids()
        )
    if "submit" in chosen and "aos-postgresql" in systems:
        async with database_url("postgresql") as url:
            await scenarios.submit_ceiling(record, url, plan, [])


def summarise(record: Results, plan: Plan) -> None:
    """Each AOS figure as a ratio to the peers' and the ceilings' (higher: AOS is more)."""
    rows: list[tuple[str, str, str, str, float]] = []
    fanouts = [f"fanout-{n}" for n in plan.fanout]
    delivery = [*fanouts, f"many-jobs-{plan.many_jobs}"]
    comparisons = [
        (s, m, ("nchan", "centrifugo")) for s in delivery for m in ("delivered_per_s", "p99")
    ]
    comparisons += [(s, "rss_per_connection", ("nchan", "centrifugo")) for s in fanouts]
    comparisons += [("status", m, ("nginx-static",)) for m in ("throughput", "p99")]
    comparisons += [("submit", m, ("asyncpg-insert",)) for m in ("throughput", "p99")]
    for aos in [s for s in (*SYSTEMS, *MORE_SYSTEMS) if s.startswith("aos-")]:
        for scenario, metric, others in comparisons:
            ours = record.get(aos, scenario, metric)
            for other in others:
                theirs = record.get(other, scenario, metric)
                if ours is None or not theirs:
                    continue
                ratio = ours / theirs
                record(aos, scenario, f"{metric}_vs_{other}", ratio, "ratio")
                rows.append((aos, scenario, metric, other, ratio))
    if rows:
        print("\nsummary (AOS figure ÷ other system's):", file=sys.stderr)
        for aos, scenario, metric, other, ratio in rows:
            print(
                f"  {aos:15} {scenario:16} {metric:20} vs {other:15} {ratio:8.2f}", file=sys.stderr
            )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds per system")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--fanout", help="subscriber counts for fan-out, e.g. 1000,10000")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    if args.fanout:
        from dataclasses import replace

        plan = replace(plan, fanout=tuple(int(n) for n in args.fanout.split(",")))
    systems = args.systems.split(",")
    chosen = set(args.scenarios.split(","))
    unknown = (set(systems) - {*SYSTEMS, *MORE_SYSTEMS}) | (chosen - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    raise_fd_limit()
    if "aos-postgresql" in systems:
        ensure_postgres()
    record = Results(emit)
    with tempfile.TemporaryDirectory(prefix="aos-bench-") as tmp:
        for name in systems:
            async with AsyncExitStack() as stack:
                if name.startswith("aos-"):
                    workdir = Path(tmp) / name
                    workdir.mkdir()
                    system: System = AOS(name.removeprefix("aos-"), workdir)
                else:
                    system = PEERS[name]()
                await stack.enter_async_context(system)
                await run_system(record, system, plan, chosen)
        await ceilings(record, plan, systems, chosen)
    summarise(record, plan)
    return 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
