"""Subscriber tokens: short-lived, read-only JWTs for browsers.

A backend that holds a key mints a token (``POST /api/v1/namespaces/{ns}/
subscriber-tokens``) — or signs one itself — and hands it to a browser, which
opens the SSE stream or long-polls with it (``Authorization: Bearer`` or
``?access_token=`` for ``EventSource``) without ever holding a key.

Claims: ``aud`` = ``"aos"``, ``ns`` the namespace, ``exp`` (required), and
optionally ``job`` (the one job it may read), ``sub`` (who, for the audit log),
``iat``/``nbf``. The header's ``kid`` names one of the namespace's
``subscriberKeys``, and its ``alg`` must be that key's: ``HS256`` (a shared
secret) or ``EdDSA`` (an Ed25519 public key; the backend keeps the private
one). Removing a key from the namespace revokes every token it signed.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = [
    "AUDIENCE",
    "TokenError",
    "TokenKey",
    "mint",
    "new_managed_key",
    "parse_key_config",
    "signing_key",
    "token_keys",
    "unverified_namespace",
    "verify",
]

AUDIENCE = "aos"
ALGORITHMS = ("HS256", "EdDSA")
KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: clock skew tolerated on ``exp``/``nbf``/``iat`` by default (``AOS_TOKEN_LEEWAY``)
LEEWAY = 30
#: shortest HS256 secret: RFC 7518 §3.2 wants a key as long as the hash
MIN_SECRET_BYTES = 32
_MANAGED_PREFIX = "aos-"


class TokenError(Exception):
    """A token that is not valid; the message is safe to show its bearer."""


@dataclass(frozen=True, slots=True)
class TokenKey:
    kid: str
    alg: str
    #: HS256: the secret; EdDSA: the public key
    key: bytes | Ed25519PublicKey
    #: made by the service (to mint tokens), not given by an admin
    managed: bool = False


def _b64url(raw: str) -> bytes:
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))


def _public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or base64url of its 32 raw bytes."""
    if "BEGIN PUBLIC KEY" in text:
        key = load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 public key")
        return key
    raw = _b64url(text.strip())
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_key_config(entry: Any) -> dict[str, Any]:
    """Check one ``subscriberKeys`` entry of a namespace ``PUT``; the entry to store.

    Raises ``ValueError`` with a message for the client.
    """
    if not isinstance(entry, Mapping):
        raise ValueError("must be an object {kid, alg, secret | publicKey}")
    unknown = set(entry) - {"kid", "alg", "secret", "publicKey"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    kid, alg = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ValueError("kid must match ^[A-Za-z0-9._-]{1,64}$")
    if kid.startswith(_MANAGED_PREFIX):
        if set(entry) != {"kid"}:
            raise ValueError(
                f"kids starting {_MANAGED_PREFIX!r} are the service's own: list one as "
                '{"kid": "…"} alone to keep it'
            )
        return {"kid": kid, "keep": True}
    if alg == "HS256":
        secret = entry.get("secret")
        if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS256 key needs a secret of {MIN_SECRET_BYTES}+ bytes")
        if secret.startswith("enc:"):
            raise ValueError("a secret may not start with 'enc:' (the form of a sealed one)")
        if "publicKey" in entry:
            raise ValueError("an HS256 key has a secret, not a publicKey")
        return {"kid": kid, "alg": alg, "secret": secret}
    if alg == "EdDSA":
        public = entry.get("publicKey")
        if not isinstance(public, str):
            raise ValueError("an EdDSA key needs publicKey: PEM or base64url of 32 bytes")
        if "secret" in entry:
            raise ValueError("an EdDSA key has a publicKey, not a secret")
        try:
            _public_key(public)
        except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
            raise ValueError(f"publicKey is not an Ed25519 public key: {exc}") from None
        return {"kid": kid, "alg": alg, "publicKey": public}
    raise ValueError(f"alg must be one of {', '.join(ALGORITHMS)}")


def new_managed_key() -> dict[str, Any]:
    """The HS256 key the service mints tokens with, made on first need."""
    return {
        "kid": f"{_MANAGED_PREFIX}{secrets.token_hex(4)}",
        "alg": "HS256",
        "secret": secrets.token_urlsafe(32),
        "managed": True,
    }


_parsed: OrderedDict[tuple[str, str, str], TokenKey] = OrderedDict()


def _token_key(entry: Mapping[str, Any]) -> TokenKey:
    material = entry.get("secret") or entry.get("publicKey") or ""
    ident = (entry["kid"], entry["alg"], material)
    cached = _parsed.get(ident)
    if cached is None:
        key: bytes | Ed25519PublicKey = (
            material.encode() if entry["alg"] == "HS256" else _public_key(material)
        )
        cached = TokenKey(entry["kid"], entry["alg"], key, bool(entry.get("managed")))
        _parsed[ident] = cached
        if len(_parsed) > 1000:
            _parsed.popitem(last=False)
    return cached


def token_keys(config: Mapping[str, Any]) -> dict[str, TokenKey]:
    """A namespace's verification keys by kid."""
    return {e["kid"]: _token_key(e) for e in config.get("subscriberKeys") or ()}


def signing_key(config: Mapping[str, Any]) -> TokenKey | None:
    """The service's own HS256 key of a namespace, if it has one yet."""
    for entry in config.get("subscriberKeys") or ():
        if entry.get("managed"):
            return _token_key(entry)
    return None


def mint(
    key: TokenKey,
    namespace: str,
    job_id: str | None,
    subject: str | None,
    now: int,
    ttl: int,
    minted_by: str | None = None,
) -> tuple[str, int]:
    """A signed token and its expiry (Unix seconds). ``now`` in Unix seconds;
    ``minted_by``: the key that asked for it (the token works only while it does)."""
    assert isinstance(key.key, bytes)
    claims: dict[str, Any] = {"aud": AUDIENCE, "ns": namespace, "iat": now, "exp": now + ttl}
    if job_id is not None:
        claims["job"] = job_id
    if subject is not None:
        claims["sub"] = subject
    if minted_by is not None:
        claims["mk"] = minted_by
    token = jwt.encode(claims, key.key, algorithm=key.alg, headers={"kid": key.kid})
    return token, now + ttl


def unverified_namespace(token: str) -> tuple[str | None, str | None]:
    """``(namespace, kid)`` a token claims, read before its signature is checked
    (to find the keys to check it with)."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not a JWT: {exc}") from None
    ns, kid = claims.get("ns"), header.get("kid")
    return (ns if isinstance(ns, str) else None, kid if isinstance(kid, str) else None)


def verify(
    token: str,
    keys: Mapping[str, TokenKey],
    kid: str | None,
    now: int,
    max_lifetime: float,
    leeway: float = LEEWAY,
) -> dict[str, Any]:
    """The claims of a token signed by one of ``keys``, checked; ``now`` in Unix seconds."""
    key = keys.get(kid) if kid is not None else None
    if key is None:
        raise TokenError("the token's kid names no subscriber key of its namespace")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            audience=AUDIENCE,
            options={"require": ["exp", "ns"]},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token expired") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    exp = claims["exp"]
    if not isinstance(exp, int | float) or exp - now > max_lifetime + leeway:
        raise TokenError(f"the token lives longer than the {max_lifetime:g} s allowed")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and exp - iat > max_lifetime + leeway:
        raise TokenError(f"the token lives longer than the {max_lifetime:g} s allowed")
    return claims


def public_entries(config: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
    """``subscriberKeys`` as an admin reads them back: never a secret."""
    return [
        {
            "kid": e["kid"],
            "alg": e["alg"],
            "managed": bool(e.get("managed")),
            **({"publicKey": e["publicKey"]} if "publicKey" in e else {}),
        }
        for e in config.get("subscriberKeys") or ()
    ]
