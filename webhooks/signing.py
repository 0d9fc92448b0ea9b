"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A message is signed as ``HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")``
over the exact body bytes sent, and the header carries ``v1,<base64>`` — one
entry per secret while a rotation is under way, separated by spaces. Secrets
are ``whsec_`` followed by the base64 of the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = [
    "DEFAULT_TOLERANCE",
    "WebhookVerificationError",
    "new_secret",
    "sign",
    "signature_header",
    "verify",
]

DEFAULT_TOLERANCE = 300  # seconds either side of now
_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The message is not authentic, or not fresh."""


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    encoded = secret.removeprefix(_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    digest = hmac.new(
        _key(secret), b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets: Iterable[str | bytes], msg_id: str, timestamp: int, body: bytes
) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join([sign(secret, msg_id, timestamp, body) for secret in secrets])


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if value is None:
        raise WebhookVerificationError(f"missing header {name}")
    return value


def verify(
    secret: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """Check a received webhook and return its JSON payload.

    ``secret`` is the endpoint's secret (or several, while you rotate yours).
    Raises :class:`WebhookVerificationError` when a header is missing, the
    timestamp is more than ``tolerance`` seconds away from now (a replay), or
    no signature matches. Comparisons run in constant time.
    """
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    candidates = [secret] if isinstance(secret, str | bytes) else list(secret)
    expected = [
        sign(candidate, msg_id, timestamp, body).partition(",")[2].encode()
        for candidate in candidates
    ]
    matched = False
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        for digest in expected:
            # no early exit: every pair is compared
            matched |= hmac.compare_digest(value.encode(), digest)
    if not matched:
        raise WebhookVerificationError("no signature matches")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookVerificationError("the body is not JSON") from None
