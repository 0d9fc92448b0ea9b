"""Retention: the janitor purges jobs whose ``expiresAt`` has passed.

A job expires ``retentionPolicy.ttl`` after it ends (the job's own, else its
namespace's default, else ``AOS_DEFAULT_RETENTION``). From that moment the API
answers ``404`` for it; the janitor then removes its log, output and
deliveries in bounded batches (``AOS_PURGE_BATCH`` rows per transaction), and
the job row last, so a purge cut short by a crash is simply picked up again.
Each round takes the expired jobs earliest first, a page at a time, until none
are left, then sleeps ``AOS_JANITOR_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from storage_adapters import StorageAdapter

from .audit import AuditLog
from .clock import now_us
from .jobs import JobService
from .logs import log_event
from .metrics import Metrics

__all__ = ["Janitor"]

logger = logging.getLogger("aos.janitor")

_PAGE = 100
_AUDIT_PAGE = 1000


class Janitor:
    def __init__(
        self,
        store: StorageAdapter,
        jobs: JobService,
        metrics: Metrics,
        *,
        interval: float,
        shards: Callable[[], Collection[int] | None] = lambda: None,
        clock: Callable[[], int] = now_us,
        audit: AuditLog | None = None,
    ) -> None:
        """``shards``: the shards this node looks after (``None``: all of them)."""
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self.interval = interval
        self.shards = shards
        self.clock = clock
        self.audit = audit

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the next round tries again
                self.metrics.janitor_errors.inc()
                log_event(logger, "janitor.failed", logging.WARNING, detail=str(exc))
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Purge every job expired by now; returns how many."""
        purged = 0
        while True:
            expired = await self.store.expired_jobs(self.clock(), _PAGE, self.shards())
            for job in expired:
                await self.jobs.purge(job)
                purged += 1
            if len(expired) < _PAGE:
                break
        if self.audit is not None:
            while await self.audit.purge(_AUDIT_PAGE) == _AUDIT_PAGE:
                pass
        if purged:
            log_event(logger, "janitor.swept", purged=purged)
        return purged
