"""Prometheus metrics, registered on a registry the app is given."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _Children:
    """``metric.labels(*values)``, remembered: that lookup is slow on hot paths."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_duration = Histogram(
            "aos_http_request_duration_seconds",
            "Time from request start to the response headers, by route template.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.jobs = Counter(
            "aos_jobs",
            "Jobs that entered each status on this node.",
            ["status"],
            registry=registry,
        )
        self.events = Counter(
            "aos_events",
            "Log entries appended on this node, by kind.",
            ["kind"],
            registry=registry,
        )
        self.appended_bytes = Counter(
            "aos_appended_bytes",
            "Output bytes appended on this node.",
            registry=registry,
        )
        self.stored_bytes = Counter(
            "aos_stored_bytes",
            "Output bytes stored on this node, after compression.",
            registry=registry,
        )
        self.purged_jobs = Counter(
            "aos_purged_jobs",
            "Jobs removed with their log and deliveries on this node (expired or deleted).",
            registry=registry,
        )
        self.janitor_errors = Counter(
            "aos_janitor_errors",
            "Janitor rounds that failed (the next round tries again).",
            registry=registry,
        )
        self.open_streams = Gauge(
            "aos_open_streams",
            "SSE streams open on this node.",
            registry=registry,
        )
        self.waiting_polls = Gauge(
            "aos_waiting_long_polls",
            "Long-poll requests waiting for a change on this node.",
            registry=registry,
        )
        self.lagged = Counter(
            "aos_stream_catchups",
            "Times a live subscriber fell behind and caught up from the store.",
            registry=registry,
        )
        self.resets = Counter(
            "aos_stream_resets",
            "SSE streams told that entries after their cursor were purged.",
            registry=registry,
        )
        self.store_up = Gauge(
            "aos_store_up",
            "1 while the store answers the periodic health check, else 0.",
            registry=registry,
        )
        self.forwards = Counter(
            "aos_forwarded_requests",
            "Requests for namespaces owned by another node, by outcome: forwarded, "
            "served-here (the owner was unreachable), failed (502/504).",
            ["outcome"],
            registry=registry,
        )
        self.cluster_members = Gauge(
            "aos_cluster_members",
            "Members in this node's ring (itself included).",
            registry=registry,
        )
        self.owned_shards = Gauge(
            "aos_owned_shards",
            "Shards (of 1024) this node owns in its ring.",
            registry=registry,
        )
        self.audit_entries = Counter(
            "aos_audit_entries",
            "Audit log entries recorded, by action.",
            ["action"],
            registry=registry,
        )
        self.audit_dropped = Counter(
            "aos_audit_dropped",
            "Audit entries dropped because too many were waiting for an unreachable store.",
            registry=registry,
        )
        self.audit_suppressed = Counter(
            "aos_audit_suppressed",
            "Refused credentials left out of a namespace's audit log (over 50 in 10 s).",
            registry=registry,
        )
        self.limited = Counter(
            "aos_limited_requests",
            "Requests refused by a rate limit or a quota, by which one.",
            ["limit"],
            registry=registry,
        )
        self.forwards_of = _Children(self.forwards)
        self.request_duration_of = _Children(self.request_duration)
        self.jobs_of = _Children(self.jobs)
        self.events_of = _Children(self.events)

    def forwarded(self, outcome: str) -> None:
        self.forwards_of(outcome).inc()
