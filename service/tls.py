"""HTTPS for ``aos serve``: the server's TLS context, TLS 1.3 at least.

The context is built (and the certificate and key loaded) before the server
starts, so a missing, unreadable, encrypted or mismatched file stops the
process at start with a message naming the setting, and uvicorn is handed the
finished context (``ssl_context_factory``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from storage_adapters import ConfigurationError

__all__ = ["MINIMUM_VERSION", "server_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_3


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for the passphrase.
    raise _EncryptedKey


def _read(name: str, path: str, marker: bytes, what: str) -> None:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{name}={path}: cannot read it: {exc.strerror or exc}") from None
    if marker not in data:
        raise ConfigurationError(f"{name}={path}: not a PEM file with {what}")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS context serving ``cert`` (PEM chain, leaf first) with ``key`` (PEM)."""
    _read("AOS_TLS_CERT", cert, b"-----BEGIN CERTIFICATE-----", "a certificate")
    _read("AOS_TLS_KEY", key, b"PRIVATE KEY-----", "a private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key, _no_password)
    except _EncryptedKey:
        raise ConfigurationError(
            f"AOS_TLS_KEY={key}: the key is encrypted; give the service an unencrypted key "
            "(protect the file instead)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            detail = "the key does not belong to the certificate"
        else:
            detail = f"cannot load them: {exc.reason or exc}"
        raise ConfigurationError(f"AOS_TLS_CERT={cert}, AOS_TLS_KEY={key}: {detail}") from None
    return context
