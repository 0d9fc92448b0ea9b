"""Identifiers: their syntax, and how the service makes new ones."""

from __future__ import annotations

import os
import re
import secrets
import time

__all__ = [
    "JOB_ID_RE",
    "NAMESPACE_RE",
    "new_job_id",
    "new_key_id",
    "new_request_id",
    "valid_job_id",
    "valid_key_id",
    "valid_namespace",
]

NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
JOB_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
KEY_ID_RE = re.compile(r"[0-9a-z]{1,64}")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def valid_namespace(name: str) -> bool:
    return NAMESPACE_RE.fullmatch(name) is not None


def valid_job_id(job_id: str) -> bool:
    return JOB_ID_RE.fullmatch(job_id) is not None


def valid_key_id(key_id: str) -> bool:
    """A key id as :func:`new_key_id` makes them (any 1-64 of its alphabet, to be lenient)."""
    return KEY_ID_RE.fullmatch(key_id) is not None


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        out.append(_CROCKFORD[digit])
    return "".join(reversed(out))


def new_job_id() -> str:
    """A lowercase ULID: 48 bits of milliseconds then 80 random bits; sorts by time."""
    millis = time.time_ns() // 1_000_000
    return _base32(millis, 10) + _base32(int.from_bytes(os.urandom(10), "big"), 16)


def new_key_id() -> str:
    return _base32(secrets.randbits(60), 12)


def new_request_id() -> str:
    return secrets.token_hex(8)
