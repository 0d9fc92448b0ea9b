"""Encryption at rest: AES-256-GCM envelopes for output chunks and webhook secrets.

Three layers of keys (see docs/security.md, "Encryption at rest"):

* **Master keys** come from ``AOS_MASTER_KEYS`` (``id:base64``, comma-separated)
  or ``AOS_MASTER_KEY_FILE`` (one ``id:base64`` a line, re-read when it
  changes). The first is the primary; the others only unwrap. They never
  encrypt data, only data keys.
* **Data keys**, one per namespace and master key, encrypt the data. Each is
  derived (HKDF-SHA256) from the master key that first made it, the namespace
  and its id ``dk-<master id>``, and kept in the namespace's configuration
  wrapped (AES-GCM) by a master key. Derivation makes a data key a function
  of its id: two nodes that make the same one at the same time make the same
  bytes, so a lost race on the namespace row (which has no compare-and-set)
  never loses a key that encrypted something; the row's entry is what keeps
  the key once its own master key is retired. Unwrapped keys are cached.
* **Sealed values**: ``nonce (12) || ciphertext || tag (16)``, 28 bytes more
  than the plaintext, with associated data that binds each value to its place
  (a chunk to its namespace, job, version, index, offset, format and codec), so
  a stored value cannot be moved, swapped or relabelled without failing.

A chunk is sealed after compression; its stored ``codec`` becomes
``aes+<inner codec>`` (``aes`` for a chunk stored as it came), and its version
records the data key (:attr:`VersionRecord.key_id`). Chunks with another
codec are plaintext, so data written before encryption was turned on reads as
before, and a node that knows nothing of encryption refuses a sealed chunk
(unknown codec) rather than serve ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage_adapters import ConfigurationError, CorruptData, EventKind, EventRecord, StoreError

from .lifecycle import Change
from .logs import log_event

__all__ = [
    "OVERHEAD",
    "DataKey",
    "DataKeys",
    "EncryptionKeyMissing",
    "KeySource",
    "MasterKey",
    "MasterKeys",
    "inner_codec",
    "load_data_keys",
    "open_chunk",
    "open_secret",
    "parse_master_keys",
    "seal_append",
    "seal_chunk",
    "seal_secret",
    "secret_key_id",
]

logger = logging.getLogger("aos.crypto")

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: bytes a sealed value takes beyond its plaintext
OVERHEAD = NONCE_BYTES + TAG_BYTES
#: how often a master key file is checked for changes, at most (seconds)
KEY_FILE_CHECK = 2.0

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SEALED = "aes"
_SECRET_PREFIX = "enc:v1:"
_DATA_KEY_PREFIX = "dk-"


class EncryptionKeyMissing(StoreError):
    """Stored data is encrypted with a key this node cannot get: no master keys
    are configured, or not the one that wraps the data key. The data is intact;
    configure the key (an HTTP 503 ``encryption-key-missing``)."""


# -- master keys --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasterKey:
    id: str
    aead: AESGCM = field(repr=False, compare=False)
    material: bytes = field(repr=False)


def parse_master_keys(text: str) -> tuple[MasterKey, ...]:
    """Master keys from ``id:base64`` entries separated by commas or lines
    (``#`` starts a comment line); the first is the primary.

    Raises :class:`ValueError` naming the entry (by position and id, never
    its key material) that is not right.
    """
    keys: list[MasterKey] = []
    entries = [part.strip() for line in text.splitlines() for part in line.split(",")]
    for number, entry in enumerate((e for e in entries if e and not e.startswith("#")), 1):
        key_id, sep, encoded = entry.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        if not sep or not _ID_RE.fullmatch(key_id):
            raise ValueError(
                f"key {number} is not id:base64 with an id of letters, digits, '_', '.' "
                "or '-' (at most 64)"
            )
        try:
            material = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {number} ({key_id!r}) is not valid base64") from None
        if len(material) != KEY_BYTES:
            raise ValueError(
                f"key {number} ({key_id!r}) is {len(material)} bytes; a master key is "
                f"{KEY_BYTES} random bytes (openssl rand -base64 32)"
            )
        if any(k.id == key_id for k in keys):
            raise ValueError(f"key id {key_id!r} appears twice")
        keys.append(MasterKey(key_id, AESGCM(material), material))
    if not keys:
        raise ValueError("no key: give at least one id:base64 entry")
    return tuple(keys)


class MasterKeys:
    """The configured master keys, the primary first.

    Keys from a file are re-read when the file changes (its modification
    time, size or inode), checked at most every ``check_interval`` seconds,
    so keys rotate without a restart. A file that no longer reads or parses
    keeps the keys read before (and is logged), since a half-written file
    must not take a running node's keys away.
    """

    def __init__(
        self,
        keys: Sequence[MasterKey],
        *,
        path: Path | None = None,
        check_interval: float = KEY_FILE_CHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = tuple(keys)
        self.path = path
        self.check_interval = check_interval
        self.clock = clock
        self._next_check = clock() + check_interval
        self._stamp = _stamp(path) if path is not None else None

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> MasterKeys:
        """Keys from a file; :class:`ConfigurationError` naming it if it is not right."""
        path = Path(path)
        try:
            keys = parse_master_keys(path.read_text())
        except OSError as exc:
            raise ConfigurationError(
                f"AOS_MASTER_KEY_FILE={str(path)!r}: cannot read it: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"AOS_MASTER_KEY_FILE={str(path)!r}: {exc}") from None
        return cls(keys, path=path, **options)

    @property
    def all(self) -> tuple[MasterKey, ...]:
        self._refresh()
        return self._keys

    @property
    def primary(self) -> MasterKey:
        return self.all[0]

    def get(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.all if k.id == key_id), None)

    def _refresh(self) -> None:
        if self.path is None:
            return
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            keys = parse_master_keys(self.path.read_text())
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log_event(
                logger,
                "master_keys.reload_failed",
                logging.ERROR,
                file=str(self.path),
                detail=detail,
                kept=[k.id for k in self._keys],
            )
            return
        self._keys, self._stamp = keys, stamp
        log_event(logger, "master_keys.reloaded", file=str(self.path), ids=[k.id for k in keys])


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


# -- data keys ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataKey:
    id: str
    aead: AESGCM = field(repr=False, compare=False)
    material: bytes = field(repr=False)


class KeySource(Protocol):
    """Where a reader gets the data key a stored value names."""

    async def data_key(self, namespace: str, key_id: str) -> DataKey: ...


def _derive(master: MasterKey, namespace: str, key_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=b"aos data key v1",
        info=b"\0".join((namespace.encode(), key_id.encode())),
    ).derive(master.material)


def _wrap_aad(namespace: str, key_id: str) -> bytes:
    return b"\0".join((b"aos-data-key-v1", namespace.encode(), key_id.encode()))


class DataKeys:
    """The namespaces' data keys: made, wrapped and unwrapped with the master
    keys, and cached unwrapped (at most ``cache_size``, least recently used
    out)."""

    def __init__(self, masters: MasterKeys, cache_size: int = 4096) -> None:
        self.masters = masters
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], DataKey] = OrderedDict()

    def current(self, namespace: str) -> DataKey:
        """The key new data of ``namespace`` is sealed with: the primary's."""
        primary = self.masters.primary
        key_id = _DATA_KEY_PREFIX + primary.id
        return self.cached(namespace, key_id) or self._remember(
            namespace, key_id, _derive(primary, namespace, key_id)
        )

    def cached(self, namespace: str, key_id: str) -> DataKey | None:
        key = self._cache.get((namespace, key_id))
        if key is not None:
            self._cache.move_to_end((namespace, key_id))
        return key

    def resolve(self, namespace: str, key_id: str, entries: Iterable[Mapping[str, Any]]) -> DataKey:
        """The data key ``key_id`` of ``namespace``, from the cache, its entry
        in ``entries`` (unwrapped), or derived again from the master key that
        made it. :class:`EncryptionKeyMissing` when none of them can."""
        key = self.cached(namespace, key_id)
        if key is not None:
            return key
        entry = next((e for e in entries if e.get("id") == key_id), None)
        master = self.masters.get(entry["masterKeyId"]) if entry is not None else None
        if entry is not None and master is not None:
            try:
                wrapped = base64.b64decode(entry["wrapped"])
                material = _open(master, wrapped, _wrap_aad(namespace, key_id))
            except (InvalidTag, binascii.Error, KeyError, TypeError):
                raise CorruptData(
                    f"data key {key_id!r} of namespace {namespace!r} does not unwrap with "
                    f"master key {master.id!r}"
                ) from None
            return self._remember(namespace, key_id, material)
        origin = self.masters.get(key_id.removeprefix(_DATA_KEY_PREFIX))
        if key_id.startswith(_DATA_KEY_PREFIX) and origin is not None:
            return self._remember(namespace, key_id, _derive(origin, namespace, key_id))
        wrapped_by = entry.get("masterKeyId") if entry is not None else None
        raise EncryptionKeyMissing(
            f"namespace {namespace!r} has data encrypted with data key {key_id!r}"
            + (
                f", wrapped by master key {wrapped_by!r}"
                if wrapped_by
                else ", which its configuration does not hold"
            )
            + f"; this node's master keys are {self._ids()} (AOS_MASTER_KEYS or "
            "AOS_MASTER_KEY_FILE)"
        )

    def wrap(self, namespace: str, key: DataKey, created_at: int) -> dict[str, Any]:
        """The configuration entry that keeps ``key``, wrapped by the primary."""
        master = self.masters.primary
        nonce = os.urandom(NONCE_BYTES)
        sealed = master.aead.encrypt(nonce, key.material, _wrap_aad(namespace, key.id))
        return {
            "id": key.id,
            "wrapped": base64.b64encode(nonce + sealed).decode("ascii"),
            "masterKeyId": master.id,
            "createdAt": created_at,
        }

    def rewrap(
        self, namespace: str, entries: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """``entries`` with every data key wrapped by the primary, and how many
        were wrapped again."""
        primary = self.masters.primary
        out: list[dict[str, Any]] = []
        count = 0
        for entry in entries:
            if entry.get("masterKeyId") == primary.id:
                out.append(dict(entry))
                continue
            key = self.resolve(namespace, entry["id"], entries)
            out.append(self.wrap(namespace, key, entry.get("createdAt", 0)))
            count += 1
        return out, count

    def _remember(self, namespace: str, key_id: str, material: bytes) -> DataKey:
        key = DataKey(key_id, AESGCM(material), material)
        self._cache[(namespace, key_id)] = key
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return key

    def _ids(self) -> str:
        return ", ".join(repr(k.id) for k in self.masters.all)


def load_data_keys(master_keys: str | None, master_key_file: str | None) -> DataKeys | None:
    """The data keys over the configured master keys; ``None``: encryption is off.

    :class:`ConfigurationError` (naming the variable) when the keys are not right.
    """
    if master_keys and master_key_file:
        raise ConfigurationError(
            "AOS_MASTER_KEYS and AOS_MASTER_KEY_FILE are both set: use one of them"
        )
    if master_key_file:
        return DataKeys(MasterKeys.from_file(master_key_file))
    if master_keys:
        try:
            return DataKeys(MasterKeys(parse_master_keys(master_keys)))
        except ValueError as exc:
            raise ConfigurationError(f"AOS_MASTER_KEYS: {exc}") from None
    return None


# -- sealed values ------------------------------------------------------------------


def _seal(key: DataKey, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + key.aead.encrypt(nonce, plaintext, aad)


def _open(key: DataKey | MasterKey, sealed: bytes, aad: bytes) -> bytes:
    """Raises :class:`InvalidTag` unless ``sealed`` is intact and ``aad`` its own."""
    if len(sealed) < OVERHEAD:
        raise InvalidTag
    view = memoryview(sealed)  # slices of it copy nothing
    return key.aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], aad)


def _secret_aad(namespace: str, key_id: str) -> bytes:
    return b"\0".join((b"aos-webhook-secret-v1", namespace.encode(), key_id.encode()))


def seal_secret(key: DataKey, namespace: str, secret: str) -> str:
    """A webhook secret as stored: ``enc:v1:<data key id>:<base64>``."""
    sealed = _seal(key, secret.encode(), _secret_aad(namespace, key.id))
    return f"{_SECRET_PREFIX}{key.id}:{base64.b64encode(sealed).decode('ascii')}"


def secret_key_id(value: str) -> str | None:
    """The data key a stored secret is sealed with; ``None`` for a plain one."""
    if not value.startswith(_SECRET_PREFIX):
        return None
    return value[len(_SECRET_PREFIX) :].partition(":")[0]


def open_secret(key: DataKey, namespace: str, value: str) -> str:
    encoded = value[len(_SECRET_PREFIX) :].partition(":")[2]
    try:
        return _open(key, base64.b64decode(encoded), _secret_aad(namespace, key.id)).decode()
    except (InvalidTag, binascii.Error, UnicodeDecodeError):
        raise CorruptData(
            f"a webhook secret of namespace {namespace!r} does not decrypt with data key {key.id!r}"
        ) from None


def sealed_codec(inner: str) -> str:
    return f"{_SEALED}+{inner}" if inner else _SEALED


def inner_codec(codec: str) -> str | None:
    """The codec under the encryption of a sealed chunk; ``None``: not sealed."""
    if codec == _SEALED:
        return ""
    if codec.startswith(_SEALED + "+"):
        return codec[len(_SEALED) + 1 :]
    return None


def _chunk_aad(namespace: str, job_id: str, event: EventRecord, inner: str, key_id: str) -> bytes:
    fields = (
        "aos-chunk-v1",
        namespace,
        job_id,
        str(event.version),
        str(event.index),
        str(event.offset),
        event.format or "",
        inner,
        key_id,
    )
    return "\0".join(fields).encode()


def seal_chunk(key: DataKey, namespace: str, job_id: str, event: EventRecord) -> EventRecord:
    """A chunk event as stored encrypted. Its own SHA-256 is dropped (the tag
    authenticates the chunk; a digest of the plaintext would let anyone who
    reads the store confirm a guess of it)."""
    aad = _chunk_aad(namespace, job_id, event, event.codec, key.id)
    return dataclasses.replace(
        event, data=_seal(key, event.data, aad), codec=sealed_codec(event.codec), digest=None
    )


def open_chunk(key: DataKey, namespace: str, job_id: str, event: EventRecord) -> EventRecord:
    """A sealed chunk event with its bytes as encoded (compressed or not);
    :class:`CorruptData` when they are not the ones sealed for this place."""
    inner = inner_codec(event.codec)
    assert inner is not None
    aad = _chunk_aad(namespace, job_id, event, inner, key.id)
    try:
        data = _open(key, event.data, aad)
    except InvalidTag:
        raise CorruptData(
            f"chunk {event.index} of version {event.version} (seq {event.seq}) does not "
            f"decrypt with data key {key.id!r}: it was altered or moved"
        ) from None
    return dataclasses.replace(event, data=data, codec=inner, digest=None)


def seal_append(change: Change, key: DataKey | None, lookup: Callable[[str], DataKey]) -> Change:
    """An append (``lifecycle.append_chunk``) with its chunk sealed: with the
    data key of its version once it has one (``lookup`` finds it), else with
    ``key``, which the version then records. ``key`` ``None`` (encryption is
    off): the change as it is.

    The version's size, raw-chunk count and zstd size stay those of the chunk
    as encoded; its stored size and largest chunk count the sealed bytes.
    """
    if key is None:
        return change
    at = next(i for i, e in enumerate(change.events) if e.kind is EventKind.CHUNK)
    event = change.events[at]
    job = change.job
    version = job.versions[event.version - 1]
    if version.key_id is not None and version.key_id != key.id:
        key = lookup(version.key_id)
    sealed = seal_chunk(key, job.namespace, job.job_id, event)
    versions = list(job.versions)
    versions[event.version - 1] = dataclasses.replace(
        version,
        key_id=key.id,
        stored_size=version.stored_size + OVERHEAD,
        max_chunk=max(version.max_chunk, len(sealed.data)),
    )
    events = list(change.events)
    events[at] = sealed
    return Change(dataclasses.replace(job, versions=tuple(versions)), tuple(events))
