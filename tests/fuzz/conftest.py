"""Prints how many examples each fuzzed operation ran, and the statuses they got."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .test_schemathesis import STATS

    if not STATS:
        return
    terminalreporter.section("schemathesis")
    for label, statuses in sorted(STATS.items()):
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        terminalreporter.write_line(f"{label}: {sum(statuses.values())} examples ({counts})")
    total = sum(sum(s.values()) for s in STATS.values())
    terminalreporter.write_line(f"{len(STATS)} operations, {total} examples")
