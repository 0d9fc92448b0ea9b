"""Rate limits and quotas of a namespace, enforced at its owner node.

Every request for a namespace is served by the node that owns it (the
cluster forwards the rest), so one node's token buckets and counters are
exact for the whole cluster. A node that serves a namespace it does not own
(its owner unreachable) enforces the same limits with its own counters.

Namespace configuration (``PUT /api/v1/namespaces/{ns}``)::

    "rateLimits": {
      "namespace":   {"rate": 500, "burst": 1000},  # every request to the namespace
      "perKey":      {"rate": 50,  "burst": 100},   # per key or subscriber token
      "statusPolls": {"rate": 1,   "burst": 5}      # status reads, per credential and job
    },
    "quotas": {
      "maxJobs": 100000,            # jobs stored (until purged)
      "maxStoredBytes": 10737418240,
      "maxConcurrentStreams": 1000, # open SSE streams and waiting long-polls
      "maxOutputBytes": 104857600   # one output version of one job
    }

Over a rate limit or a quota, the answer is ``429`` with ``Retry-After``
before anything is written (an output over ``maxOutputBytes`` is ``413``).
The root admin token is never limited.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage_adapters import StorageAdapter

from .metrics import Metrics
from .problems import Problem

__all__ = ["Limits", "Rate", "TokenBuckets", "nothing_reserved"]

#: wait suggested to a client over a quota that frees up as jobs expire
_QUOTA_RETRY = 60
_STREAMS_RETRY = 5


@dataclass(frozen=True, slots=True)
class Rate:
    rate: float  # tokens per second
    burst: float  # bucket size

    @classmethod
    def of(cls, config: Mapping[str, Any] | None) -> Rate | None:
        if not config:
            return None
        return cls(float(config["rate"]), float(config["burst"]))


class TokenBuckets:
    """Token buckets by key; memory bounded (full buckets are forgotten first)."""

    def __init__(
        self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        # key -> (tokens, when, rate)
        self._buckets: OrderedDict[Hashable, tuple[float, float, Rate]] = OrderedDict()

    def _level(self, key: Hashable, rate: Rate, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return rate.burst
        tokens, when, _ = entry
        return min(rate.burst, tokens + (now - when) * rate.rate)

    def take(self, wanted: Sequence[tuple[Hashable, Rate]], cost: float = 1.0) -> tuple[float, int]:
        """Take ``cost`` from every bucket, or from none: ``(0.0, -1)`` when
        taken, else the seconds until all of them could give it and the index
        of the bucket that needs the longest."""
        now = self.clock()
        levels = [self._level(key, rate, now) for key, rate in wanted]
        waits = [
            (cost - level) / rate.rate if rate.rate > 0 else math.inf
            for level, (_, rate) in zip(levels, wanted, strict=True)
        ]
        worst = max(range(len(waits)), key=waits.__getitem__, default=-1)
        if worst >= 0 and waits[worst] > 0:
            return waits[worst], worst
        for level, (key, rate) in zip(levels, wanted, strict=True):
            self._buckets[key] = (level - cost, now, rate)
            self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_entries:
            self._shrink(now)
        return 0.0, -1

    def _shrink(self, now: float) -> None:
        """Down to 90 % of the bound in one pass (so the pass is rare): full
        buckets first, then the least recently used."""
        full = [
            key
            for key, (tokens, when, rate) in self._buckets.items()
            if tokens + (now - when) * rate.rate >= rate.burst
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self.max_entries * 9 // 10:
            self._buckets.popitem(last=False)


@dataclass(slots=True)
class _Usage:
    jobs: int
    stored_bytes: int
    loaded_at: float
    pending_jobs: int = 0
    pending_bytes: int = 0


def _quota(config: Mapping[str, Any] | None, name: str) -> int | None:
    quotas = (config or {}).get("quotas") or {}
    value = quotas.get(name)
    return int(value) if value is not None else None


def _limited(kind: str, detail: str, retry_after: float, metrics: Metrics) -> Problem:
    metrics.limited.labels(kind).inc()
    return Problem(
        "rate-limited" if kind.startswith("rate") else "quota-exceeded",
        detail,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        extra={"limit": kind},
    )


class Limits:
    def __init__(self, store: StorageAdapter, metrics: Metrics, *, refresh: float) -> None:
        self.store = store
        self.metrics = metrics
        self.refresh = refresh
        self.buckets = TokenBuckets()
        self._usage: dict[str, _Usage] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, int] = {}

    # -- rate limits -------------------------------------------------------

    def admit(
        self,
        config: Mapping[str, Any] | None,
        namespace: str,
        credential: str | None,
        job_id: str | None = None,
        *,
        status_poll: bool = False,
    ) -> None:
        """Take a token for one request, or raise ``429``. ``credential``: who
        calls (``None``: the root admin, never limited)."""
        limits = (config or {}).get("rateLimits")
        if not limits or credential is None:
            return
        wanted: list[tuple[Hashable, Rate]] = []
        names: list[str] = []
        for name, key in (
            ("namespace", ("ns", namespace)),
            ("perKey", ("key", namespace, credential)),
            ("statusPolls", ("poll", namespace, credential, job_id) if status_poll else None),
        ):
            rate = Rate.of(limits.get(name))
            if rate is not None and key is not None:
                wanted.append((key, rate))
                names.append(name)
        wait, which = self.buckets.take(wanted)
        if wait > 0:
            raise _limited(
                f"rate:{names[which]}",
                f"over the {names[which]} rate limit of namespace {namespace!r}; "
                f"retry in {wait:.2f} s",
                wait,
                self.metrics,
            )

    # -- stored jobs and bytes ---------------------------------------------
    #
    # Per namespace: what the store held at the last count, plus what this
    # node has written since (``jobs``/``stored_bytes``), plus what is being
    # written now (``pending_*``: reserved, not yet written). A recount
    # replaces the first two and leaves the reservations alone, so a write
    # under way when the count ran is never forgotten; only the first count
    # of a namespace waits, the later ones run in the background.

    async def _usage_of(self, namespace: str) -> _Usage:
        usage = self._usage.get(namespace)
        if usage is None:
            loading = self._loading.get(namespace)
            if loading is None:
                loading = self._count(namespace)
            await asyncio.shield(loading)
            usage = self._usage[namespace]
        elif time.monotonic() - usage.loaded_at >= self.refresh and namespace not in self._loading:
            self._count(namespace)  # in the background; meanwhile the counts as they are
        return usage

    def _count(self, namespace: str) -> asyncio.Task[None]:
        async def count() -> None:
            try:
                started = time.monotonic()
                jobs, stored = await self.store.namespace_usage(namespace)
                usage = self._usage.get(namespace)
                if usage is None:
                    self._usage[namespace] = _Usage(jobs, stored, started)
                else:
                    usage.jobs, usage.stored_bytes, usage.loaded_at = jobs, stored, started
            finally:
                del self._loading[namespace]

        task = asyncio.get_running_loop().create_task(count())
        self._loading[namespace] = task
        task.add_done_callback(_retrieved)
        return task

    async def reserve_job(
        self, config: Mapping[str, Any] | None, namespace: str
    ) -> Callable[[bool], None]:
        """Count one more job against ``maxJobs``, or raise ``429``; returns the
        settlement: ``settle(True)`` once the job is stored, ``settle(False)``
        when it was not created after all."""
        quota = _quota(config, "maxJobs")
        if quota is None:
            return nothing_reserved
        usage = await self._usage_of(namespace)
        if usage.jobs + usage.pending_jobs >= quota:
            raise _limited(
                "quota:maxJobs",
                f"namespace {namespace!r} holds {usage.jobs} jobs, its quota; delete "
                "finished jobs or wait for them to expire",
                _QUOTA_RETRY,
                self.metrics,
            )
        usage.pending_jobs += 1

        def settle(stored: bool) -> None:
            usage.pending_jobs -= 1
            usage.jobs += int(stored)

        return settle

    async def reserve_bytes(
        self, config: Mapping[str, Any] | None, namespace: str, size: int
    ) -> Callable[[bool], None]:
        """Count ``size`` more bytes against ``maxStoredBytes``, or raise ``429``;
        returns the settlement, as :meth:`reserve_job`. Bytes are counted as
        they come (an upper bound of what is stored); the next count corrects
        that to the bytes as stored (compressed)."""
        quota = _quota(config, "maxStoredBytes")
        if quota is None:
            return nothing_reserved
        usage = await self._usage_of(namespace)
        if usage.stored_bytes + usage.pending_bytes + size > quota:
            raise _limited(
                "quota:maxStoredBytes",
                f"namespace {namespace!r} stores {usage.stored_bytes} bytes of its "
                f"{quota}; {size} more do not fit",
                _QUOTA_RETRY,
                self.metrics,
            )
        usage.pending_bytes += size

        def settle(stored: bool) -> None:
            usage.pending_bytes -= size
            if stored:
                usage.stored_bytes += size

        return settle

    def needs_length(self, config: Mapping[str, Any] | None) -> bool:
        """Whether an upload must declare its size (a byte quota applies)."""
        return _quota(config, "maxStoredBytes") is not None

    def released(self, namespace: str, jobs: int, stored_bytes: int) -> None:
        """A job and its bytes are gone."""
        usage = self._usage.get(namespace)
        if usage is not None:
            usage.jobs = max(0, usage.jobs - jobs)
            usage.stored_bytes = max(0, usage.stored_bytes - stored_bytes)

    @staticmethod
    def max_output(config: Mapping[str, Any] | None, default: int) -> int:
        quota = _quota(config, "maxOutputBytes")
        return default if quota is None else min(quota, default)

    # -- live connections --------------------------------------------------

    def hold_stream(self, config: Mapping[str, Any] | None, namespace: str) -> Callable[[], None]:
        """Take one of the namespace's ``maxConcurrentStreams``, or raise ``429``;
        returns its release (call it once)."""
        quota = _quota(config, "maxConcurrentStreams")
        if quota is None:
            return nothing_reserved
        open_now = self._streams.get(namespace, 0)
        if open_now >= quota:
            raise _limited(
                "quota:maxConcurrentStreams",
                f"namespace {namespace!r} has {open_now} streams open, its quota",
                _STREAMS_RETRY,
                self.metrics,
            )
        self._streams[namespace] = open_now + 1

        def release() -> None:
            left = self._streams[namespace] - 1
            if left:
                self._streams[namespace] = left
            else:
                del self._streams[namespace]

        return release


def nothing_reserved(*_: object) -> None:
    """The settlement (or release) of a reservation no quota asked for."""


def _retrieved(task: asyncio.Task[None]) -> None:
    """A failed background count is tried again on the next request."""
    if not task.cancelled():
        task.exception()
