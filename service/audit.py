"""The audit log: who did what to a namespace, append-only, kept per policy.

Audited: admin actions (namespace configuration, keys, webhook secrets and
endpoints, delivery replays), job submit/cancel/delete, and failed uses of a
key or token (bad secret, revoked, expired, another namespace, not allowed).
Entries go to the store in batches every ``AOS_AUDIT_FLUSH_INTERVAL`` (a
submit costs no extra round trip); reading the log through a node first
writes that node's pending entries. A node that crashes loses at most the
entries of its last interval; one whose store is down keeps them (up to
``_MAX_PENDING``) and retries.

An entry lives ``auditRetention`` (the namespace's, else
``AOS_AUDIT_RETENTION``); the janitor purges older ones where the store has
no native TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any

from storage_adapters import AuditRecord, StorageAdapter, StoreError, StoreUnavailable

from .clock import now_us
from .logs import log_event, request_id_var
from .metrics import Metrics
from .namespaces import NamespaceDirectory

__all__ = ["FOREVER", "AuditLog", "entry_id"]

logger = logging.getLogger("aos.audit")

#: the expiry of an entry kept forever: 9999-12-31
FOREVER = 253_402_300_799_000_000
_BATCH = 500
_MAX_PENDING = 100_000
#: a failure is audited once per (namespace, credential, reason) in this many µs
_FAILURE_WINDOW = 10_000_000
#: failures audited per namespace and window at most
_FAILURES_PER_WINDOW = 50


def entry_id(at: int) -> str:
    """An id that sorts by time: 16 hex digits of µs, 8 random."""
    return f"{at:016x}{secrets.randbits(32):08x}"


class AuditLog:
    def __init__(
        self,
        store: StorageAdapter,
        namespaces: NamespaceDirectory,
        metrics: Metrics,
        *,
        retention: int | None,
        flush_interval: float,
    ) -> None:
        self.store = store
        self.namespaces = namespaces
        self.metrics = metrics
        self.retention = retention
        self.flush_interval = flush_interval
        self._pending: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failures: dict[tuple[str, str, str], int] = {}
        # namespace -> [window ends (µs), failures audited in it, failures left out]
        self._windows: dict[str, list[int]] = {}

    def record(
        self,
        namespace: str,
        action: str,
        actor: str,
        *,
        outcome: str = "success",
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one entry (written within ``flush_interval``)."""
        at = now_us()
        self._pending.append(
            AuditRecord(
                namespace=namespace,
                entry_id=entry_id(at),
                at=at,
                action=action,
                actor=actor,
                outcome=outcome,
                target=target,
                request_id=request_id_var.get(),
                detail=dict(detail or {}),
                expires_at=0,  # set from the namespace's policy when written
            )
        )
        self.metrics.audit_entries.labels(action).inc()
        if len(self._pending) > _MAX_PENDING:
            self._pending.popleft()
            self.metrics.audit_dropped.inc()
        if len(self._pending) >= _BATCH:
            self._wake.set()

    def failure(self, namespace: str, action: str, actor: str, reason: str, **detail: Any) -> None:
        """Audit a refused credential, at most once per window for the same one
        and reason (a client retrying a bad key must not flood the log), and at
        most :data:`_FAILURES_PER_WINDOW` a window per namespace (an attacker
        trying random keys must not either); the next entry after a window
        that was cut short says how many were left out (``detail.suppressed``)."""
        now = now_us()
        ident = (namespace, actor, reason)
        if self._failures.get(ident, 0) > now:
            return
        window = self._windows.get(namespace)
        if window is None or window[0] <= now:
            suppressed = window[2] if window is not None else 0
            window = [now + _FAILURE_WINDOW, 0, suppressed]
            if len(self._windows) > 10_000:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            self._windows[namespace] = window
        if window[1] >= _FAILURES_PER_WINDOW:
            window[2] += 1
            self.metrics.audit_suppressed.inc()
            return
        window[1] += 1
        if len(self._failures) > 10_000:  # at most 50 a namespace a window get here
            self._failures = {k: v for k, v in self._failures.items() if v > now}
        self._failures[ident] = now + _FAILURE_WINDOW
        if window[2]:
            detail["suppressed"], window[2] = window[2], 0
        self.record(
            namespace, action, actor, outcome="failure", detail={"reason": reason, **detail}
        )

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # kept, retried on the next round
                log_event(logger, "audit.flush_failed", logging.WARNING, detail=str(exc))

    async def flush(self) -> None:
        """Write every pending entry; on failure they stay pending."""
        async with self._lock:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
                try:
                    dated = [_with_expiry(e, await self._retention_of(e.namespace)) for e in batch]
                    await self.store.append_audit(dated)
                except StoreError as exc:
                    if isinstance(exc, StoreUnavailable):
                        self._pending.extendleft(reversed(batch))
                        raise
                    await self._one_by_one(dated, exc)
                except BaseException:
                    self._pending.extendleft(reversed(batch))
                    raise

    async def _one_by_one(self, entries: list[AuditRecord], exc: Exception) -> None:
        """A batch the store refused (not for being down): write its entries
        alone, and log the ones it refuses still rather than retry them forever."""
        for entry in entries:
            try:
                await self.store.append_audit([entry])
            except StoreUnavailable:
                self._pending.appendleft(entry)
                raise
            except StoreError as refused:
                self.metrics.audit_dropped.inc()
                log_event(
                    logger,
                    "audit.refused",
                    logging.ERROR,
                    detail=str(refused or exc),
                    namespace=entry.namespace,
                    action=entry.action,
                    actor=entry.actor,
                    target=entry.target,
                )

    async def _retention_of(self, namespace: str) -> int | None:
        record = await self.namespaces.get(namespace)
        if record is not None and "auditRetention" in record.config:
            retention: int | None = record.config["auditRetention"]
            return retention
        return self.retention

    async def purge(self, limit: int) -> int:
        """Remove expired entries, up to ``limit`` (the janitor's call)."""
        return await self.store.purge_audit(now_us(), limit)


def _with_expiry(entry: AuditRecord, retention: int | None) -> AuditRecord:
    expires = FOREVER if retention is None else entry.at + retention * 1_000_000
    return dataclasses.replace(entry, expires_at=expires)
