"""``cassandra://user:pass@h1,h2:9042/keyspace``: Apache Cassandra (4.1, 5.0) through
the DataStax ``cassandra-driver``, protocol v5, prepared statements, async.

Data model. Everything about one job lives in ONE partition of ``jobs``, keyed
``(namespace, job_id)``: the job row as static columns (``revision``,
``created_at``, ``status``, ``expires_at``, the ``doc`` blob) and clustering
rows ``(kind, a, b, c)`` of three kinds — log entries ``(0, seq, 0, '')``,
chunk pointers ``(1, version, index, '')`` → ``seq``, and webhook deliveries
``(2, created_at, 0, delivery_id)``. Every job write is one conditional
single-partition BATCH (a Paxos LWT): ``INSERT … IF NOT EXISTS`` for a create,
``UPDATE … IF revision = ? AND created_at = ?`` for the compare-and-set, with
the log rows, chunk pointers and delivery rows of the change inside the same
batch, so they commit together or not at all.

Chunks larger than 64 KiB are kept out of the LWT (Paxos would write them
three times): their bytes go first to ``chunk_data``, one partition per
``(namespace, job_id, version, index)``, under a random ``ref`` in parts of
1 MiB; the log entry that commits carries the ``ref`` (a claim-check). A write
that loses its compare-and-set deletes its own parts; readers only follow refs
of committed entries.

Indexes that span jobs (listing by creation and tag, the expiry queue, the
webhook outbox queue, deliveries by id and by creation) are tables of their
own, partitioned by time bucket (and namespace, or a ``spread`` of 16 for the
cross-namespace queues); a small ``buckets`` table lists the buckets each
index has. Entries are written BEFORE the LWT they describe (idempotent, keyed
so a retry overwrites) and every reader validates them against the job
partition; entries found stale for longer than ten minutes are deleted.

The audit log is a table of its own partitioned by ``(namespace, day)``:
entries are appended in unlogged single-partition batches, each ``USING TTL``
until it expires, and the days a namespace has are rows of ``buckets``.

Options in the URL query:

* ``replication_factor`` — create the keyspace with ``SimpleStrategy`` and this
  factor (``aos migrate``/start-up only);
* ``replication`` — ``dc1:3,dc2:3``: create it with ``NetworkTopologyStrategy``;
  with neither option the keyspace must exist already;
* ``consistency`` — reads and writes (default ``LOCAL_QUORUM``);
* ``serial_consistency`` — the Paxos phase of LWTs (default ``LOCAL_SERIAL``);
* ``local_dc`` — the data centre to route to (default: the contact points');
* ``tls`` — ``true`` to connect with TLS (default ``false``); ``tls_ca`` — a CA
  bundle to verify the server with (implies ``tls``);
* ``connect_timeout`` — seconds to connect (default 5);
* ``request_timeout`` — seconds a request may take, Paxos included (default 10);
* ``pool_size`` — accepted and ignored: the driver keeps one connection per host
  with thousands of concurrent requests on it.

Credentials in the URL's userinfo go to ``PlainTextAuthProvider``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, ClassVar

from cassandra import (
    ConsistencyLevel,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    RequestExecutionException,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import (
    UNSET_VALUE,
    BatchStatement,
    BatchType,
    PreparedStatement,
    SimpleStatement,
    dict_factory,
    tuple_factory,
)

from sharding import shard_of

from .base import StorageAdapter, StoreURL
from .errors import (
    AlreadyExists,
    ConfigurationError,
    CorruptData,
    NotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
)
from .records import (
    AuditQuery,
    AuditRecord,
    DeliveryQuery,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    KeyRecord,
    NamespaceRecord,
    OutboxStats,
    audit_from_doc,
    audit_to_doc,
    delivery_from_row,
    delivery_to_doc,
    dumps,
    job_from_doc,
    job_to_doc,
    loads,
)

__all__ = ["MIGRATIONS", "CassandraAdapter"]

_LOG, _CHUNK, _DELIVERY = 0, 1, 2
#: chunks up to this many bytes (as stored) travel inside the LWT
INLINE_MAX = 64 * 1024
#: parts of an out-of-line chunk
PART_BYTES = 1 << 20
_SECOND = 1_000_000
#: time buckets (microseconds) of the indexes
LIST_BUCKET = 600 * _SECOND
DUE_BUCKET = 60 * _SECOND
EXPIRY_BUCKET = 3600 * _SECOND
#: the cross-namespace queues are split over this many partitions per bucket
SPREAD = 16
#: how long an index entry may point at nothing before it is deleted
GRACE = 600 * _SECOND
#: the audit log is partitioned by namespace and day
AUDIT_BUCKET = 86_400 * _SECOND
#: seconds an audit entry is kept at least (one that arrives expired is hidden, not lost)
AUDIT_MIN_TTL = 86_400
#: Cassandra's largest TTL, in seconds (20 years)
MAX_TTL = 630_720_000
#: audit rows per single-partition batch
AUDIT_BATCH = 100
_HIGHEST = "\uffff"
_OUTBOX_LWT = "UPDATE {ks}.jobs SET lease_owner = ?, lease_until = ? WHERE namespace = ? AND job_id = ? AND kind = 2 AND a = ? AND b = 0 AND c = ? IF state = 'pending' AND next_attempt_at <= ? AND lease_until <= ?"  # noqa: E501


def _table(ks: str, name: str, body: str, options: str = "") -> str:
    table_id = uuid.uuid5(uuid.NAMESPACE_URL, f"aos-cassandra:{ks}.{name}")
    extra = f" AND {options}" if options else ""
    return f"CREATE TABLE IF NOT EXISTS {ks}.{name} ({body}) WITH ID = {table_id}{extra}"


def _migrations(ks: str) -> list[tuple[int, list[str]]]:
    """Versioned schema. Tables get ids derived from their names, so two nodes
    racing to create one agree on it."""
    hint = "gc_grace_seconds = 3600"  # index entries are validated: resurrection is harmless
    return [
        (
            1,
            [
                _table(
                    ks,
                    "namespaces",
                    "name text PRIMARY KEY, config blob, created_at bigint, updated_at bigint",
                ),
                _table(
                    ks,
                    "api_keys",
                    "namespace text, key_id text, role text, secret_hash text, created_at bigint,"
                    " PRIMARY KEY ((namespace, key_id))",
                ),
                _table(
                    ks,
                    "endpoints",
                    "namespace text, url text, disabled_at bigint, reason text,"
                    " PRIMARY KEY ((namespace), url)",
                ),
                _table(
                    ks,
                    "jobs",
                    "namespace text, job_id text, kind tinyint, a bigint, b bigint, c text,"
                    " revision bigint static, created_at bigint static, status text static,"
                    " expires_at bigint static, doc blob static,"
                    " ev text, at bigint, version int, idx int, format text, codec text,"
                    " digest blob, byte_offset bigint, data blob, ref uuid, parts int,"
                    " seq bigint,"
                    " state text, attempts int, next_attempt_at bigint, updated_at bigint,"
                    " lease_owner text, lease_until bigint, shard int, payload blob, ddoc blob,"
                    " PRIMARY KEY ((namespace, job_id), kind, a, b, c)",
                ),
                _table(
                    ks,
                    "chunk_data",
                    "namespace text, job_id text, version int, idx int, ref uuid, part int,"
                    " data blob, PRIMARY KEY ((namespace, job_id, version, idx), ref, part)",
                ),
                _table(
                    ks,
                    "buckets",
                    "scope text, bucket bigint, PRIMARY KEY ((scope), bucket)",
                    hint,
                ),
                _table(
                    ks,
                    "jobs_by_created",
                    "namespace text, bucket bigint, created_at bigint, job_id text,"
                    " written_at bigint, PRIMARY KEY ((namespace, bucket), created_at, job_id)",
                    hint,
                ),
                _table(
                    ks,
                    "jobs_by_tag",
                    "namespace text, tag text, bucket bigint, created_at bigint, job_id text,"
                    " written_at bigint,"
                    " PRIMARY KEY ((namespace, tag, bucket), created_at, job_id)",
                    hint,
                ),
                _table(
                    ks,
                    "expiring",
                    "spread int, bucket bigint, expires_at bigint, namespace text, job_id text,"
                    " created_at bigint, written_at bigint,"
                    " PRIMARY KEY ((spread, bucket), expires_at, namespace, job_id)",
                    hint,
                ),
                _table(
                    ks,
                    "outbox_due",
                    "spread int, bucket bigint, due bigint, namespace text, delivery_id text,"
                    " job_id text, created_at bigint, shard int, written_at bigint,"
                    " PRIMARY KEY ((spread, bucket), due, namespace, delivery_id)",
                    hint,
                ),
                _table(
                    ks,
                    "delivery_ids",
                    "namespace text, delivery_id text, job_id text, created_at bigint,"
                    " PRIMARY KEY ((namespace, delivery_id))",
                    hint,
                ),
                _table(
                    ks,
                    "deliveries_by_created",
                    "namespace text, bucket bigint, created_at bigint, delivery_id text,"
                    " job_id text, written_at bigint,"
                    " PRIMARY KEY ((namespace, bucket), created_at, delivery_id)",
                    hint,
                ),
            ],
        ),
        (
            2,
            [
                # ADD is not idempotent before 5.0: "already exists" is taken as done
                f"ALTER TABLE {ks}.api_keys ADD (name text, expires_at bigint,"
                " revoked_at bigint, last_used_at bigint)",
                # list_keys: a few keys per namespace, read rarely (admin API)
                f"CREATE INDEX IF NOT EXISTS api_keys_by_namespace ON {ks}.api_keys (namespace)",
                _table(
                    ks,
                    "audit",
                    "namespace text, day bigint, entry_id text, at bigint, expires_at bigint,"
                    " doc blob, PRIMARY KEY ((namespace, day), entry_id)",
                    # rows are only ever inserted, with a TTL: expired ones go whole
                    # SSTables at a time, and tombstones need no long grace
                    "CLUSTERING ORDER BY (entry_id DESC) AND gc_grace_seconds = 3600 AND"
                    " compaction = {'class': 'TimeWindowCompactionStrategy',"
                    " 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}",
                ),
            ],
        ),
    ]


#: the versions there are (the DDL depends on the keyspace: see ``_migrations``)
MIGRATIONS: list[int] = [v for v, _ in _migrations("ks")]

_UNAVAILABLE = (
    NoHostAvailable,
    OperationTimedOut,
    RequestExecutionException,  # Unavailable, Read/WriteTimeout, Read/WriteFailure
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
)

_KEY_COLUMNS = "key_id, role, secret_hash, created_at, name, expires_at, revoked_at, last_used_at"
_LOG_COLUMNS = "a, ev, at, version, idx, format, data, codec, digest, byte_offset, ref, parts"
_DELIVERY_COLUMNS = (
    "namespace, c, job_id, shard, state, attempts, next_attempt_at, a, updated_at, "
    "lease_owner, lease_until, payload, ddoc"
)


def _now() -> int:
    return time.time_ns() // 1000


def _bucket(at: int, width: int) -> int:
    return at // width


def _spread(shard: int) -> int:
    return shard % SPREAD


def _delivery(row: Sequence[Any]) -> DeliveryRecord:
    values = list(row)
    if values[10] == 0:  # lease_until: 0 stands for "not leased"
        values[10] = None
    return delivery_from_row(values)


def _key_record(namespace: str, row: Sequence[Any]) -> KeyRecord | None:
    """A key from the values of ``_KEY_COLUMNS``; ``None`` for a row that only
    an update wrote (no key was ever created there)."""
    key_id, role, secret_hash, created_at, name, expires_at, revoked_at, last_used_at = row
    if created_at is None or secret_hash is None:
        return None
    return KeyRecord(
        namespace,
        key_id,
        role,
        secret_hash,
        created_at,
        name=name,
        expires_at=expires_at,
        revoked_at=revoked_at,
        last_used_at=last_used_at,
    )


def _id_time(entry_id: str | None) -> int | None:
    """The time an audit entry id starts with (16 hex digits), if it does."""
    head = (entry_id or "")[:16]
    if len(head) == 16 and all(c in "0123456789abcdef" for c in head):
        return int(head, 16)
    return None


def _audit_ttl(expires_at: int, now: int) -> int:
    """Seconds an audit entry is kept: until it expires, and a day at least."""
    seconds = -(-(expires_at - now) // _SECOND)
    return min(max(seconds, AUDIT_MIN_TTL), MAX_TTL)


def _audit_day(entry: AuditRecord) -> int:
    at = _id_time(entry.entry_id)
    return _bucket(entry.at if at is None else at, AUDIT_BUCKET)


@dataclass(frozen=True, slots=True)
class _Entry:
    """An index entry: where it sorts, and the row it points at."""

    position: tuple[Any, ...]
    namespace: str
    job_id: str
    created_at: int
    written_at: int
    key: tuple[Any, ...]  # the entry's primary key, to delete it
    extra: tuple[Any, ...] = ()


class CassandraAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("cassandra",)
    # No native TTL: a job's expiry moves, and a cell's TTL is fixed when it is written.

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        options = dict(url.options)
        options.pop("pool_size", None)
        self.keyspace = url.path.strip("/")
        if not self.keyspace:
            raise ConfigurationError(
                "the cassandra URL needs a keyspace: cassandra://host:9042/keyspace"
            )
        if not self.keyspace.replace("_", "a").isalnum() or len(self.keyspace) > 48:
            raise ConfigurationError(
                f"keyspace {self.keyspace!r} must be 1-48 letters, digits or underscores"
            )
        self.hosts = [h for h in (url.host or "").split(",") if h]
        if not self.hosts:
            raise ConfigurationError("the cassandra URL needs a host: cassandra://host:9042/ks")
        self.port = url.port or 9042
        try:
            self.connect_timeout = float(options.pop("connect_timeout", 5))
            self.request_timeout = float(options.pop("request_timeout", 10))
        except ValueError as exc:
            raise ConfigurationError(f"cassandra timeouts must be numbers: {exc}") from exc
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigurationError("cassandra timeouts must be positive")
        self.consistency = self._level(options.pop("consistency", "LOCAL_QUORUM"), "consistency")
        self.serial_consistency = self._level(
            options.pop("serial_consistency", "LOCAL_SERIAL"), "serial_consistency"
        )
        if self.serial_consistency not in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL):
            raise ConfigurationError("serial_consistency must be SERIAL or LOCAL_SERIAL")
        self.local_dc = options.pop("local_dc", None) or None
        self.replication = self._replication(
            options.pop("replication_factor", None), options.pop("replication", None)
        )
        tls = options.pop("tls", "false").lower()
        if tls not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigurationError(f"tls must be true or false, not {tls!r}")
        self.tls_ca = options.pop("tls_ca", None) or None
        self.tls = tls in ("true", "1", "yes") or self.tls_ca is not None
        if options:
            raise ConfigurationError(
                f"unknown cassandra URL options {sorted(options)}; known: replication_factor, "
                "replication, consistency, serial_consistency, local_dc, tls, tls_ca, "
                "connect_timeout, request_timeout, pool_size"
            )
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._ps: dict[str, PreparedStatement] = {}
        self._seen_buckets: dict[tuple[str, int], float] = {}
        #: audit day buckets written: (scope, day) -> (rewrite after, expiry written, µs)
        self._audit_days: dict[tuple[str, int], tuple[float, int]] = {}

    @staticmethod
    def _level(name: str, option: str) -> int:
        level = ConsistencyLevel.name_to_value.get(name.upper())
        if level is None:
            raise ConfigurationError(
                f"{option}={name!r} is not a consistency level "
                f"(like LOCAL_QUORUM, QUORUM, LOCAL_SERIAL)"
            )
        return int(level)

    @staticmethod
    def _replication(factor: str | None, spec: str | None) -> str | None:
        if factor is not None and spec is not None:
            raise ConfigurationError("give replication_factor or replication, not both")
        if factor is not None:
            if not factor.isdigit() or int(factor) < 1:
                raise ConfigurationError(
                    f"replication_factor must be a positive integer, not {factor!r}"
                )
            return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(factor)}}}"
        if spec is not None:
            dcs = []
            for item in spec.split(","):
                dc, _, n = item.partition(":")
                if not dc or not n.isdigit() or int(n) < 1 or "'" in dc:
                    raise ConfigurationError(
                        f"replication must look like dc1:3,dc2:3, not {spec!r}"
                    )
                dcs.append(f"'{dc}': {int(n)}")
            return f"{{'class': 'NetworkTopologyStrategy', {', '.join(dcs)}}}"
        return None

    # -- lifecycle ---------------------------------------------------------

    def _connect(self) -> tuple[Cluster, Session]:
        ssl_context = None
        if self.tls:
            try:
                ssl_context = ssl.create_default_context(cafile=self.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"tls_ca {self.tls_ca!r}: {exc}") from exc
        balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc or ""))
        profile = ExecutionProfile(
            load_balancing_policy=balancing,
            consistency_level=self.consistency,
            serial_consistency_level=self.serial_consistency,
            request_timeout=self.request_timeout,
            row_factory=tuple_factory,
        )
        lwt = ExecutionProfile(
            load_balancing_policy=balancing,
            consistency_level=self.consistency,
            serial_consistency_level=self.serial_consistency,
            request_timeout=self.request_timeout,
            row_factory=dict_factory,
        )
        auth = None
        if self.url.username is not None:
            auth = PlainTextAuthProvider(self.url.username, self.url.password or "")
        cluster = Cluster(
            self.hosts,
            port=self.port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile, "lwt": lwt},
            auth_provider=auth,
            ssl_context=ssl_context,
            connect_timeout=self.connect_timeout,
            control_connection_timeout=self.connect_timeout,
            # Back within seconds of a server restart, not minutes.
            reconnection_policy=ExponentialReconnectionPolicy(0.25, 4.0),
            idle_heartbeat_interval=10,
            idle_heartbeat_timeout=self.connect_timeout,
            max_schema_agreement_wait=30,
        )
        try:
            return cluster, cluster.connect()
        except BaseException:
            cluster.shutdown()
            raise

    async def _open(self) -> None:
        self._cluster, self._session = await asyncio.to_thread(self._connect)

    async def _close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._ps = {}
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def _ping(self) -> None:
        await self._rows(self._ps["ping"] if self._ps else "SELECT key FROM system.local")

    # -- migrations --------------------------------------------------------

    async def _migrate(self, apply: bool) -> list[int]:
        ks = self.keyspace
        versions = _migrations(ks)
        everything = [v for v, _ in versions]
        found = await self._rows(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)
        )
        if not found:
            if not apply:
                return everything
            if self.replication is None:
                raise ConfigurationError(
                    f"keyspace {ks!r} does not exist: create it, or add replication_factor=N "
                    "or replication=dc1:3,dc2:3 to the URL so that it is created"
                )
            await self._rows(
                f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self.replication}"
            )
        tables = await self._rows(
            "SELECT table_name FROM system_schema.tables "
            "WHERE keyspace_name = %s AND table_name = 'schema_migrations'",
            (ks,),
        )
        if not tables:
            if not apply:
                return everything
            await self._rows(
                _table(
                    ks,
                    "schema_migrations",
                    "version int PRIMARY KEY, owner text, claimed_at bigint, done boolean",
                )
            )
        done = {row[0] for row in await self._migrations_done() if row[1]}
        pending = [v for v in everything if v not in done]
        if not apply:
            if not pending:
                await self._prepare()
            return pending
        applied = []
        me = uuid.uuid4().hex
        for version, statements in versions:
            if version in done:
                continue
            if await self._claim_migration(version, me):
                for statement in statements:
                    await self._ddl(statement)
                await self._rows(
                    f"UPDATE {ks}.schema_migrations SET done = true "
                    "WHERE version = %s IF owner = %s",
                    (version, me),
                    lwt=True,
                )
                applied.append(version)
        await asyncio.to_thread(self._wait_for_schema_agreement)
        await self._prepare()
        return applied

    async def _ddl(self, statement: str) -> None:
        """One schema statement; an ``ALTER TABLE … ADD`` of columns that exist
        (a migration taken over half-way) counts as done."""
        try:
            await self._rows(statement)
        except InvalidRequest as exc:
            if not (statement.startswith("ALTER TABLE") and "already exist" in str(exc)):
                raise

    async def _migrations_done(self) -> list[Any]:
        """The rows of ``schema_migrations``, once the table is visible (another
        node may have created it a moment ago)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return await self._rows(
                    f"SELECT version, done FROM {self.keyspace}.schema_migrations"
                )
            except InvalidRequest:
                if time.monotonic() > deadline:
                    raise
                await asyncio.to_thread(self._wait_for_schema_agreement)
                await asyncio.sleep(0.2)

    def _wait_for_schema_agreement(self) -> None:
        assert self._cluster is not None
        self._cluster.control_connection.wait_for_schema_agreement()

    async def _claim_migration(self, version: int, me: str) -> bool:
        """Claim ``version`` (True: apply it), or wait for the node that did."""
        ks = self.keyspace
        claimed = await self._rows(
            f"INSERT INTO {ks}.schema_migrations (version, owner, claimed_at, done) "
            "VALUES (%s, %s, %s, false) IF NOT EXISTS",
            (version, me, _now()),
            lwt=True,
        )
        if claimed[0]["[applied]"]:
            return True
        deadline = time.monotonic() + 120
        while True:  # start-up only: wait for the other node to finish
            row = claimed[0]
            if row.get("done"):
                return False
            if _now() - (row.get("claimed_at") or 0) > 300 * _SECOND:
                # The claimant died half-way: the DDL is idempotent, take over.
                taken = await self._rows(
                    f"UPDATE {ks}.schema_migrations SET owner = %s, claimed_at = %s "
                    "WHERE version = %s IF owner = %s AND done = false",
                    (me, _now(), version, row.get("owner")),
                    lwt=True,
                )
                if taken[0]["[applied]"]:
                    return True
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"migration {version} of keyspace {ks} is still being applied by another node"
                )
            await asyncio.sleep(0.2)
            claimed = await self._rows(
                f"SELECT owner, claimed_at, done FROM {ks}.schema_migrations WHERE version = %s",
                (version,),
                lwt=True,
                serial=True,
            )
            if not claimed:
                return await self._claim_migration(version, me)

    async def _prepare(self) -> None:
        ks = self.keyspace
        statements = {
            "ping": "SELECT key FROM system.local",
            # namespaces, keys, endpoints
            "put_ns": f"INSERT INTO {ks}.namespaces (name, config, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)",
            "get_ns": f"SELECT config, created_at, updated_at FROM {ks}.namespaces WHERE name = ?",
            "all_ns": f"SELECT name FROM {ks}.namespaces",
            "put_key": f"INSERT INTO {ks}.api_keys (namespace, key_id, role, secret_hash, "
            "created_at, name, expires_at, revoked_at, last_used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            "get_key": f"SELECT {_KEY_COLUMNS} FROM {ks}.api_keys "
            "WHERE namespace = ? AND key_id = ?",
            "list_keys": f"SELECT {_KEY_COLUMNS} FROM {ks}.api_keys WHERE namespace = ?",
            "update_key": f"UPDATE {ks}.api_keys SET expires_at = ?, revoked_at = ?, "
            "last_used_at = ? WHERE namespace = ? AND key_id = ?",
            "update_key_if": f"UPDATE {ks}.api_keys SET expires_at = ?, revoked_at = ?, "
            "last_used_at = ? WHERE namespace = ? AND key_id = ? IF EXISTS",
            # the audit log
            "put_audit": f"INSERT INTO {ks}.audit (namespace, day, entry_id, at, expires_at, "
            "doc) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
            "audit": f"SELECT entry_id, at, expires_at, doc FROM {ks}.audit "
            "WHERE namespace = ? AND day = ? AND entry_id >= ? AND entry_id < ? LIMIT ?",
            "any_audit": f"SELECT entry_id FROM {ks}.audit WHERE namespace = ? AND day = ? LIMIT 1",
            "put_bucket_ttl": f"INSERT INTO {ks}.buckets (scope, bucket) VALUES (?, ?) USING TTL ?",
            "put_endpoint": f"INSERT INTO {ks}.endpoints (namespace, url, disabled_at, reason) "
            "VALUES (?, ?, ?, ?)",
            "get_endpoint": f"SELECT disabled_at, reason FROM {ks}.endpoints "
            "WHERE namespace = ? AND url = ?",
            "list_endpoints": f"SELECT url, disabled_at, reason FROM {ks}.endpoints "
            "WHERE namespace = ?",
            # the job partition
            "get_job": f"SELECT DISTINCT namespace, job_id, revision, created_at, expires_at, doc "
            f"FROM {ks}.jobs WHERE namespace = ? AND job_id = ?",
            "create_job": f"INSERT INTO {ks}.jobs (namespace, job_id, revision, created_at, "
            "status, expires_at, doc) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            "update_job": f"UPDATE {ks}.jobs SET revision = ?, status = ?, expires_at = ?, "
            "doc = ? WHERE namespace = ? AND job_id = ? IF revision = ? AND created_at = ?",
            "put_event": f"INSERT INTO {ks}.jobs (namespace, job_id, kind, a, b, c, ev, at, "
            "version, idx, format, data, codec, digest, byte_offset, ref, parts) "
            "VALUES (?, ?, 0, ?, 0, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            "put_pointer": f"INSERT INTO {ks}.jobs (namespace, job_id, kind, a, b, c, seq) "
            "VALUES (?, ?, 1, ?, ?, '', ?)",
            "put_delivery": f"INSERT INTO {ks}.jobs (namespace, job_id, kind, a, b, c, state, "
            "attempts, next_attempt_at, updated_at, lease_owner, lease_until, shard, payload, "
            "ddoc) VALUES (?, ?, 2, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            "drop_job": f"DELETE FROM {ks}.jobs WHERE namespace = ? AND job_id = ?",
            "drop_job_if_revision": f"DELETE revision FROM {ks}.jobs "
            "WHERE namespace = ? AND job_id = ? IF revision = ?",
            "drop_job_if_created": f"DELETE created_at FROM {ks}.jobs "
            "WHERE namespace = ? AND job_id = ? IF created_at = ?",
            "touch_if_created": f"UPDATE {ks}.jobs SET created_at = ? "
            "WHERE namespace = ? AND job_id = ? IF created_at = ?",
            "drop_log_upto": f"DELETE FROM {ks}.jobs WHERE namespace = ? AND job_id = ? "
            "AND kind = 0 AND a <= ?",
            "drop_pointer": f"DELETE FROM {ks}.jobs WHERE namespace = ? AND job_id = ? "
            "AND kind = 1 AND a = ? AND b = ? AND c = ''",
            "drop_delivery": f"DELETE FROM {ks}.jobs WHERE namespace = ? AND job_id = ? "
            "AND kind = 2 AND a = ? AND b = 0 AND c = ?",
            "read_log": f"SELECT {_LOG_COLUMNS} FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 0 AND a > ? LIMIT ?",
            "read_log_at": f"SELECT {_LOG_COLUMNS} FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 0 AND a IN ?",
            "read_pointers": f"SELECT seq FROM {ks}.jobs WHERE namespace = ? AND job_id = ? "
            "AND kind = 1 AND a = ? AND b > ? LIMIT ?",
            "read_pointer": f"SELECT seq FROM {ks}.jobs WHERE namespace = ? AND job_id = ? "
            "AND kind = 1 AND a = ? AND b = ?",
            "purge_log": f"SELECT a, ev, version, idx, ref FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 0 LIMIT ?",
            "external_refs": f"SELECT version, idx, ref FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 0",
            "job_deliveries": f"SELECT {_DELIVERY_COLUMNS} FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 2 LIMIT ?",
            "job_deliveries_desc": f"SELECT {_DELIVERY_COLUMNS} FROM {ks}.jobs "
            "WHERE namespace = ? AND job_id = ? AND kind = 2 "
            "ORDER BY kind DESC, a DESC, b DESC, c DESC",
            "job_deliveries_desc_after": f"SELECT {_DELIVERY_COLUMNS} FROM {ks}.jobs "
            "WHERE namespace = ? AND job_id = ? AND kind = 2 AND (a, b, c) < (?, 0, ?) "
            "ORDER BY kind DESC, a DESC, b DESC, c DESC",
            "get_delivery_row": f"SELECT {_DELIVERY_COLUMNS} FROM {ks}.jobs WHERE namespace = ? "
            "AND job_id = ? AND kind = 2 AND a = ? AND b = 0 AND c = ?",
            "lease": _OUTBOX_LWT.format(ks=ks),
            "finish": f"UPDATE {ks}.jobs SET state = ?, attempts = ?, next_attempt_at = ?, "
            "updated_at = ?, ddoc = ?, lease_owner = null, lease_until = 0 "
            "WHERE namespace = ? AND job_id = ? AND kind = 2 AND a = ? AND b = 0 AND c = ? "
            "IF lease_owner = ?",
            "requeue": f"UPDATE {ks}.jobs SET state = 'pending', attempts = 0, "
            "next_attempt_at = ?, updated_at = ?, lease_owner = null, lease_until = 0 "
            "WHERE namespace = ? AND job_id = ? AND kind = 2 AND a = ? AND b = 0 AND c = ? "
            "IF lease_until <= ? AND next_attempt_at = ?",
            # out-of-line chunk bytes
            "put_part": f"INSERT INTO {ks}.chunk_data (namespace, job_id, version, idx, ref, "
            "part, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            "read_parts": f"SELECT part, data FROM {ks}.chunk_data WHERE namespace = ? "
            "AND job_id = ? AND version = ? AND idx = ? AND ref = ?",
            "drop_parts": f"DELETE FROM {ks}.chunk_data WHERE namespace = ? AND job_id = ? "
            "AND version = ? AND idx = ? AND ref = ?",
            "drop_chunk_data": f"DELETE FROM {ks}.chunk_data WHERE namespace = ? AND job_id = ? "
            "AND version = ? AND idx = ?",
            # indexes
            "put_bucket": f"INSERT INTO {ks}.buckets (scope, bucket) VALUES (?, ?)",
            "drop_bucket": f"DELETE FROM {ks}.buckets WHERE scope = ? AND bucket = ?",
            "buckets_asc": f"SELECT bucket FROM {ks}.buckets WHERE scope = ? AND bucket >= ? "
            "AND bucket <= ? ORDER BY bucket ASC LIMIT ?",
            "buckets_desc": f"SELECT bucket FROM {ks}.buckets WHERE scope = ? AND bucket >= ? "
            "AND bucket <= ? ORDER BY bucket DESC LIMIT ?",
            "put_created": f"INSERT INTO {ks}.jobs_by_created (namespace, bucket, created_at, "
            "job_id, written_at) VALUES (?, ?, ?, ?, ?)",
            "drop_created": f"DELETE FROM {ks}.jobs_by_created WHERE namespace = ? "
            "AND bucket = ? AND created_at = ? AND job_id = ?",
            "put_tag": f"INSERT INTO {ks}.jobs_by_tag (namespace, tag, bucket, created_at, "
            "job_id, written_at) VALUES (?, ?, ?, ?, ?, ?)",
            "drop_tag": f"DELETE FROM {ks}.jobs_by_tag WHERE namespace = ? AND tag = ? "
            "AND bucket = ? AND created_at = ? AND job_id = ?",
            "put_expiring": f"INSERT INTO {ks}.expiring (spread, bucket, expires_at, namespace, "
            "job_id, created_at, written_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            "drop_expiring": f"DELETE FROM {ks}.expiring WHERE spread = ? AND bucket = ? "
            "AND expires_at = ? AND namespace = ? AND job_id = ?",
            "expiring": f"SELECT expires_at, namespace, job_id, created_at, written_at "
            f"FROM {ks}.expiring WHERE spread = ? AND bucket = ? "
            "AND (expires_at, namespace, job_id) > (?, ?, ?) AND (expires_at) <= (?) LIMIT ?",
            "put_due": f"INSERT INTO {ks}.outbox_due (spread, bucket, due, namespace, "
            "delivery_id, job_id, created_at, shard, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            "drop_due": f"DELETE FROM {ks}.outbox_due WHERE spread = ? AND bucket = ? "
            "AND due = ? AND namespace = ? AND delivery_id = ?",
            "due": f"SELECT due, namespace, delivery_id, job_id, created_at, shard, written_at "
            f"FROM {ks}.outbox_due WHERE spread = ? AND bucket = ? "
            "AND (due, namespace, delivery_id) > (?, ?, ?) AND (due) <= (?) LIMIT ?",
            "any_due": f"SELECT due FROM {ks}.outbox_due WHERE spread = ? AND bucket = ? LIMIT 1",
            "any_expiring": f"SELECT expires_at FROM {ks}.expiring WHERE spread = ? "
            "AND bucket = ? LIMIT 1",
            "due_stats": f"SELECT count(*), min(due) FROM {ks}.outbox_due "
            "WHERE spread = ? AND bucket = ?",
            "due_stats_shards": f"SELECT count(*), min(due) FROM {ks}.outbox_due "
            "WHERE spread = ? AND bucket = ? AND shard IN ? ALLOW FILTERING",
            "put_delivery_id": f"INSERT INTO {ks}.delivery_ids (namespace, delivery_id, job_id, "
            "created_at) VALUES (?, ?, ?, ?)",
            "get_delivery_id": f"SELECT job_id, created_at FROM {ks}.delivery_ids "
            "WHERE namespace = ? AND delivery_id = ?",
            "drop_delivery_id": f"DELETE FROM {ks}.delivery_ids WHERE namespace = ? "
            "AND delivery_id = ?",
            "put_delivery_created": f"INSERT INTO {ks}.deliveries_by_created (namespace, "
            "bucket, created_at, delivery_id, job_id, written_at) VALUES (?, ?, ?, ?, ?, ?)",
            "drop_delivery_created": f"DELETE FROM {ks}.deliveries_by_created "
            "WHERE namespace = ? AND bucket = ? AND created_at = ? AND delivery_id = ?",
        }
        for direction in ("ASC", "DESC"):
            op = ">" if direction == "ASC" else "<"
            for name, table, tag in (
                ("created", "jobs_by_created", ""),
                ("tagged", "jobs_by_tag", " AND tag = ?"),
            ):
                statements[f"{name}_{direction}"] = (
                    f"SELECT created_at, job_id, written_at FROM {ks}.{table} "
                    f"WHERE namespace = ?{tag} AND bucket = ? "
                    f"AND (created_at, job_id) {op} (?, ?) "
                    f"ORDER BY created_at {direction}, job_id {direction} LIMIT ?"
                )
        statements["deliveries_created"] = (
            f"SELECT created_at, delivery_id, job_id, written_at FROM {ks}.deliveries_by_created "
            "WHERE namespace = ? AND bucket = ? AND (created_at, delivery_id) < (?, ?) "
            "ORDER BY created_at DESC, delivery_id DESC LIMIT ?"
        )
        session = self._session
        assert session is not None

        def prepare_all() -> dict[str, PreparedStatement]:
            return {name: session.prepare(cql) for name, cql in statements.items()}

        self._ps = await asyncio.to_thread(prepare_all)

    # -- execution ---------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, _UNAVAILABLE):
            return StoreUnavailable(f"cassandra: {type(exc).__name__}: {exc}")
        if isinstance(exc, DriverException):
            return StoreError(f"cassandra: {type(exc).__name__}: {exc}")
        return super()._translate(exc)

    def _execute(
        self,
        statement: Any,
        params: Sequence[Any] | None = None,
        *,
        lwt: bool = False,
        serial: bool = False,
        fetch_size: int | None = None,
        keep: Callable[[Any], bool] | None = None,
    ) -> asyncio.Future[list[Any]]:
        """Run one statement on the driver's I/O thread; every page of its
        result arrives in the returned future (so queries are bounded by LIMIT)."""
        session = self._session
        if session is None:
            raise StoreUnavailable("cassandra store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if serial or fetch_size is not None:
            if isinstance(statement, str):
                statement = SimpleStatement(statement)
            elif isinstance(statement, PreparedStatement):
                statement, params = statement.bind(params or ()), None
            if serial:
                statement.consistency_level = self.serial_consistency
            if fetch_size is not None:
                statement.fetch_size = fetch_size
        response: ResponseFuture = session.execute_async(
            statement,
            params,
            timeout=self.request_timeout,
            execution_profile="lwt" if lwt else EXEC_PROFILE_DEFAULT,
        )
        rows: list[Any] = []

        def settle(result: list[Any] | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])

        def on_page(page: Iterable[Any] | None) -> None:
            try:
                if page:
                    rows.extend(page if keep is None else filter(keep, page))
                if response.has_more_pages:
                    response.start_fetching_next_page()
                    return
            except BaseException as exc:  # handed to the loop
                loop.call_soon_threadsafe(settle, None, exc)
                return
            loop.call_soon_threadsafe(settle, rows, None)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(settle, None, exc)

        response.add_callbacks(on_page, on_error)
        return future

    async def _rows(
        self,
        statement: Any,
        params: Sequence[Any] | None = None,
        *,
        lwt: bool = False,
        serial: bool = False,
        fetch_size: int | None = None,
        keep: Callable[[Any], bool] | None = None,
    ) -> list[Any]:
        return await self._execute(
            statement, params, lwt=lwt, serial=serial, fetch_size=fetch_size, keep=keep
        )

    async def _run(self, name: str, *params: Any) -> list[Any]:
        return await self._execute(self._ps[name], params)

    async def _lwt(self, batch: BatchStatement) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._execute(batch, None, lwt=True)
        return rows

    def _batch(self) -> BatchStatement:
        return BatchStatement(
            batch_type=BatchType.UNLOGGED,
            consistency_level=self.consistency,
            serial_consistency_level=self.serial_consistency,
        )

    @staticmethod
    async def _all(works: Iterable[Awaitable[Any]], limit: int = 32) -> list[Any]:
        """Await ``works`` with at most ``limit`` in flight; results in order."""
        gate = asyncio.Semaphore(limit)

        async def one(work: Awaitable[Any]) -> Any:
            async with gate:
                return await work

        return list(await asyncio.gather(*(one(w) for w in works)))

    async def _quietly(self, works: Iterable[Awaitable[Any]]) -> None:
        """Best-effort cleanup: failures leave entries readers ignore anyway."""
        with contextlib.suppress(Exception):
            await self._all(works)

    async def _put_bucket(self, scope: str, bucket: int) -> None:
        key = (scope, bucket)
        now = time.monotonic()
        if self._seen_buckets.get(key, 0) > now:
            return
        await self._run("put_bucket", scope, bucket)
        if len(self._seen_buckets) > 50_000:
            self._seen_buckets = {k: t for k, t in self._seen_buckets.items() if t > now}
        # Buckets are dropped only well after they end, so a cached one stays put.
        self._seen_buckets[key] = now + GRACE / _SECOND / 4

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await self._run(
            "put_ns",
            namespace.name,
            dumps(namespace.config),
            namespace.created_at,
            namespace.updated_at,
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        rows = await self._run("get_ns", name)
        if not rows:
            return None
        config, created_at, updated_at = rows[0]
        return NamespaceRecord(name, loads(config), created_at, updated_at)

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        if limit < 1:
            return []
        # Token order is not name order: every name is read (names only, in pages),
        # and the ``limit`` smallest past ``after`` are kept as they stream by.
        picked: list[str] = []

        def keep(row: Any) -> bool:
            name: str = row[0]
            if after is None or name > after:
                picked.append(name)
                if len(picked) > 2 * limit + 1000:
                    picked.sort()
                    del picked[limit:]
            return False

        await self._execute(self._ps["all_ns"], (), fetch_size=5000, keep=keep)
        names = sorted(picked)[:limit]
        found = await self._all(self._get_namespace(name) for name in names)
        return [ns for ns in found if ns is not None]

    async def _create_key(self, key: KeyRecord) -> None:
        rows = await self._execute(
            self._ps["put_key"],
            (
                key.namespace,
                key.key_id,
                key.role,
                key.secret_hash,
                key.created_at,
                # unset, not null: a null would write a tombstone per empty column
                *(
                    UNSET_VALUE if v is None else v
                    for v in (key.name, key.expires_at, key.revoked_at, key.last_used_at)
                ),
            ),
            lwt=True,
        )
        if not rows[0]["[applied]"]:
            raise AlreadyExists(f"key {key.key_id} exists")

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        rows = await self._run("get_key", namespace, key_id)
        return _key_record(namespace, rows[0]) if rows else None

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        rows = await self._run("list_keys", namespace)
        keys = (_key_record(namespace, row) for row in rows)
        return sorted((k for k in keys if k is not None), key=lambda k: k.key_id)

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        values = [
            changes.get(name, UNSET_VALUE) for name in ("expires_at", "revoked_at", "last_used_at")
        ]
        if set(changes) == {"last_used_at"}:
            # Frequent (once a minute per key in use) and approximate: no Paxos
            # round. Keys are never deleted, so once the read has seen the key,
            # the plain update cannot create one.
            if await self._get_key(namespace, key_id) is None:
                return False
            await self._run("update_key", *values, namespace, key_id)
            return True
        rows = await self._execute(
            self._ps["update_key_if"], (*values, namespace, key_id), lwt=True
        )
        return bool(rows[0]["[applied]"])

    # -- the audit log -------------------------------------------------------

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        now = _now()
        days: dict[tuple[str, int], list[AuditRecord]] = {}
        for entry in entries:
            days.setdefault((entry.namespace, _audit_day(entry)), []).append(entry)

        async def write(namespace: str, day: int, group: list[AuditRecord]) -> None:
            ttls = [_audit_ttl(e.expires_at, now) for e in group]
            # the day first: a reader never misses entries of a day it does not know
            await self._put_audit_day(namespace, day, max(ttls) + AUDIT_MIN_TTL, now)
            for start in range(0, len(group), AUDIT_BATCH):
                batch = self._batch()
                for e, ttl in zip(
                    group[start : start + AUDIT_BATCH],
                    ttls[start : start + AUDIT_BATCH],
                    strict=True,
                ):
                    batch.add(
                        self._ps["put_audit"],
                        (
                            namespace,
                            day,
                            e.entry_id,
                            e.at,
                            e.expires_at,
                            dumps(audit_to_doc(e)),
                            ttl,
                        ),
                    )
                await self._execute(batch)

        await self._all(write(ns, day, group) for (ns, day), group in days.items())

    async def _put_audit_day(self, namespace: str, day: int, ttl: int, now: int) -> None:
        """List ``day`` among the namespace's audit days, for at least ``ttl``
        seconds (so the day outlives its entries)."""
        key = (f"a/{namespace}", day)
        until = now + min(ttl, MAX_TTL) * _SECOND
        moment = time.monotonic()
        refresh, written = self._audit_days.get(key, (0.0, 0))
        if refresh > moment and written >= until:
            return
        await self._run("put_bucket_ttl", key[0], day, min(ttl, MAX_TTL))
        if len(self._audit_days) > 50_000:
            self._audit_days = {k: v for k, v in self._audit_days.items() if v[0] > moment}
        # rewritten now and then, like the other buckets (a walk may have dropped it)
        self._audit_days[key] = (moment + GRACE / _SECOND / 4, until)

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        if query.limit < 1:
            return []
        low_at, high_at = _id_time(query.min_id), _id_time(query.max_id)
        low = _bucket(low_at, AUDIT_BUCKET) if low_at is not None else 0
        high = _bucket(high_at, AUDIT_BUCKET) if high_at is not None else 2**62
        floor = query.min_id or ""
        ceiling = query.max_id if query.max_id is not None else _HIGHEST
        if floor >= ceiling:
            return []

        async def fetch(day: int, position: tuple[Any, ...] | None, size: int) -> list[_Entry]:
            upper = position[0] if position is not None else ceiling
            rows = await self._run("audit", namespace, day, floor, upper, size)
            return [
                _Entry(
                    (entry_id,),
                    namespace,
                    entry_id,
                    at,
                    0,
                    (day, entry_id),
                    (audit_from_doc(namespace, entry_id, at, expires_at, loads(doc)),),
                )
                for entry_id, at, expires_at, doc in rows
            ]

        async def empty(day: int) -> bool:
            return not await self._run("any_audit", namespace, day)

        found: list[AuditRecord] = []
        size = min(max(query.limit, 10), 500)
        walk = self._walk(f"a/{namespace}", low, high, True, fetch, None, size, empty)
        async for entries in walk:
            for entry in entries:
                record: AuditRecord = entry.extra[0]
                if query.alive_at is None or record.expires_at > query.alive_at:
                    found.append(record)
                    if len(found) == query.limit:
                        return found
        return found

    async def _purge_audit(self, now: int, limit: int) -> int:
        return 0  # every entry is written with a TTL: Cassandra removes it

    # -- jobs: writes ------------------------------------------------------

    async def _put_chunk_data(
        self, job: JobRecord, events: Sequence[EventRecord]
    ) -> dict[int, tuple[uuid.UUID, int]]:
        """Write the bytes of large chunks out of line: seq -> (ref, parts)."""
        refs: dict[int, tuple[uuid.UUID, int]] = {}
        writes = []
        for e in events:
            if e.kind is EventKind.CHUNK and len(e.data) > INLINE_MAX:
                ref = uuid.uuid4()
                parts = max(1, -(-len(e.data) // PART_BYTES))
                refs[e.seq] = (ref, parts)
                view = memoryview(e.data)
                for n in range(parts):
                    part = bytes(view[n * PART_BYTES : (n + 1) * PART_BYTES])
                    writes.append(
                        self._run(
                            "put_part", job.namespace, job.job_id, e.version, e.index, ref, n, part
                        )
                    )
        await self._all(writes, limit=4)
        return refs

    async def _drop_chunk_data(
        self, job: JobRecord, events: Sequence[EventRecord], refs: dict[int, tuple[uuid.UUID, int]]
    ) -> None:
        await self._quietly(
            self._run("drop_parts", job.namespace, job.job_id, e.version, e.index, refs[e.seq][0])
            for e in events
            if e.seq in refs
        )

    def _index_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> list[Awaitable[Any]]:
        now = _now()
        writes: list[Awaitable[Any]] = []
        for d in deliveries:
            writes.append(
                self._run("put_delivery_id", d.namespace, d.delivery_id, d.job_id, d.created_at)
            )
            bucket = _bucket(d.created_at, LIST_BUCKET)
            writes.append(self._put_bucket(f"d/{d.namespace}", bucket))
            writes.append(
                self._run(
                    "put_delivery_created",
                    d.namespace,
                    bucket,
                    d.created_at,
                    d.delivery_id,
                    d.job_id,
                    now,
                )
            )
            writes.append(self._index_due(d, now))
        return writes

    async def _index_due(self, d: DeliveryRecord, now: int) -> None:
        spread = _spread(d.shard)
        bucket = _bucket(d.next_attempt_at, DUE_BUCKET)
        await self._put_bucket(f"o/{spread}", bucket)
        await self._run(
            "put_due",
            spread,
            bucket,
            d.next_attempt_at,
            d.namespace,
            d.delivery_id,
            d.job_id,
            d.created_at,
            d.shard,
            now,
        )

    async def _drop_due(self, namespace: str, delivery_id: str, shard: int, due: int) -> None:
        await self._run(
            "drop_due", _spread(shard), _bucket(due, DUE_BUCKET), due, namespace, delivery_id
        )

    async def _index_expiry(self, job: JobRecord, now: int) -> None:
        if job.expires_at is None:
            return
        spread = _spread(shard_of(job.namespace))
        bucket = _bucket(job.expires_at, EXPIRY_BUCKET)
        await self._put_bucket(f"x/{spread}", bucket)
        await self._run(
            "put_expiring",
            spread,
            bucket,
            job.expires_at,
            job.namespace,
            job.job_id,
            job.created_at,
            now,
        )

    def _add_rows(
        self,
        batch: BatchStatement,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
        refs: dict[int, tuple[uuid.UUID, int]],
    ) -> None:
        ns, job_id = job.namespace, job.job_id
        for e in events:
            ref, parts = refs.get(e.seq, (None, None))
            batch.add(
                self._ps["put_event"],
                (
                    ns,
                    job_id,
                    e.seq,
                    e.kind.value,
                    e.at,
                    e.version,
                    e.index,
                    e.format,
                    b"" if ref is not None else e.data,
                    e.codec,
                    e.digest,
                    e.offset,
                    ref,
                    parts,
                ),
            )
            if e.kind is EventKind.CHUNK:
                batch.add(self._ps["put_pointer"], (ns, job_id, e.version, e.index, e.seq))
        for d in deliveries:
            batch.add(
                self._ps["put_delivery"],
                (
                    ns,
                    job_id,
                    d.created_at,
                    d.delivery_id,
                    d.state.value,
                    d.attempts,
                    d.next_attempt_at,
                    d.updated_at,
                    d.lease_owner,
                    d.lease_until or 0,
                    d.shard,
                    d.payload,
                    dumps(delivery_to_doc(d)),
                ),
            )

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        now = _now()
        ns = job.namespace
        bucket = _bucket(job.created_at, LIST_BUCKET)
        # The claim-check and the index entries first: each is harmless until
        # the job partition commits a row that they describe.
        refs_task = asyncio.ensure_future(self._put_chunk_data(job, events))
        writes: list[Awaitable[Any]] = [
            refs_task,
            self._put_bucket(f"j/{ns}", bucket),
            self._run("put_created", ns, bucket, job.created_at, job.job_id, now),
            self._index_expiry(job, now),
            *self._index_deliveries(deliveries),
        ]
        for tag in sorted(set(job.tags)):
            writes.append(self._put_bucket(f"t/{ns}/{tag}", bucket))
            writes.append(self._run("put_tag", ns, tag, bucket, job.created_at, job.job_id, now))
        await asyncio.gather(*writes)
        refs = refs_task.result()
        batch = self._batch()
        batch.add(
            self._ps["create_job"],
            (
                ns,
                job.job_id,
                job.revision,
                job.created_at,
                job.status.value,
                job.expires_at,
                dumps(job_to_doc(job)),
            ),
        )
        self._add_rows(batch, job, events, deliveries, refs)
        result = await self._lwt(batch)
        if not result[0]["[applied]"]:
            await self._drop_chunk_data(job, events, refs)
            raise AlreadyExists(f"job {job.job_id} exists")

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        rows = await self._run("get_job", namespace, job_id)
        if not rows or rows[0][5] is None:
            return None
        return job_from_doc(loads(rows[0][5]))

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        now = _now()
        refs_task = asyncio.ensure_future(self._put_chunk_data(job, events))
        await asyncio.gather(
            refs_task, self._index_expiry(job, now), *self._index_deliveries(deliveries)
        )
        refs = refs_task.result()
        batch = self._batch()
        batch.add(
            self._ps["update_job"],
            (
                job.revision,
                job.status.value,
                job.expires_at,
                dumps(job_to_doc(job)),
                job.namespace,
                job.job_id,
                expected_revision,
                job.created_at,
            ),
        )
        self._add_rows(batch, job, events, deliveries, refs)
        result = await self._lwt(batch)
        if not result[0]["[applied]"]:
            await self._drop_chunk_data(job, events, refs)
            raise self._lost(job.job_id, result[0], expected_revision)

    @staticmethod
    def _lost(job_id: str, row: dict[str, Any], expected_revision: int) -> StoreError:
        if row.get("revision") is None:
            return NotFound(f"job {job_id} does not exist")
        return RevisionConflict(
            f"job {job_id} is at revision {row['revision']}, not {expected_revision}"
        )

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        job = await self._get_job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.revision != expected_revision:
            raise RevisionConflict(
                f"job {job_id} is at revision {job.revision}, not {expected_revision}"
            )
        refs = await self._rows(
            self._ps["external_refs"],
            (namespace, job_id),
            fetch_size=1000,
            keep=lambda row: row[2] is not None,
        )
        deliveries = await self._run("job_deliveries", namespace, job_id, 1_000_000)
        batch = self._batch()
        batch.add(self._ps["drop_job"], (namespace, job_id))
        batch.add(self._ps["drop_job_if_revision"], (namespace, job_id, expected_revision))
        result = await self._lwt(batch)
        if not result[0]["[applied]"]:
            raise self._lost(job_id, result[0], expected_revision)
        await self._forget(job, [_delivery(row) for row in deliveries], refs, everything=True)

    async def _forget(
        self,
        job: JobRecord,
        deliveries: Sequence[DeliveryRecord],
        refs: Sequence[tuple[int, int, uuid.UUID]],
        *,
        everything: bool,
    ) -> None:
        """Remove what lives outside the job partition of rows just deleted in it
        (best effort: what is left behind is ignored by readers)."""
        ns, job_id = job.namespace, job.job_id
        works: list[Awaitable[Any]] = [
            self._run("drop_parts", ns, job_id, version, index, ref) for version, index, ref in refs
        ]
        for d in deliveries:
            bucket = _bucket(d.created_at, LIST_BUCKET)
            works.append(self._run("drop_delivery_id", ns, d.delivery_id))
            works.append(
                self._run("drop_delivery_created", ns, bucket, d.created_at, d.delivery_id)
            )
            if d.state is DeliveryState.PENDING:
                works.append(self._drop_due(ns, d.delivery_id, d.shard, d.next_attempt_at))
        if everything:
            bucket = _bucket(job.created_at, LIST_BUCKET)
            works.append(self._run("drop_created", ns, bucket, job.created_at, job_id))
            for tag in set(job.tags):
                works.append(self._run("drop_tag", ns, tag, bucket, job.created_at, job_id))
            if job.expires_at is not None:
                spread = _spread(shard_of(ns))
                works.append(
                    self._run(
                        "drop_expiring",
                        spread,
                        _bucket(job.expires_at, EXPIRY_BUCKET),
                        job.expires_at,
                        ns,
                        job_id,
                    )
                )
            # A write that lost its compare-and-set at the next index of a
            # version may have left parts there.
            for v in job.versions:
                works.append(self._run("drop_chunk_data", ns, job_id, v.number, v.chunks))
        await self._quietly(works)

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        job = await self._get_job(namespace, job_id)
        if job is None or job.created_at != created_at:
            return True
        log = await self._run("purge_log", namespace, job_id, batch + 1)
        room = batch + 1 - len(log)
        deliveries = (
            [_delivery(r) for r in await self._run("job_deliveries", namespace, job_id, room)]
            if room > 0
            else []
        )
        done = len(log) + len(deliveries) <= batch
        if not done:
            log = log[:batch]
            deliveries = deliveries[: batch - len(log)]
        refs = [(row[2], row[3], row[4]) for row in log if row[4] is not None]
        statement = self._batch()
        if done:
            statement.add(self._ps["drop_job"], (namespace, job_id))
            statement.add(self._ps["drop_job_if_created"], (namespace, job_id, created_at))
        else:
            statement.add(self._ps["touch_if_created"], (created_at, namespace, job_id, created_at))
            if log:
                statement.add(self._ps["drop_log_upto"], (namespace, job_id, log[-1][0]))
            for row in log:
                if row[1] == EventKind.CHUNK.value:
                    statement.add(self._ps["drop_pointer"], (namespace, job_id, row[2], row[3]))
            for d in deliveries:
                statement.add(
                    self._ps["drop_delivery"], (namespace, job_id, d.created_at, d.delivery_id)
                )
        result = await self._lwt(statement)
        if not result[0]["[applied]"]:
            return True  # the job created at ``created_at`` is gone
        await self._forget(job, deliveries, refs, everything=done)
        return done

    # -- jobs: reads -------------------------------------------------------

    async def _events(self, namespace: str, job_id: str, rows: Sequence[Any]) -> list[EventRecord]:
        """Log rows as records, with out-of-line bytes fetched."""
        records = []
        fetches: dict[int, Awaitable[bytes]] = {}
        for row in rows:
            seq, kind, at, version, index, fmt, data, codec, digest, offset, ref, parts = row
            if ref is not None:
                fetches[seq] = self._fetch_parts(namespace, job_id, version, index, ref, parts)
            try:
                records.append(
                    EventRecord(
                        seq=seq,
                        kind=EventKind(kind),
                        at=at,
                        data=bytes(data or b""),
                        version=version,
                        index=index,
                        format=fmt,
                        codec=codec,
                        digest=bytes(digest) if digest is not None else None,
                        offset=offset,
                    )
                )
            except (ValueError, TypeError) as exc:
                raise CorruptData(f"log entry {seq} of job {job_id} is malformed: {exc}") from exc
        if fetches:
            seqs = list(fetches)
            found = dict(zip(seqs, await self._all(fetches.values(), limit=8), strict=True))
            records = [
                EventRecord(
                    seq=r.seq,
                    kind=r.kind,
                    at=r.at,
                    data=found[r.seq],
                    version=r.version,
                    index=r.index,
                    format=r.format,
                    codec=r.codec,
                    digest=r.digest,
                    offset=r.offset,
                )
                if r.seq in found
                else r
                for r in records
            ]
        return records

    async def _fetch_parts(
        self, namespace: str, job_id: str, version: int, index: int, ref: uuid.UUID, parts: int
    ) -> bytes:
        rows = await self._rows(
            self._ps["read_parts"], (namespace, job_id, version, index, ref), fetch_size=4
        )
        if [row[0] for row in rows] != list(range(parts or 0)):
            raise CorruptData(
                f"chunk {index} of version {version} of job {job_id}: "
                f"{len(rows)} of {parts} parts stored"
            )
        return b"".join(bytes(row[1]) for row in rows)

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        rows = await self._run("read_log", namespace, job_id, max(after_seq, 0), limit)
        return await self._events(namespace, job_id, rows)

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        pointers = await self._run(
            "read_pointers", namespace, job_id, version, max(after_index, -1), limit
        )
        if not pointers:
            return []
        rows = await self._run("read_log_at", namespace, job_id, [p[0] for p in pointers])
        events = await self._events(namespace, job_id, rows)
        return sorted((e for e in events if e.version == version), key=lambda e: e.index)

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0:
            return None
        pointers = await self._run("read_pointer", namespace, job_id, version, index)
        if not pointers:
            return None
        rows = await self._run("read_log_at", namespace, job_id, [pointers[0][0]])
        events = await self._events(namespace, job_id, rows)
        return events[0] if events else None

    # -- index walks -------------------------------------------------------

    async def _walk(
        self,
        scope: str,
        low: int,
        high: int,
        descending: bool,
        fetch: Callable[[int, tuple[Any, ...] | None, int], Awaitable[list[_Entry]]],
        start: tuple[Any, ...] | None,
        size: int,
        empty: Callable[[int], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[list[_Entry]]:
        """Entries of the buckets ``low..high`` of one index, in order, in
        batches of up to ``size``; ``start`` is an exclusive position."""
        first = True
        while low <= high:
            buckets = [
                row[0]
                for row in await self._run(
                    "buckets_desc" if descending else "buckets_asc", scope, low, high, 16
                )
            ]
            if not buckets:
                return
            for bucket in buckets:
                position = start if first else None
                first = False
                while True:
                    entries = await fetch(bucket, position, size)
                    if entries:
                        yield entries
                    if len(entries) < size:
                        if not entries and position is None:
                            await self._drop_empty_bucket(scope, bucket, empty)
                        break
                    position = entries[-1].position
                start = None
            if descending:
                high = buckets[-1] - 1
            else:
                low = buckets[-1] + 1

    async def _drop_empty_bucket(
        self, scope: str, bucket: int, empty: Callable[[int], Awaitable[bool]] | None
    ) -> None:
        """Forget a bucket that has nothing left, long after it ended (``empty``:
        the check when the walk's query was bounded)."""
        width = {
            "j": LIST_BUCKET,
            "t": LIST_BUCKET,
            "d": LIST_BUCKET,
            "x": EXPIRY_BUCKET,
            "a": AUDIT_BUCKET,
        }.get(scope[0], DUE_BUCKET)
        if (bucket + 1) * width + GRACE < _now() and (empty is None or await empty(bucket)):
            self._seen_buckets.pop((scope, bucket), None)
            self._audit_days.pop((scope, bucket), None)
            await self._run("drop_bucket", scope, bucket)

    @staticmethod
    def _stale(entry: _Entry) -> bool:
        return _now() - entry.written_at > GRACE

    async def _validated_jobs(
        self, entries: Sequence[_Entry], drop: Callable[[_Entry], Awaitable[Any]]
    ) -> list[tuple[_Entry, JobRecord]]:
        """The entries whose job exists with the same creation time (stale ones
        past the grace period are deleted)."""
        jobs = await self._all((self._get_job(e.namespace, e.job_id) for e in entries), limit=16)
        live, stale = [], []
        for entry, job in zip(entries, jobs, strict=True):
            if job is not None and job.created_at == entry.created_at:
                live.append((entry, job))
            elif self._stale(entry):
                stale.append(drop(entry))
        if stale:
            await self._quietly(stale)
        return live

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        descending = query.descending
        after = query.after
        # The creation bounds as keyset positions, where they are tighter.
        if (
            descending
            and query.created_before is not None
            and (after is None or after >= (query.created_before, ""))
        ):
            after = (query.created_before, "")
        if (
            not descending
            and query.created_after is not None
            and (after is None or after <= (query.created_after, _HIGHEST))
        ):
            after = (query.created_after, _HIGHEST)
        low = _bucket(query.created_after, LIST_BUCKET) if query.created_after is not None else 0
        high = (
            _bucket(query.created_before, LIST_BUCKET)
            if query.created_before is not None
            else 2**62
        )
        if after is not None:
            if descending:
                high = min(high, _bucket(after[0], LIST_BUCKET))
            else:
                low = max(low, _bucket(after[0], LIST_BUCKET))
        direction = "DESC" if descending else "ASC"
        tag = query.tag
        scope = f"t/{namespace}/{tag}" if tag is not None else f"j/{namespace}"
        edge = (2**63 - 1, _HIGHEST) if descending else (-(2**63), "")

        async def fetch(bucket: int, position: tuple[Any, ...] | None, size: int) -> list[_Entry]:
            created, job_id = position if position is not None else edge
            if tag is None:
                rows = await self._run(
                    f"created_{direction}", namespace, bucket, created, job_id, size
                )
            else:
                rows = await self._run(
                    f"tagged_{direction}", namespace, tag, bucket, created, job_id, size
                )
            return [
                _Entry((r[0], r[1]), namespace, r[1], r[0], r[2] or 0, (bucket, r[0], r[1]))
                for r in rows
            ]

        async def drop(entry: _Entry) -> None:
            bucket, created, job_id = entry.key
            if tag is None:
                await self._run("drop_created", namespace, bucket, created, job_id)
            else:
                await self._run("drop_tag", namespace, tag, bucket, created, job_id)

        found: list[JobRecord] = []
        size = min(max(query.limit, 10), 500)
        async for entries in self._walk(scope, low, high, descending, fetch, after, size):
            for _entry, job in await self._validated_jobs(entries, drop):
                if query.created_after is not None and job.created_at <= query.created_after:
                    if descending:
                        return found
                    continue
                if query.created_before is not None and job.created_at >= query.created_before:
                    if not descending:
                        return found
                    continue
                if query.matches(job):
                    found.append(job)
                    if len(found) == query.limit:
                        return found
        return found

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        spreads = sorted({_spread(s) for s in shards} if shards is not None else range(SPREAD))
        high = _bucket(now, EXPIRY_BUCKET)

        async def one_spread(spread: int) -> list[JobRecord]:
            async def fetch(
                bucket: int, position: tuple[Any, ...] | None, size: int
            ) -> list[_Entry]:
                expires, ns, job_id = position if position is not None else (-(2**63), "", "")
                rows = await self._run("expiring", spread, bucket, expires, ns, job_id, now, size)
                return [
                    _Entry(
                        (r[0], r[1], r[2]), r[1], r[2], r[3], r[4] or 0, (bucket, r[0], r[1], r[2])
                    )
                    for r in rows
                ]

            async def drop(entry: _Entry) -> None:
                bucket, expires, ns, job_id = entry.key
                await self._run("drop_expiring", spread, bucket, expires, ns, job_id)

            found: list[JobRecord] = []

            async def empty(bucket: int) -> bool:
                return not await self._run("any_expiring", spread, bucket)

            walk = self._walk(f"x/{spread}", 0, high, False, fetch, None, limit, empty)
            async for entries in walk:
                mine = [e for e in entries if shards is None or shard_of(e.namespace) in shards]
                for entry, job in await self._validated_jobs(mine, drop):
                    if job.expires_at == entry.position[0]:
                        found.append(job)
                    elif self._stale(entry):  # the expiry moved
                        await self._quietly([drop(entry)])
                if len(found) >= limit:
                    break
            return found

        results = await asyncio.gather(*(one_spread(s) for s in spreads))
        merged = sorted(
            (j for jobs in results for j in jobs),
            key=lambda j: (j.expires_at or 0, j.namespace, j.job_id),
        )
        return merged[:limit]

    # -- the webhook outbox ---------------------------------------------------

    async def _delivery_at(
        self,
        namespace: str,
        job_id: str,
        created_at: int,
        delivery_id: str,
        *,
        serial: bool = False,
    ) -> DeliveryRecord | None:
        rows = await self._rows(
            self._ps["get_delivery_row"],
            (namespace, job_id, created_at, delivery_id),
            serial=serial,
        )
        return _delivery(rows[0]) if rows else None

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        found = await self._run("get_delivery_id", namespace, delivery_id)
        if not found:
            return None
        job_id, created_at = found[0]
        return await self._delivery_at(namespace, job_id, created_at, delivery_id)

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        found: list[DeliveryRecord] = []
        if query.job_id is not None:
            params: tuple[Any, ...]
            if query.after is None:
                statement, params = "job_deliveries_desc", (namespace, query.job_id)
            else:
                statement = "job_deliveries_desc_after"
                params = (namespace, query.job_id, query.after[0], query.after[1])
            rows = await self._rows(self._ps[statement], params, fetch_size=200)
            for row in rows:
                d = _delivery(row)
                if query.created_since is not None and d.created_at < query.created_since:
                    break
                if query.matches(d):
                    found.append(d)
                    if len(found) == query.limit:
                        break
            return found
        low = _bucket(query.created_since, LIST_BUCKET) if query.created_since is not None else 0
        high = _bucket(query.after[0], LIST_BUCKET) if query.after is not None else 2**62

        async def fetch(bucket: int, position: tuple[Any, ...] | None, size: int) -> list[_Entry]:
            created, delivery_id = position if position is not None else (2**63 - 1, _HIGHEST)
            rows = await self._run(
                "deliveries_created", namespace, bucket, created, delivery_id, size
            )
            return [
                _Entry(
                    (r[0], r[1]), namespace, r[2], r[0], r[3] or 0, (bucket, r[0], r[1]), (r[1],)
                )
                for r in rows
            ]

        size = min(max(query.limit, 10), 500)
        async for entries in self._walk(
            f"d/{namespace}", low, high, True, fetch, query.after, size
        ):
            rows = await self._all(
                (self._delivery_at(namespace, e.job_id, e.created_at, e.extra[0]) for e in entries),
                limit=16,
            )
            for entry, d in zip(entries, rows, strict=True):
                if d is None:
                    if self._stale(entry):
                        bucket, created, delivery_id = entry.key
                        await self._quietly(
                            [
                                self._run(
                                    "drop_delivery_created", namespace, bucket, created, delivery_id
                                )
                            ]
                        )
                    continue
                if query.created_since is not None and d.created_at < query.created_since:
                    return found
                if query.matches(d):
                    found.append(d)
                    if len(found) == query.limit:
                        return found
        return found

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        spreads = sorted({_spread(s) for s in shards} if shards is not None else range(SPREAD))
        high = _bucket(now, DUE_BUCKET)
        size = min(max(limit * 2, 16), 500)

        async def candidates(spread: int) -> AsyncGenerator[list[_Entry], None]:
            async def fetch(
                bucket: int, position: tuple[Any, ...] | None, size: int
            ) -> list[_Entry]:
                due, ns, delivery_id = position if position is not None else (-(2**63), "", "")
                rows = await self._run("due", spread, bucket, due, ns, delivery_id, now, size)
                return [
                    _Entry(
                        (r[0], r[1], r[2]),
                        r[1],
                        r[3],
                        r[4],
                        r[6] or 0,
                        (spread, bucket, r[0], r[1], r[2]),
                        (r[2], r[5]),
                    )
                    for r in rows
                ]

            async def empty(bucket: int) -> bool:
                return not await self._run("any_due", spread, bucket)

            async for entries in self._walk(
                f"o/{spread}", 0, high, False, fetch, None, size, empty
            ):
                yield [e for e in entries if shards is None or e.extra[1] in shards]

        claimed: list[DeliveryRecord] = []
        walkers = [candidates(s) for s in spreads]
        pending: list[list[_Entry]] = [[] for _ in walkers]
        alive = [True] * len(walkers)
        try:
            while len(claimed) < limit:
                # Refill each spread's queue, then take the earliest entries overall.
                async def refill(i: int) -> None:
                    while alive[i] and not pending[i]:
                        try:
                            pending[i] = await anext(walkers[i])
                        except StopAsyncIteration:
                            alive[i] = False

                await asyncio.gather(*(refill(i) for i in range(len(walkers))))
                heads = sorted((e for queue in pending for e in queue), key=lambda e: e.position)[
                    : limit - len(claimed)
                ]
                if not heads:
                    break
                taken = {id(e) for e in heads}
                for i, queue in enumerate(pending):
                    pending[i] = [e for e in queue if id(e) not in taken]
                claimed.extend(await self._lease(heads, now, owner, lease_until))
        finally:
            for walker in walkers:
                await walker.aclose()
        claimed.sort(key=lambda d: (d.next_attempt_at, d.namespace, d.delivery_id))
        return claimed[:limit]

    async def _lease(
        self, entries: Sequence[_Entry], now: int, owner: str, lease_until: int
    ) -> list[DeliveryRecord]:
        """Take the lease of each entry's delivery with one LWT per job partition."""
        groups: dict[tuple[str, str], list[_Entry]] = {}
        seen: set[tuple[str, str]] = set()
        for e in entries:
            ident = (e.namespace, e.extra[0])
            if ident not in seen:
                seen.add(ident)
                groups.setdefault((e.namespace, e.job_id), []).append(e)
        results = await asyncio.gather(
            *(self._lease_group(g, now, owner, lease_until) for g in groups.values())
        )
        return [d for group in results for d in group]

    async def _lease_group(
        self, entries: list[_Entry], now: int, owner: str, lease_until: int
    ) -> list[DeliveryRecord]:
        stale: list[Awaitable[Any]] = []
        for _ in range(3):
            if not entries:
                break
            batch = self._batch()
            for e in entries:
                batch.add(
                    self._ps["lease"],
                    (owner, lease_until, e.namespace, e.job_id, e.created_at, e.extra[0], now, now),
                )
            try:
                result = await self._lwt(batch)
            except WriteTimeout:
                # Paxos contention with another claimer: the outcome is unknown.
                # A SERIAL read settles it (it finishes any round in progress).
                rows = await self._all(
                    self._delivery_at(e.namespace, e.job_id, e.created_at, e.extra[0], serial=True)
                    for e in entries
                )
                await self._quietly(stale)
                return [
                    d
                    for d in rows
                    if d is not None and d.lease_owner == owner and d.lease_until == lease_until
                ]
            if result[0]["[applied]"]:
                rows = await self._all(
                    self._delivery_at(e.namespace, e.job_id, e.created_at, e.extra[0])
                    for e in entries
                )
                await self._quietly(stale)
                return [d for d in rows if d is not None and d.lease_owner == owner]
            current = {row.get("c"): row for row in result if row.get("c") is not None}
            eligible = []
            for e in entries:
                row = current.get(e.extra[0])
                if row is None:
                    if self._stale(e):  # never committed, or purged
                        stale.append(self._drop_entry(e))
                    continue
                state = row.get("state")
                due, until = row.get("next_attempt_at") or 0, row.get("lease_until") or 0
                if state != DeliveryState.PENDING.value or due > now:
                    stale.append(self._drop_entry(e))  # finished, or rescheduled elsewhere
                elif until <= now:
                    eligible.append(e)
                # else leased by someone else right now: keep the entry
            entries = eligible
        await self._quietly(stale)
        return []

    async def _drop_entry(self, e: _Entry) -> None:
        spread, bucket, due, ns, delivery_id = e.key
        await self._run("drop_due", spread, bucket, due, ns, delivery_id)

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        async def finish(d: DeliveryRecord) -> bool:
            before = await self._delivery_at(d.namespace, d.job_id, d.created_at, d.delivery_id)
            if before is None or before.lease_owner != owner:
                return False
            now = _now()
            if d.state is DeliveryState.PENDING and d.next_attempt_at != before.next_attempt_at:
                await self._index_due(d, now)
            result = await self._execute(
                self._ps["finish"],
                (
                    d.state.value,
                    d.attempts,
                    d.next_attempt_at,
                    d.updated_at,
                    dumps(delivery_to_doc(d)),
                    d.namespace,
                    d.job_id,
                    d.created_at,
                    d.delivery_id,
                    owner,
                ),
                lwt=True,
            )
            if not result[0]["[applied]"]:
                return False
            if d.state is not DeliveryState.PENDING or d.next_attempt_at != before.next_attempt_at:
                await self._quietly(
                    [
                        self._drop_due(
                            d.namespace, d.delivery_id, before.shard, before.next_attempt_at
                        )
                    ]
                )
            return True

        return await self._all((finish(d) for d in deliveries), limit=16)

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        async def requeue(delivery_id: str) -> bool:
            before = await self._get_delivery(namespace, delivery_id)
            if before is None or (before.lease_until or 0) > now:
                return False
            await self._index_due(dataclasses.replace(before, next_attempt_at=now), _now())
            result = await self._execute(
                self._ps["requeue"],
                (
                    now,
                    now,
                    namespace,
                    before.job_id,
                    before.created_at,
                    delivery_id,
                    now,
                    before.next_attempt_at,
                ),
                lwt=True,
            )
            if not result[0]["[applied]"]:
                return False
            if before.state is DeliveryState.PENDING and before.next_attempt_at != now:
                await self._quietly(
                    [self._drop_due(namespace, delivery_id, before.shard, before.next_attempt_at)]
                )
            return True

        done = await self._all(requeue(i) for i in dict.fromkeys(delivery_ids))
        return sum(done)

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        spreads = sorted({_spread(s) for s in shards} if shards is not None else range(SPREAD))

        async def one_spread(spread: int) -> tuple[int, int | None]:
            count, oldest = 0, None
            low = 0
            while True:
                buckets = [
                    r[0] for r in await self._run("buckets_asc", f"o/{spread}", low, 2**62, 64)
                ]
                for bucket in buckets:
                    if shards is None:
                        rows = await self._run("due_stats", spread, bucket)
                    else:
                        mine = sorted(s for s in shards if _spread(s) == spread)
                        rows = await self._run("due_stats_shards", spread, bucket, mine)
                    if rows and rows[0][0]:
                        count += rows[0][0]
                        due = rows[0][1]
                        oldest = due if oldest is None else min(oldest, due)
                if len(buckets) < 64:
                    return count, oldest
                low = buckets[-1] + 1

        results = await asyncio.gather(*(one_spread(s) for s in spreads))
        dues = [o for _, o in results if o is not None]
        return OutboxStats(sum(c for c, _ in results), min(dues) if dues else None)

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        await self._run(
            "put_endpoint", endpoint.namespace, endpoint.url, endpoint.disabled_at, endpoint.reason
        )

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        rows = await self._run("get_endpoint", namespace, url)
        return EndpointRecord(namespace, url, rows[0][0], rows[0][1]) if rows else None

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        rows = await self._run("list_endpoints", namespace)
        return [EndpointRecord(namespace, r[0], r[1], r[2]) for r in rows]
