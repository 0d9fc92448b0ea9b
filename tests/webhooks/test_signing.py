"""Our signatures against the reference implementation of Standard Webhooks."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceError

from webhooks import WebhookVerificationError, new_secret, sign, signature_header, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def headers_for(secrets: list[str], msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secrets, msg_id, ts, body),
    }


@settings(max_examples=50)
@given(
    st.binary(min_size=0, max_size=300).filter(
        lambda b: b.decode("utf-8", "ignore") == b.decode("utf-8", "replace")
    ),
    st.from_regex(r"msg_[a-z0-9]{1,26}", fullmatch=True),
)
def test_reference_implementation_verifies_our_signatures(body: bytes, msg_id: str) -> None:
    ts = int(time.time())
    headers = headers_for([SECRET], msg_id, ts, body)
    Webhook(SECRET).verify(body, headers, json_parse=False)


def test_we_verify_the_reference_implementations_signatures() -> None:
    body = b'{"type":"job.status","data":{"jobId":"j"}}'
    ts = int(time.time())
    reference = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(ts, tz=UTC), body.decode())
    assert reference == sign(SECRET, "msg_1", ts, body)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(ts), "Webhook-Signature": reference}
    assert verify(SECRET, headers, body) == {"type": "job.status", "data": {"jobId": "j"}}


def test_the_spec_example_vector() -> None:
    # From the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_rotation_sends_a_signature_per_secret_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"a": 1}'
    ts = int(time.time())
    headers = headers_for([new, old], "msg_x", ts, body)
    assert len(headers["webhook-signature"].split()) == 2
    assert verify(old, headers, body) == {"a": 1}
    assert verify(new, headers, body) == {"a": 1}
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, body)
    with pytest.raises(ReferenceError):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b + b" "), "no signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no signature"),
        (
            lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
            "no signature",
        ),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 3600)}, b), "too far"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "integer"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
        (
            lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b),
            "no signature",
        ),
    ],
)
def test_tampering_is_caught(change: object, message: str) -> None:
    body = b'{"a": 1}'
    headers = headers_for([SECRET], "msg_1", int(time.time()), body)
    bad_headers, bad_body = change(headers, body)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET, bad_headers, bad_body)


def test_new_secrets_are_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    assert new_secret() != secret
