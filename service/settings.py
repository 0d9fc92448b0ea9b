"""Configuration in one place: ``AOS_*`` environment variables and CLI flags.

Every setting has an environment variable; ``aos serve`` flags override them.
Values are checked when read, so a bad setting stops the process at start
with a message naming the variable, never later on a request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from sharding import Member
from sharding.membership import check_url, parse_dns, parse_peers
from sharding.ring import MAX_WEIGHT
from storage_adapters import ConfigurationError

from .durations import parse_duration

__all__ = ["MAX_CHUNK", "Secret", "Settings"]

T = TypeVar("T")

MIB = 1024 * 1024
#: no stored chunk is larger (whatever the settings were when it was stored)
MAX_CHUNK = 64 * MIB


class Secret(str):
    """A string that never shows itself in ``repr`` or logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('**********')"


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _seconds(raw: str) -> float:
    return parse_duration(raw)


def _compression(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in {"zstd", "none"}:
        raise ValueError("must be 'zstd' or 'none'")
    return lowered == "zstd"


def _zstd_level(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 19:
        raise ValueError("must be a zstd level from 1 to 19")
    return value


def _size(raw: str) -> int:
    """A byte count, with an optional KiB/MiB/GiB/TiB suffix (``64MiB``)."""
    text = raw.strip()
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
    scale = 1
    for suffix, factor in units.items():
        if text.lower().endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    value = int(text) * scale
    if value < 1:
        raise ValueError("must be a positive number of bytes")
    return value


def _retention(raw: str) -> int | None:
    if raw.strip().lower() in {"", "0", "none", "forever"}:
        return None
    seconds = int(parse_duration(raw))
    if seconds < 1:
        raise ValueError("must be at least one second, or 'none' to keep jobs forever")
    return seconds


def _networks(raw: str) -> tuple[str, ...]:
    networks = tuple(part.strip() for part in raw.split(",") if part.strip())
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


def _optional_secret(raw: str) -> Secret | None:
    return Secret(raw) if raw else None


def _optional_path(raw: str) -> str | None:
    return raw.strip() or None


def _master_keys(raw: str) -> Secret | None:
    """Checked now (a bad key stops the start); the error never shows the keys,
    so it is a ConfigurationError rather than a ValueError, which would."""
    from .crypto import parse_master_keys

    if not raw.strip():
        return None
    try:
        parse_master_keys(raw)
    except ValueError as exc:
        raise ConfigurationError(f"AOS_MASTER_KEYS: {exc}") from None
    return Secret(raw)


def _peers(raw: str) -> tuple[Member, ...]:
    return tuple(parse_peers(raw))


def _dns(raw: str) -> tuple[str, int] | None:
    return parse_dns(raw) if raw.strip() else None


def _url(raw: str) -> str | None:
    return check_url(raw.strip().rstrip("/")) if raw.strip() else None


def _weight(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= MAX_WEIGHT:  # NaN fails too
        raise ValueError(f"must be a number above 0 and at most {MAX_WEIGHT:g}")
    return value


def _env(name: str, parse: Callable[[str], T]) -> dict[str, Any]:
    """Field metadata: the environment variable and its parser."""
    return {"env": name, "parse": parse}


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_env("AOS_HOST", str))
    port: int = field(default=8080, metadata=_env("AOS_PORT", int))
    #: the store; the default is an embedded SQLite file in the working directory
    storage_url: str = field(default="sqlite:///aos.db", metadata=_env("AOS_STORAGE_URL", str))
    #: root admin token; when unset, ``aos serve`` uses (or creates) ``admin_token_file``
    admin_token: Secret | None = field(
        default=None, metadata=_env("AOS_ADMIN_TOKEN", _optional_secret)
    )
    admin_token_file: str = field(
        default=".aos-admin-token", metadata=_env("AOS_ADMIN_TOKEN_FILE", str)
    )
    #: connections at most, for stores that pool them (a URL option overrides it)
    store_pool_size: int = field(default=20, metadata=_env("AOS_STORE_POOL_SIZE", _positive_int))
    #: apply pending schema migrations at start; off: refuse to start on an old schema
    migrate_on_start: bool = field(default=True, metadata=_env("AOS_MIGRATE", _bool))
    #: how long a starting node waits for an unreachable store before giving up
    store_open_timeout: float = field(
        default=30.0, metadata=_env("AOS_STORE_OPEN_TIMEOUT", _seconds)
    )
    node_id: str = field(default_factory=socket.gethostname, metadata=_env("AOS_NODE_ID", str))
    log_level: str = field(default="info", metadata=_env("AOS_LOG_LEVEL", str))
    access_log: bool = field(default=True, metadata=_env("AOS_ACCESS_LOG", _bool))
    #: an idle keep-alive connection is closed after this long; above a load
    #: balancer's idle timeout (60 s on AWS), so it never reuses a closed one
    keepalive_timeout: float = field(default=75.0, metadata=_env("AOS_KEEPALIVE_TIMEOUT", _seconds))
    #: serve HTTPS (TLS 1.3 at least) with this PEM certificate chain and key; both or neither
    tls_cert: str | None = field(default=None, metadata=_env("AOS_TLS_CERT", _optional_path))
    tls_key: str | None = field(default=None, metadata=_env("AOS_TLS_KEY", _optional_path))

    # -- limits on input ----------------------------------------------------
    max_chunk_bytes: int = field(default=1 * MIB, metadata=_env("AOS_MAX_CHUNK_BYTES", _size))
    max_body_bytes: int = field(
        default=64 * 1024, metadata=_env("AOS_MAX_BODY_BYTES", _positive_int)
    )
    max_metadata_bytes: int = field(
        default=16 * 1024, metadata=_env("AOS_MAX_METADATA_BYTES", _positive_int)
    )
    max_tags: int = field(default=32, metadata=_env("AOS_MAX_TAGS", _positive_int))
    max_versions: int = field(default=100, metadata=_env("AOS_MAX_VERSIONS", _positive_int))
    #: largest output the JSON ``GET …/output`` returns; bigger ones go through ``/output/raw``
    max_inline_output_bytes: int = field(
        default=16 * MIB, metadata=_env("AOS_MAX_INLINE_OUTPUT_BYTES", _size)
    )
    #: largest output version, however it is written
    max_version_bytes: int = field(default=1 << 40, metadata=_env("AOS_MAX_VERSION_BYTES", _size))

    # -- output storage -------------------------------------------------------
    #: chunks are compressed with zstd when it pays (``zstd``), or never (``none``)
    compression: bool = field(default=True, metadata=_env("AOS_COMPRESSION", _compression))
    compression_level: int = field(default=3, metadata=_env("AOS_COMPRESSION_LEVEL", _zstd_level))
    #: a streamed upload (``PUT …/output``) is stored in chunks of this size
    upload_chunk_bytes: int = field(default=1 * MIB, metadata=_env("AOS_UPLOAD_CHUNK_BYTES", _size))
    #: memory one reader of output (a download, a replay) holds at most, roughly
    read_batch_bytes: int = field(default=8 * MIB, metadata=_env("AOS_READ_BATCH_BYTES", _size))

    # -- retention ------------------------------------------------------------
    #: run the janitor, which purges expired jobs, on this node
    janitor: bool = field(default=True, metadata=_env("AOS_JANITOR", _bool))
    janitor_interval: float = field(default=60.0, metadata=_env("AOS_JANITOR_INTERVAL", _seconds))
    #: log entries and deliveries removed per step of a purge (one transaction)
    purge_batch: int = field(default=500, metadata=_env("AOS_PURGE_BATCH", _positive_int))

    # -- behaviour --------------------------------------------------------
    #: retention after a job ends, when neither the job nor its namespace sets one
    default_retention: int | None = field(
        default=7 * 86_400, metadata=_env("AOS_DEFAULT_RETENTION", _retention)
    )
    sse_heartbeat: float = field(default=15.0, metadata=_env("AOS_SSE_HEARTBEAT", _seconds))
    #: a stream whose client has not taken a frame for this long is closed
    sse_send_timeout: float = field(default=60.0, metadata=_env("AOS_SSE_SEND_TIMEOUT", _seconds))
    #: a live subscriber holds at most this many events / bytes before it is
    #: switched to catching up from the store
    subscriber_queue_events: int = field(
        default=256, metadata=_env("AOS_SUBSCRIBER_QUEUE_EVENTS", _positive_int)
    )
    subscriber_queue_bytes: int = field(
        default=1 * MIB, metadata=_env("AOS_SUBSCRIBER_QUEUE_BYTES", _positive_int)
    )
    #: how long a verified API key is trusted before it is looked up again
    key_cache_seconds: float = field(default=10.0, metadata=_env("AOS_KEY_CACHE", _seconds))
    store_check_interval: float = field(
        default=5.0, metadata=_env("AOS_STORE_CHECK_INTERVAL", _seconds)
    )

    # -- security and tenancy (docs/security.md) ---------------------------------
    #: audit entries are kept this long (a namespace's ``auditRetention`` overrides it)
    audit_retention: int | None = field(
        default=90 * 86_400, metadata=_env("AOS_AUDIT_RETENTION", _retention)
    )
    #: audit entries are written to the store in batches, at least this often
    audit_flush_interval: float = field(
        default=0.25, metadata=_env("AOS_AUDIT_FLUSH_INTERVAL", _seconds)
    )
    #: subscriber tokens the service mints live this long unless the request asks less
    token_ttl: float = field(default=900.0, metadata=_env("AOS_TOKEN_TTL", _seconds))
    #: no subscriber token is accepted whose lifetime (or time left) exceeds this
    max_token_lifetime: float = field(
        default=86_400.0, metadata=_env("AOS_MAX_TOKEN_LIFETIME", _seconds)
    )
    #: clock skew tolerated on a subscriber token's ``exp``, ``nbf`` and ``iat``
    token_leeway: float = field(default=30.0, metadata=_env("AOS_TOKEN_LEEWAY", _seconds))
    #: a key's ``lastUsedAt`` is written at most this often
    key_last_used_interval: float = field(
        default=60.0, metadata=_env("AOS_KEY_LAST_USED_INTERVAL", _seconds)
    )
    max_keys_per_namespace: int = field(
        default=1000, metadata=_env("AOS_MAX_KEYS_PER_NAMESPACE", _positive_int)
    )
    #: the owner re-reads a namespace's usage (jobs, stored bytes) from the store this often
    quota_refresh: float = field(default=60.0, metadata=_env("AOS_QUOTA_REFRESH", _seconds))
    #: encryption at rest: master keys ``id:base64(32 bytes)``, comma-separated,
    #: the first wraps new data keys (unset, with no key file: no encryption)
    master_keys: Secret | None = field(default=None, metadata=_env("AOS_MASTER_KEYS", _master_keys))
    #: or a file of them, one ``id:base64`` a line, re-read when it changes
    master_key_file: str | None = field(
        default=None, metadata=_env("AOS_MASTER_KEY_FILE", _optional_path)
    )

    # -- webhooks -----------------------------------------------------------
    #: run the outbox drainer on this node
    webhooks: bool = field(default=True, metadata=_env("AOS_WEBHOOKS", _bool))
    webhook_timeout: float = field(default=15.0, metadata=_env("AOS_WEBHOOK_TIMEOUT", _seconds))
    webhook_concurrency: int = field(
        default=256, metadata=_env("AOS_WEBHOOK_CONCURRENCY", _positive_int)
    )
    webhook_endpoint_concurrency: int = field(
        default=64, metadata=_env("AOS_WEBHOOK_ENDPOINT_CONCURRENCY", _positive_int)
    )
    webhook_batch: int = field(default=200, metadata=_env("AOS_WEBHOOK_BATCH", _positive_int))
    webhook_lease: float = field(default=60.0, metadata=_env("AOS_WEBHOOK_LEASE", _seconds))
    webhook_poll: float = field(default=1.0, metadata=_env("AOS_WEBHOOK_POLL", _seconds))
    #: job.output webhooks: at most one per job per this many seconds
    webhook_output_interval: float = field(
        default=1.0, metadata=_env("AOS_WEBHOOK_OUTPUT_INTERVAL", _seconds)
    )
    #: how long the previous secret still signs after a rotation
    webhook_secret_grace: float = field(
        default=86_400.0, metadata=_env("AOS_WEBHOOK_SECRET_GRACE", _seconds)
    )
    #: networks webhooks may reach although they are private (comma-separated CIDRs)
    webhook_allow_networks: tuple[str, ...] = field(
        default=(), metadata=_env("AOS_WEBHOOK_ALLOW_NETWORKS", _networks)
    )

    # -- cluster (docs/scaling.md) ---------------------------------------------
    #: every member, this node included: ``id=http://host:port,…``
    peers: tuple[Member, ...] = field(default=(), metadata=_env("AOS_PEERS", _peers))
    #: members from DNS: ``host:port`` of a headless service
    peers_dns: tuple[str, int] | None = field(default=None, metadata=_env("AOS_PEERS_DNS", _dns))
    #: the URL peers reach this node at (default: its AOS_PEERS entry, else host and port)
    node_url: str | None = field(default=None, metadata=_env("AOS_NODE_URL", _url))
    #: this node's share of the shards, relative to the others
    node_weight: float = field(default=1.0, metadata=_env("AOS_NODE_WEIGHT", _weight))
    #: shared by the members: authenticates pings and forwarded requests, lets nodes join
    cluster_secret: Secret | None = field(
        default=None, metadata=_env("AOS_CLUSTER_SECRET", _optional_secret)
    )
    cluster_check_interval: float = field(
        default=1.0, metadata=_env("AOS_CLUSTER_CHECK_INTERVAL", _seconds)
    )
    #: a member is down after this many failed checks in a row, up after ``rise`` good ones
    cluster_fall: int = field(default=3, metadata=_env("AOS_CLUSTER_FALL", _positive_int))
    cluster_rise: int = field(default=2, metadata=_env("AOS_CLUSTER_RISE", _positive_int))
    cluster_vnodes: int = field(default=256, metadata=_env("AOS_CLUSTER_VNODES", _positive_int))
    #: streams that may miss live events (not the owner, ring just changed) re-read this often
    cluster_recheck: float = field(default=1.0, metadata=_env("AOS_CLUSTER_RECHECK", _seconds))
    forward_connect_timeout: float = field(
        default=2.0, metadata=_env("AOS_FORWARD_CONNECT_TIMEOUT", _seconds)
    )
    #: longest wait for bytes from the owner (above the 60 s long-poll and the heartbeat)
    forward_timeout: float = field(default=90.0, metadata=_env("AOS_FORWARD_TIMEOUT", _seconds))

    def __post_init__(self) -> None:
        self._check_tls()
        if self.peers and self.node_id not in {m.id for m in self.peers}:
            raise ConfigurationError(
                f"AOS_PEERS does not list this node: add {self.node_id}=http://host:port "
                "(AOS_NODE_ID names this node)"
            )
        if self.forward_timeout <= max(60.0, self.sse_heartbeat):
            raise ConfigurationError(
                f"AOS_FORWARD_TIMEOUT={self.forward_timeout:g}: must exceed the 60 s "
                f"long-poll and AOS_SSE_HEARTBEAT ({self.sse_heartbeat:g} s)"
            )
        for name, value in (
            ("AOS_MAX_CHUNK_BYTES", self.max_chunk_bytes),
            ("AOS_UPLOAD_CHUNK_BYTES", self.upload_chunk_bytes),
        ):
            if value > MAX_CHUNK:
                raise ConfigurationError(
                    f"{name}={value}: a chunk is at most {MAX_CHUNK} bytes (64 MiB); "
                    "a few MiB is best"
                )

    def _check_tls(self) -> None:
        """TLS settings come in pairs, and members talk to each other in plain HTTP
        (``sharding.http1``): refuse what would start a node its peers cannot reach."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError(
                "AOS_TLS_CERT and AOS_TLS_KEY (--tls-cert, --tls-key) go together: "
                "set both to serve HTTPS, or neither"
            )
        for name, url in [("AOS_PEERS", m.url) for m in self.peers] + [
            ("AOS_NODE_URL", self.node_url or "")
        ]:
            if url.startswith("https://"):
                raise ConfigurationError(
                    f"{name}: {url}: cluster members reach each other over plain http only; "
                    "terminate TLS in front of the cluster (docs/operations.md)"
                )
        if self.tls_cert is not None and (self.peers or self.peers_dns):
            raise ConfigurationError(
                "AOS_TLS_CERT with AOS_PEERS or AOS_PEERS_DNS: cluster members reach each "
                "other over plain http, which a TLS listener refuses; terminate TLS in front "
                "of the cluster instead (docs/operations.md)"
            )

    @property
    def largest_chunk(self) -> int:
        """The largest chunk the service stores, appended or uploaded."""
        return max(self.max_chunk_bytes, self.upload_chunk_bytes)

    @property
    def advertised_url(self) -> str:
        """The URL peers reach this node at."""
        if self.node_url:
            return self.node_url
        for member in self.peers:
            if member.id == self.node_id:
                return member.url
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
