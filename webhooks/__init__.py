"""Webhooks: Standard Webhooks signing and verification, and the outbox drainer.

Receivers use :func:`verify`::

    from webhooks import verify, WebhookVerificationError

    payload = verify("whsec_...", request.headers, request.body)
"""

from .policy import DEFAULT_SCHEDULE, RetryPolicy
from .signing import (
    DEFAULT_TOLERANCE,
    WebhookVerificationError,
    new_secret,
    sign,
    signature_header,
    verify,
)
from .ssrf import AddressGuard, BlockedAddress, blocked_reason

__all__ = [
    "DEFAULT_SCHEDULE",
    "DEFAULT_TOLERANCE",
    "AddressGuard",
    "BlockedAddress",
    "RetryPolicy",
    "WebhookVerificationError",
    "blocked_reason",
    "new_secret",
    "sign",
    "signature_header",
    "verify",
]
