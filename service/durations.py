"""Durations as clients write them: seconds, or ISO-8601 (``PT30M``, ``P7D``, ``P1W``).

Years and months have no fixed length, so they are refused rather than
guessed; weeks, days, hours, minutes and (fractional) seconds are accepted.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_ISO = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.ASCII,
)
_MAX_LENGTH = 64
_UNITS = {"weeks": 604_800, "days": 86_400, "hours": 3_600, "minutes": 60, "seconds": 1}


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (a non-negative number or an ISO-8601 duration string).

    Raises :class:`ValueError` with a message fit for a client.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or an ISO-8601 duration like PT1H")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("a duration must be finite")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or an ISO-8601 duration like PT1H")
    text = value.strip().upper()
    # Also keeps the value finite; and the patterns below take quadratic time on long digit runs.
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"a duration is at most {_MAX_LENGTH} characters")
    if re.fullmatch(r"\d+(\.\d+)?", text, re.ASCII):
        return float(text)
    match = _ISO.match(text)
    if match is None:
        if re.match(r"^P(\d+Y|\d+M|.*\d+Y|[^T]*\d+M)", text):
            raise ValueError(
                f"{value!r}: years and months have no fixed length; use weeks or days (P30D)"
            )
        raise ValueError(f"{value!r} is not an ISO-8601 duration like PT1H or P7D")
    total = 0.0
    for unit, seconds in _UNITS.items():
        amount = match.group(unit)
        if amount is not None:
            total += float(amount) * seconds
    return total


def format_duration(seconds: float) -> str:
    """The ISO-8601 spelling of ``seconds`` (``P1DT2H``, ``PT0S``)."""
    whole = int(seconds)
    fraction = seconds - whole
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{days}D" if days else "")
    time_part = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs or fraction:
        time_part += f"{secs + fraction:g}S"
    if time_part:
        out += "T" + time_part
    return out if out != "P" else "PT0S"
