"""Time as the service keeps it: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache

__all__ = ["now_us", "parse_timestamp", "render_timestamp"]


def now_us() -> int:
    return time.time_ns() // 1_000


@lru_cache(maxsize=1024)
def _second(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
    )


def render_timestamp(us: int | None) -> str | None:
    """RFC 3339 in UTC with microseconds, like ``2026-11-23T12:00:00.123456Z``.

    On every response path, so the date part is cached per second.
    """
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second(seconds)}{micros:06d}Z"


def parse_timestamp(text: str) -> int:
    """Microseconds in an RFC 3339 / ISO-8601 timestamp that names its offset."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone; add Z or an offset like +02:00")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
