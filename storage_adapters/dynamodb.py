"""``dynamodb://host:port/prefix?region=…``: Amazon DynamoDB through aioboto3.

Four tables, named ``<prefix>_meta``, ``_jobs``, ``_index`` and ``_outbox``
(every key a string ``pk`` and ``sk``; billing PAY_PER_REQUEST):

* ``_jobs`` holds one partition per job, ``pk = "<namespace>#<job id>"``:
  the job item (``sk "J"``: the JSON document plus ``rev``, ``cr`` =
  created_at, ``ex`` = expiry), one item per log entry (``"E#<seq:016>"``),
  a pointer per chunk (``"C#<version:010>#<index:010>"`` → seq) and per
  queued delivery (``"D#<created:016>#<id>"``). A chunk larger than 32 KiB
  is kept in parts of 384 KiB under a partition of its own,
  ``"<namespace>#<job>#<created>#<seq>"``, so a big upload spreads over
  the table instead of heating the job's partition.
* ``_index`` holds what lists: jobs by namespace and creation day
  (``"L#<ns>#<day>"``, sorted by ``"<created:016>#<job>"``), by tag
  (``"T#<ns>#<tag>#<day>"``), by expiry (``"X#<group>#<day>"``, the group
  being ``shard % 8``), the audit log by namespace and day (``"A#<ns>#<day>"``,
  sorted by entry id) and the days that have entries (``"LB#…"``, ``"TB#…"``,
  ``"XB#…"``, ``"AB#…"``), so no partition grows without bound or takes every write.
* ``_outbox`` holds deliveries (``pk`` namespace, ``sk`` delivery id) with
  two global secondary indexes: ``created`` (listing) and ``due`` (a sparse
  index of pending rows by ``"<group>"`` and next attempt, for claims).
* ``_meta`` holds namespaces, API keys, webhook endpoints and the applied
  schema versions.

A job write is one ``TransactWriteItems``: the job item under a condition
(``attribute_not_exists`` to create, ``rev``/``cr`` to update), its log
entries, chunk parts and pointers, the index entries the change moves and
the deliveries it queues — all or nothing. Reads after writes are
``ConsistentRead`` on the tables; only the two outbox indexes lag (a claim
is a conditional update, so lag delays, never doubles, a delivery).

Options in the URL query:

* ``region`` — the AWS region (default: the SDK's chain, e.g. ``AWS_REGION``;
  ``us-east-1`` for an explicit host when the environment names none);
* ``tls`` — ``true`` for ``https://`` to an explicit host (default false);
  without a host the AWS endpoint of the region is used, over TLS;
* ``auth`` — ``chain`` to sign with the SDK's default credential chain
  even with an explicit host (default: ``key:secret@`` from the URL, else the
  chain for AWS and the placeholder ``local:local`` for an explicit host);
* ``pool_size`` — HTTP connections at most (default from ``AOS_STORE_POOL_SIZE``);
* ``connect_timeout`` — seconds to connect (default 2);
* ``read_timeout`` — seconds to wait for an answer (default 10);
* ``max_attempts`` — tries per request, the SDK's standard retry mode (default 3);
* ``ttl_grace`` — seconds after a job's expiry at which DynamoDB's own TTL
  may delete its job item and index entries, a backstop for the janitor
  (default 604800, a week; ``0`` writes no TTL attribute on jobs). Audit
  entries always carry one, ``ttl_grace`` after their expiry: TTL is what
  removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, ClassVar, TypeVar

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from sharding import shard_of

from .base import Capability, StorageAdapter, StoreURL
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
    JobStatus,
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

__all__ = ["MIGRATIONS", "DynamoDBAdapter", "StaleRevision"]

T = TypeVar("T")
Item = dict[str, Any]

#: a transaction's limits: items, and bytes (we keep well under 4 MiB)
TX_ITEMS = 100
#: chunk bytes kept in the log entry itself; larger chunks go to parts
INLINE_BYTES = 32 * 1024
#: bytes of one part item (an item may hold 400 KiB with its keys)
PART_BYTES = 384 * 1024
#: index partitions by day (microseconds)
DAY = 86_400_000_000
#: the outbox's due index and the expiry index are spread over this many groups
GROUPS = 8
#: how long a turn claimed on a contended job lasts, and how long others wait
_TURN_US = 500_000
_TURN_WAIT = 0.01
#: sorts after every key character we write
HIGH = "\uffff"
#: the attributes of a key item that ``update_key`` may change
_KEY_ATTRIBUTES = {"expires_at": "ex", "revoked_at": "rv", "last_used_at": "lu"}

_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionInProgressException",
        "TransactionConflictException",
        "LimitExceededException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_UNAVAILABLE_REASONS = frozenset(
    {
        "TransactionConflict",
        "ProvisionedThroughputExceeded",
        "ThrottlingError",
        "RequestLimitExceeded",
        "InternalServerError",
    }
)

_CONFIG_ERRORS = (NoCredentialsError, PartialCredentialsError, NoRegionError)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_OPTIONS = {
    "region",
    "tls",
    "auth",
    "pool_size",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
    "ttl_grace",
}


# -- attribute values ---------------------------------------------------------------


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


def _b(value: bytes) -> dict[str, bytes]:
    return {"B": value}


def _int(item: Item, name: str) -> int:
    return int(item[name]["N"])


def _opt_int(item: Item, name: str) -> int | None:
    value = item.get(name)
    return int(value["N"]) if value is not None else None


def _opt_str(item: Item, name: str) -> str | None:
    value = item.get(name)
    return str(value["S"]) if value is not None else None


def _key(pk: str, sk: str) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}


# -- keys -------------------------------------------------------------------------------


def _job_pk(namespace: str, job_id: str) -> str:
    return f"{namespace}#{job_id}"


def _event_sk(seq: int) -> str:
    return f"E#{max(seq, 0):016d}"


def _chunk_sk(version: int, index: int) -> str:
    return f"C#{version:010d}#{index:010d}"


def _part_pk(namespace: str, job_id: str, created_at: int, seq: int) -> str:
    return f"{namespace}#{job_id}#{created_at}#{seq}"


def _part_sk(n: int) -> str:
    return f"P{n:04d}"


def _position(created_at: int, ident: str) -> str:
    return f"{created_at:016d}#{ident}"


def _day(at: int) -> int:
    return max(at, 0) // DAY


def _group(shard: int) -> str:
    return str(shard % GROUPS)


def _list_pk(namespace: str, day: int) -> str:
    return f"L#{namespace}#{day}"


def _tag_pk(namespace: str, tag: str, day: int) -> str:
    return f"T#{namespace}#{tag}#{day}"


def _expiry_pk(group: str, day: int) -> str:
    return f"X#{group}#{day}"


def _audit_pk(namespace: str, day: int) -> str:
    return f"A#{namespace}#{day}"


def _id_time(entry_id: str | None) -> int | None:
    """The time an audit entry id starts with (16 hex digits), if it does."""
    head = (entry_id or "")[:16]
    if len(head) == 16 and all(c in "0123456789abcdef" for c in head):
        return int(head, 16)
    return None


def _audit_day(entry: AuditRecord) -> int:
    at = _id_time(entry.entry_id)
    return _day(entry.at if at is None else at)


def _endpoint_sk(url: str) -> str:
    return "W#" + hashlib.sha256(url.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class _Known:
    """What the index entries of a job say, as of one revision."""

    created_at: int
    revision: int
    status: JobStatus
    expires: int | None  # the expiry the index holds (a tombstone's own time)
    tags: tuple[str, ...]


def _known(job: JobRecord) -> _Known:
    return _Known(job.created_at, job.revision, job.status, job.expires_at, _tags(job))


def _tags(job: JobRecord) -> tuple[str, ...]:
    return tuple(sorted(set(job.tags)))


class StaleRevision(RevisionConflict):
    """A lost compare-and-set, with the job as the store held it when it lost
    (``ALL_OLD`` of the failed condition): a writer may retry from it
    without reading the job again. It is a snapshot, not a fresh read."""

    def __init__(self, message: str, current: JobRecord) -> None:
        super().__init__(message)
        self.current = current


class _Cancelled(Exception):
    """A transaction was cancelled by a condition; ``reasons`` per item."""

    def __init__(self, reasons: list[Item]) -> None:
        super().__init__("transaction cancelled")
        self.reasons = reasons


# -- schema -----------------------------------------------------------------------------------


def _table(name: str, *indexes: Item, extra: Iterable[tuple[str, str]] = ()) -> Item:
    attributes = {"pk": "S", "sk": "S", **dict(extra)}
    spec: Item = {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": t} for a, t in attributes.items()
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        spec["GlobalSecondaryIndexes"] = list(indexes)
    return spec


def _gsi(name: str, hash_key: str, range_key: str, include: Sequence[str] = ()) -> Item:
    projection: Item = (
        {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(include)}
        if include
        else {"ProjectionType": "KEYS_ONLY"}
    )
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": hash_key, "KeyType": "HASH"},
            {"AttributeName": range_key, "KeyType": "RANGE"},
        ],
        "Projection": projection,
    }


#: Versioned schema: (version, tables to create as (suffix, spec builder, with TTL)).
MIGRATIONS: list[tuple[int, list[tuple[str, bool]]]] = [
    (1, [("jobs", True), ("index", True)]),
    (2, [("outbox", False)]),
]


def _table_spec(suffix: str, name: str) -> Item:
    if suffix == "outbox":
        return _table(
            name,
            _gsi("created", "pk", "lk", include=["st", "j"]),
            _gsi("due", "dp", "nx", include=["sh", "lu"]),
            extra=[("lk", "S"), ("dp", "S"), ("nx", "N")],
        )
    return _table(name)


class DynamoDBAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("dynamodb",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.TRANSACTIONS, Capability.NATIVE_TTL}
    )
    #: 8 parts of 384 KiB, leaving ~1 MiB of the 4 MiB transaction for the
    #: job item, its log entries, index entries and deliveries
    max_chunk_bytes: ClassVar[int | None] = 3 * 1024 * 1024

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        options = dict(url.options)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown dynamodb URL options {unknown}; known: {', '.join(sorted(_OPTIONS))}"
            )
        self.region = options.get("region") or None
        self.tls = _flag(options, "tls")
        auth = options.get("auth", "")
        if auth not in ("", "chain"):
            raise ConfigurationError(f"dynamodb option auth must be 'chain', not {auth!r}")
        try:
            self.connect_timeout = float(options.get("connect_timeout", 2))
            self.read_timeout = float(options.get("read_timeout", 10))
            self.max_attempts = int(options.get("max_attempts", 3))
            self.ttl_grace = int(options.get("ttl_grace", 7 * 86400))
        except ValueError as exc:
            raise ConfigurationError(f"dynamodb options must be numbers: {exc}") from exc
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigurationError("dynamodb timeouts must be positive")
        if self.max_attempts < 1:
            raise ConfigurationError("dynamodb option max_attempts must be at least 1")
        if self.ttl_grace < 0:
            raise ConfigurationError("dynamodb option ttl_grace must not be negative")
        self.prefix = url.path.strip("/") or "aos"
        if not all(c.isalnum() or c in "_.-" for c in self.prefix) or len(self.prefix) > 200:
            raise ConfigurationError(
                f"dynamodb table prefix {self.prefix!r} must be at most 200 letters, digits, "
                "'_', '.' or '-'"
            )
        self.endpoint: str | None = None
        if url.host:
            port = url.port or (443 if self.tls else 8000)
            host = f"[{url.host}]" if ":" in url.host else url.host
            self.endpoint = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self._credentials: dict[str, str] = {}
        if url.username is not None:
            if url.password is None:
                raise ConfigurationError("dynamodb credentials in the URL need key:secret@")
            self._credentials = {
                "aws_access_key_id": url.username,
                "aws_secret_access_key": url.password,
            }
        elif self.endpoint is not None and auth != "chain":
            self._credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
        if self.region is None and self.endpoint is not None:
            # an emulator answers in any region; the SDK still wants one
            env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self.region = env or "us-east-1"
        self.tables = {s: f"{self.prefix}_{s}" for s in ("meta", "jobs", "index", "outbox")}
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        #: index state of recently written or read jobs, to update index entries
        #: without reading the job first
        self._recent: OrderedDict[tuple[str, str], _Known] = OrderedDict()
        #: day-marker items known to exist
        self._markers: set[tuple[str, str]] = set()
        #: audit day markers written: (namespace, day) -> their ttl
        self._audit_markers: dict[tuple[str, int], int] = {}
        #: this adapter, for turn claims on contended jobs
        self._node = uuid.uuid4().hex[:16]
        #: compare-and-sets lost in a row, by job
        self._losses: dict[tuple[str, str], int] = {}

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.pool_size,
            tcp_keepalive=True,
        )
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                _session().client(
                    "dynamodb",
                    region_name=self.region,
                    endpoint_url=self.endpoint,
                    config=config,
                    **self._credentials,
                )
            )
        except _CONFIG_ERRORS as exc:
            await stack.aclose()
            raise ConfigurationError(f"dynamodb: {exc} (set ?region= in the URL)") from exc
        except BaseException:
            await stack.aclose()
            raise
        self._client.meta.events.register("before-send.dynamodb", _stream_large_body)
        self._stack = stack

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()

    async def _ping(self) -> None:
        # a data-plane read: DescribeTable is a control-plane call with low rate limits
        await self._call(
            "get_item",
            TableName=self.tables["meta"],
            Key=_key("schema", f"v{MIGRATIONS[0][0]:04d}"),
        )

    async def _migrate(self, apply: bool) -> list[int]:
        versions = [v for v, _ in MIGRATIONS]
        try:
            done = await self._applied_versions()
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
            done = None  # not even the table of versions
        pending = [v for v in versions if done is None or v not in done]
        if not apply or not pending:
            return pending
        if done is None:
            meta = self.tables["meta"]
            await self._create_table(meta, _table(meta), ttl=False)
        applied = []
        for version, tables in MIGRATIONS:
            if version in pending and await self._apply_once(version, tables):
                applied.append(version)
        return applied

    async def _applied_versions(self) -> set[int]:
        items = await self._query_all(
            TableName=self.tables["meta"],
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": _s("schema")},
            ConsistentRead=True,
        )
        return {int(i["sk"]["S"][1:]) for i in items if i.get("state", {}).get("S") == "done"}

    async def _apply_once(self, version: int, tables: list[tuple[str, bool]]) -> bool:
        """Apply one version unless another node has: a conditional put claims it
        (a claim whose node died runs out after two minutes)."""
        key = _key("schema", f"v{version:04d}")
        me = uuid.uuid4().hex
        deadline = time.monotonic() + 600
        while True:
            now = time.time()
            try:
                await self._call(
                    "put_item",
                    TableName=self.tables["meta"],
                    Item={**key, "state": _s("applying"), "owner": _s(me), "until": _n(now + 120)},
                    ConditionExpression="attribute_not_exists(pk) OR "
                    "(#state = :applying AND #until < :now)",
                    ExpressionAttributeNames={"#state": "state", "#until": "until"},
                    ExpressionAttributeValues={":applying": _s("applying"), ":now": _n(now)},
                )
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
                item = await self._get(self.tables["meta"], key)
                if item is not None and item.get("state", {}).get("S") == "done":
                    return False
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"dynamodb schema version {version} is being applied by another node"
                    ) from exc
                await asyncio.sleep(0.2)
                continue
            for suffix, ttl in tables:
                name = self.tables[suffix]
                await self._create_table(name, _table_spec(suffix, name), ttl=ttl)
            await self._call(
                "update_item",
                TableName=self.tables["meta"],
                Key=key,
                UpdateExpression="SET #state = :done, applied = :now",
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames={"#state": "state", "#owner": "owner"},
                ExpressionAttributeValues={
                    ":done": _s("done"),
                    ":now": _n(time.time()),
                    ":me": _s(me),
                },
            )
            return True

    async def _create_table(self, name: str, spec: Item, *, ttl: bool) -> None:
        try:
            await self._call("create_table", **spec)
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":  # created by another node
                raise
        deadline = time.monotonic() + 600
        while True:
            table = (await self._call("describe_table", TableName=name))["Table"]
            indexes = table.get("GlobalSecondaryIndexes", [])
            if table["TableStatus"] == "ACTIVE" and all(
                i.get("IndexStatus") == "ACTIVE" for i in indexes
            ):
                break
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"dynamodb table {name} did not become ACTIVE")
            await asyncio.sleep(0.5)
        if ttl:
            try:
                await self._call(
                    "update_time_to_live",
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
                )
            except ClientError as exc:
                # already on (by another node), or being switched on
                if _code(exc) not in ("ValidationException", "ResourceInUseException"):
                    raise

    # -- plumbing ------------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "ResourceNotFoundException":
                return StoreUnavailable(
                    f"dynamodb tables {self.prefix}_* are missing ({message}); run `aos migrate`"
                )
            if code in _UNAVAILABLE_CODES:
                return StoreUnavailable(f"dynamodb: {code}: {message}")
            if code == "TransactionCanceledException":
                return StoreUnavailable(f"dynamodb: transaction cancelled: {message}")
            return StoreError(f"dynamodb: {code}: {message}")
        if isinstance(exc, BotoCoreError):  # network errors, timeouts
            return StoreUnavailable(f"dynamodb: {type(exc).__name__}: {exc}")
        return super()._translate(exc)

    async def _call(self, operation: str, **params: Any) -> Any:
        client = self._client
        if client is None:
            raise StoreUnavailable("dynamodb store is not open")
        try:
            return await getattr(client, operation)(**params)
        except _CONFIG_ERRORS as exc:
            raise ConfigurationError(f"dynamodb: {exc}") from exc

    async def _get(self, table: str, key: Item, projection: str | None = None) -> Item | None:
        params: Item = {"TableName": table, "Key": key, "ConsistentRead": True}
        if projection:
            params["ProjectionExpression"] = projection
        found: Item | None = (await self._call("get_item", **params)).get("Item")
        return found

    async def _query_all(self, **params: Any) -> list[Item]:
        return [item async for item in self._query(**params)]

    async def _query(self, **params: Any) -> AsyncGenerator[Item, None]:
        """Every item of a query, page by page (bounded by the pages' size)."""
        while True:
            page = await self._call("query", **params)
            for item in page.get("Items", []):
                yield item
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            params["ExclusiveStartKey"] = last

    async def _batch_get(self, table: str, keys: Sequence[Item]) -> list[Item]:
        """The items of ``keys`` that exist (any order), read consistently."""
        found: list[Item] = []

        async def batch(part: Sequence[Item]) -> None:
            request: Item = {table: {"Keys": list(part), "ConsistentRead": True}}
            delay = 0.01
            while request:
                answer = await self._call("batch_get_item", RequestItems=request)
                found.extend(answer.get("Responses", {}).get(table, []))
                request = answer.get("UnprocessedKeys") or {}
                if request:
                    await asyncio.sleep(delay * random.random())
                    delay = min(delay * 2, 1.0)

        unique = list({(k["pk"]["S"], k["sk"]["S"]): k for k in keys}.values())
        await _gather(batch(unique[i : i + 100]) for i in range(0, len(unique), 100))
        return found

    async def _batch_put(self, table: str, items: Sequence[Item]) -> None:
        """Put ``items`` (unique keys) with ``BatchWriteItem``, 25 a request."""
        await self._batch_write(table, [{"PutRequest": {"Item": i}} for i in items])

    async def _batch_delete(self, table: str, keys: Sequence[Item]) -> None:
        unique = list({(k["pk"]["S"], k["sk"]["S"]): k for k in keys}.values())
        await self._batch_write(table, [{"DeleteRequest": {"Key": k}} for k in unique])

    async def _batch_write(self, table: str, requests: Sequence[Item]) -> None:
        """``BatchWriteItem`` 25 requests at a time, retrying what is left unprocessed."""

        async def batch(part: Sequence[Item]) -> None:
            request: Item = {table: list(part)}
            delay = 0.01
            while request:
                answer = await self._call("batch_write_item", RequestItems=request)
                request = answer.get("UnprocessedItems") or {}
                if request:
                    await asyncio.sleep(delay * random.random())
                    delay = min(delay * 2, 1.0)

        await _gather(batch(requests[i : i + 25]) for i in range(0, len(requests), 25))

    async def _transact(self, items: list[Item]) -> None:
        """One transaction; a condition that fails raises :class:`_Cancelled`.

        A conflict with another transaction on the same items cancels the
        whole write before anything is applied, so it is tried again (then
        its condition decides); throttling is left to the SDK's retries.
        """
        if len(items) > TX_ITEMS:
            raise ValueError(
                f"a dynamodb job write holds at most {TX_ITEMS} items, this one needs "
                f"{len(items)} (fewer tags or deliveries per change)"
            )
        delay = 0.005
        for attempt in range(8):
            try:
                await self._call("transact_write_items", TransactItems=items)
                return
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise
                reasons: list[Item] = exc.response.get("CancellationReasons") or []
                codes = {r.get("Code") for r in reasons}
                if "ConditionalCheckFailed" in codes:
                    raise _Cancelled(reasons) from exc
                if not codes & _UNAVAILABLE_REASONS or attempt == 7:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.2)
        raise AssertionError("unreachable")

    async def _ensure_marker(self, pk: str, day: int) -> None:
        """Record that day ``day`` of an index has entries (before writing them)."""
        marker = (pk, f"{day:08d}")
        if marker in self._markers:
            return
        await self._call("put_item", TableName=self.tables["index"], Item=_key(*marker))
        if len(self._markers) > 100_000:
            self._markers.clear()
        self._markers.add(marker)

    def _remember(self, namespace: str, job_id: str, known: _Known | None) -> None:
        ident = (namespace, job_id)
        if known is None:
            self._recent.pop(ident, None)
            return
        self._recent[ident] = known
        self._recent.move_to_end(ident)
        if len(self._recent) > 10_000:
            self._recent.popitem(last=False)

    def _ttl(self, expires_at: int | None) -> int | None:
        if expires_at is None or not self.ttl_grace:
            return None
        return expires_at // 1_000_000 + self.ttl_grace

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await self._call(
            "put_item",
            TableName=self.tables["meta"],
            Item={
                **_key(f"N#{namespace.name}", "N"),
                "cfg": _b(dumps(namespace.config)),
                "cr": _n(namespace.created_at),
                "up": _n(namespace.updated_at),
            },
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        item = await self._get(self.tables["meta"], _key(f"N#{name}", "N"))
        if item is None:
            return None
        return NamespaceRecord(name, loads(item["cfg"]["B"]), _int(item, "cr"), _int(item, "up"))

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        if limit < 1:
            return []
        # A scan of _meta (namespaces, keys, endpoints: small), names only; the
        # ``limit`` smallest past ``after`` are kept as the pages go by.
        picked: list[str] = []
        params: Item = {
            "TableName": self.tables["meta"],
            "FilterExpression": "sk = :n",
            "ProjectionExpression": "pk",
            "ExpressionAttributeValues": {":n": _s("N")},
            "ConsistentRead": True,
        }
        while True:
            page = await self._call("scan", **params)
            for item in page.get("Items", []):
                name = item["pk"]["S"].removeprefix("N#")
                if after is None or name > after:
                    picked.append(name)
            if len(picked) > 2 * limit + 1000:
                picked.sort()
                del picked[limit:]
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            params["ExclusiveStartKey"] = last
        names = sorted(picked)[:limit]
        items = await self._batch_get(self.tables["meta"], [_key(f"N#{n}", "N") for n in names])
        found = {item["pk"]["S"].removeprefix("N#"): item for item in items}
        return [
            NamespaceRecord(n, loads(i["cfg"]["B"]), _int(i, "cr"), _int(i, "up"))
            for n in names
            if (i := found.get(n)) is not None
        ]

    async def _create_key(self, key: KeyRecord) -> None:
        item: Item = {
            **_key(f"N#{key.namespace}", f"K#{key.key_id}"),
            "role": _s(key.role),
            "hash": _s(key.secret_hash),
            "cr": _n(key.created_at),
        }
        if key.name is not None:
            item["nm"] = _s(key.name)
        for field, attribute in _KEY_ATTRIBUTES.items():
            value = getattr(key, field)
            if value is not None:
                item[attribute] = _n(value)
        try:
            await self._call(
                "put_item",
                TableName=self.tables["meta"],
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise AlreadyExists(f"key {key.key_id} exists") from exc
            raise

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        item = await self._get(self.tables["meta"], _key(f"N#{namespace}", f"K#{key_id}"))
        return _decode_key(namespace, item) if item is not None else None

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        items = await self._query_all(
            TableName=self.tables["meta"],
            KeyConditionExpression="pk = :pk AND begins_with(sk, :k)",
            ExpressionAttributeValues={":pk": _s(f"N#{namespace}"), ":k": _s("K#")},
            ConsistentRead=True,
        )
        return sorted((_decode_key(namespace, i) for i in items), key=lambda k: k.key_id)

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        names: dict[str, str] = {}
        values: Item = {}
        sets: list[str] = []
        removes: list[str] = []
        for field, value in changes.items():
            attribute = _KEY_ATTRIBUTES[field]
            names[f"#{attribute}"] = attribute
            if value is None:
                removes.append(f"#{attribute}")
            else:
                values[f":{attribute}"] = _n(value)
                sets.append(f"#{attribute} = :{attribute}")
        clauses = []
        if sets:
            clauses.append("SET " + ", ".join(sets))
        if removes:
            clauses.append("REMOVE " + ", ".join(removes))
        params: Item = {
            "TableName": self.tables["meta"],
            "Key": _key(f"N#{namespace}", f"K#{key_id}"),
            "UpdateExpression": " ".join(clauses),
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": names,
        }
        if values:
            params["ExpressionAttributeValues"] = values
        try:
            await self._call("update_item", **params)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- the audit log ---------------------------------------------------------

    def _audit_ttl(self, expires_at: int) -> int:
        """Audit entries always carry ``ttl``: it is what removes them."""
        return expires_at // 1_000_000 + self.ttl_grace

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        items: dict[tuple[str, str], Item] = {}
        days: dict[tuple[str, int], int] = {}
        for e in entries:
            day = _audit_day(e)
            ttl = self._audit_ttl(e.expires_at)
            days[(e.namespace, day)] = max(days.get((e.namespace, day), 0), ttl)
            pk = _audit_pk(e.namespace, day)
            items[(pk, e.entry_id)] = {
                **_key(pk, e.entry_id),
                "at": _n(e.at),
                "ex": _n(e.expires_at),
                "doc": _b(dumps(audit_to_doc(e))),
                "ttl": _n(ttl),
            }
        # the days first: a reader never misses entries of a day it does not know
        await _gather(self._audit_marker(ns, day, ttl) for (ns, day), ttl in days.items())
        await self._batch_put(self.tables["index"], list(items.values()))

    async def _audit_marker(self, namespace: str, day: int, ttl: int) -> None:
        """Record that a namespace has audit entries on ``day``, for as long as
        the longest-lived of them (the marker's ``ttl`` only ever grows)."""
        if self._audit_markers.get((namespace, day), 0) >= ttl:
            return
        try:
            await self._call(
                "update_item",
                TableName=self.tables["index"],
                Key=_key(f"AB#{namespace}", f"{day:08d}"),
                UpdateExpression="SET #ttl = :ttl",
                ConditionExpression="attribute_not_exists(#ttl) OR #ttl < :ttl",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":ttl": _n(ttl)},
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":  # a later ttl is there
                raise
        if len(self._audit_markers) > 100_000:
            self._audit_markers.clear()
        self._audit_markers[(namespace, day)] = ttl

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        if query.limit < 1:
            return []
        if query.min_id is not None and query.max_id is not None and query.min_id >= query.max_id:
            return []
        lo_at, hi_at = _id_time(query.min_id), _id_time(query.max_id)
        day_range = {
            ":pk": _s(f"AB#{namespace}"),
            ":lo": _s(f"{_day(lo_at) if lo_at is not None else 0:08d}"),
            ":hi": _s(f"{_day(hi_at):08d}" if hi_at is not None else HIGH),
        }
        # the id bounds as a key condition (no empty strings in key conditions)
        bounds: Item = {}
        if query.min_id and query.max_id is not None:
            condition = "pk = :pk AND sk BETWEEN :lo AND :hi"  # :hi is skipped below
            bounds = {":lo": _s(query.min_id), ":hi": _s(query.max_id)}
        elif query.min_id:
            condition = "pk = :pk AND sk >= :lo"
            bounds = {":lo": _s(query.min_id)}
        elif query.max_id is not None:
            if not query.max_id:
                return []
            condition = "pk = :pk AND sk < :hi"
            bounds = {":hi": _s(query.max_id)}
        else:
            condition = "pk = :pk"
        found: list[AuditRecord] = []
        async with contextlib.aclosing(
            self._query(
                TableName=self.tables["index"],
                KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                ExpressionAttributeValues=day_range,
                ScanIndexForward=False,
                ConsistentRead=True,
            )
        ) as markers:
            async for marker in markers:
                params: Item = {
                    "TableName": self.tables["index"],
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeValues": {
                        ":pk": _s(_audit_pk(namespace, int(marker["sk"]["S"]))),
                        **bounds,
                    },
                    "ScanIndexForward": False,
                    "ConsistentRead": True,
                    "Limit": min(max(query.limit - len(found) + 1, 10), 1000),
                }
                if query.alive_at is not None:
                    params["FilterExpression"] = "ex > :alive"
                    params["ExpressionAttributeValues"][":alive"] = _n(query.alive_at)
                async with contextlib.aclosing(self._query(**params)) as entries:
                    async for item in entries:
                        if item["sk"]["S"] == query.max_id:
                            continue
                        found.append(_decode_audit(namespace, item))
                        if len(found) >= query.limit:
                            return found
        return found

    async def _purge_audit(self, now: int, limit: int) -> int:
        return 0  # every entry carries ``ttl``: DynamoDB removes it

    # -- job writes ----------------------------------------------------------

    def _event_items(self, job: JobRecord, events: Sequence[EventRecord]) -> list[Item]:
        """Transaction items for ``events``: entries, parts and chunk pointers."""
        table = self.tables["jobs"]
        pk = _job_pk(job.namespace, job.job_id)
        items: list[Item] = []
        for e in events:
            entry: Item = {
                **_key(pk, _event_sk(e.seq)),
                "k": _s(e.kind.value),
                "at": _n(e.at),
                "cr": _n(job.created_at),
            }
            if e.kind is EventKind.CHUNK or e.version:
                entry["v"] = _n(e.version)
            if e.index >= 0:
                entry["i"] = _n(e.index)
            if e.format:
                entry["f"] = _s(e.format)
            if e.codec:
                entry["c"] = _s(e.codec)
            if e.digest is not None:
                entry["g"] = _b(e.digest)
            if e.offset:
                entry["o"] = _n(e.offset)
            if len(e.data) <= INLINE_BYTES:
                entry["d"] = _b(e.data)
            else:
                parts = [e.data[i : i + PART_BYTES] for i in range(0, len(e.data), PART_BYTES)]
                entry["np"] = _n(len(parts))
                part_pk = _part_pk(job.namespace, job.job_id, job.created_at, e.seq)
                for n, part in enumerate(parts):
                    items.append(
                        {
                            "Put": {
                                "TableName": table,
                                "Item": {**_key(part_pk, _part_sk(n)), "d": _b(part)},
                            }
                        }
                    )
            items.append({"Put": {"TableName": table, "Item": entry}})
            if e.kind is EventKind.CHUNK:
                items.append(
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {
                                **_key(pk, _chunk_sk(e.version, e.index)),
                                "s": _n(e.seq),
                                "cr": _n(job.created_at),
                            },
                        }
                    }
                )
        return items

    def _delivery_items(
        self, job_created_at: int, deliveries: Sequence[DeliveryRecord]
    ) -> list[Item]:
        items: list[Item] = []
        for d in deliveries:
            items.append(
                {
                    "Put": {
                        "TableName": self.tables["outbox"],
                        "Item": self._delivery_item(d),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
            items.append(
                {
                    "Put": {
                        "TableName": self.tables["jobs"],
                        "Item": {
                            **_key(
                                _job_pk(d.namespace, d.job_id),
                                "D#" + _position(d.created_at, d.delivery_id),
                            ),
                            "cr": _n(job_created_at),
                        },
                    }
                }
            )
        return items

    def _delivery_item(self, d: DeliveryRecord) -> Item:
        item: Item = {
            **_key(d.namespace, d.delivery_id),
            "j": _s(d.job_id),
            "sh": _n(d.shard),
            "dg": _s(_group(d.shard)),
            "st": _s(d.state.value),
            "at": _n(d.attempts),
            "nx": _n(d.next_attempt_at),
            "cr": _n(d.created_at),
            "up": _n(d.updated_at),
            "pay": _b(d.payload),
            "doc": _b(dumps(delivery_to_doc(d))),
            "lk": _s(_position(d.created_at, d.delivery_id)),
        }
        if d.state is DeliveryState.PENDING:
            item["dp"] = _s(_group(d.shard))
        if d.lease_owner is not None:
            item["lo"] = _s(d.lease_owner)
        if d.lease_until is not None:
            item["lu"] = _n(d.lease_until)
        return item

    def _job_item(self, job: JobRecord) -> Item:
        item: Item = {
            **_key(_job_pk(job.namespace, job.job_id), "J"),
            "doc": _b(dumps(job_to_doc(job))),
            "rev": _n(job.revision),
            "cr": _n(job.created_at),
        }
        if job.expires_at is not None:
            item["ex"] = _n(job.expires_at)
        ttl = self._ttl(job.expires_at)
        if ttl is not None:
            item["ttl"] = _n(ttl)
        return item

    def _index_puts(self, job: JobRecord, tags: Iterable[str]) -> list[Item]:
        """The job's listing entries (creation day, and one per tag) as they are now."""
        day = _day(job.created_at)
        sk = _position(job.created_at, job.job_id)
        attrs: Item = {"st": _s(job.status.value)}
        if job.expires_at is not None:
            attrs["ex"] = _n(job.expires_at)
        ttl = self._ttl(job.expires_at)
        if ttl is not None:
            attrs["ttl"] = _n(ttl)
        pks = [_list_pk(job.namespace, day)] + [_tag_pk(job.namespace, t, day) for t in tags]
        return [
            {"Put": {"TableName": self.tables["index"], "Item": {**_key(pk, sk), **attrs}}}
            for pk in pks
        ]

    def _expiry_key(self, namespace: str, job_id: str, expires: int) -> Item:
        return _key(
            _expiry_pk(_group(shard_of(namespace)), _day(expires)),
            f"{expires:016d}#{namespace}#{job_id}",
        )

    def _expiry_put(self, job: JobRecord, expires: int) -> Item:
        item = {
            **self._expiry_key(job.namespace, job.job_id, expires),
            "sh": _n(shard_of(job.namespace)),
            "cr": _n(job.created_at),
        }
        ttl = self._ttl(expires)
        if ttl is not None:
            item["ttl"] = _n(ttl)
        return {"Put": {"TableName": self.tables["index"], "Item": item}}

    async def _expiry_marker(self, namespace: str, expires: int) -> None:
        await self._ensure_marker(f"XB#{_group(shard_of(namespace))}", _day(expires))

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        tags = _tags(job)
        day = _day(job.created_at)
        await _gather(
            [
                self._ensure_marker(f"LB#{job.namespace}", day),
                *(self._ensure_marker(f"TB#{job.namespace}#{t}", day) for t in tags),
                *([self._expiry_marker(job.namespace, job.expires_at)] if job.expires_at else []),
            ]
        )
        event_items = self._event_items(job, events)
        items = [
            {
                "Put": {
                    "TableName": self.tables["jobs"],
                    "Item": self._job_item(job),
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            *event_items,
            *self._index_puts(job, tags),
            *([self._expiry_put(job, job.expires_at)] if job.expires_at is not None else []),
            *self._delivery_items(job.created_at, deliveries),
        ]
        for _ in range(3):
            try:
                await self._transact_with_leftover_check(job, items)
            except _Cancelled as cancelled:
                first = cancelled.reasons[0] if cancelled.reasons else {}
                if first.get("Code") != "ConditionalCheckFailed":
                    raise AlreadyExists(_delivery_conflict(deliveries)) from None
                old = first.get("Item")
                if old is not None and "gone" in old:
                    # A delete that stopped half-way: finish it, then create.
                    await self._purge_all(job.namespace, job.job_id, _int(old, "cr"))
                    continue
                raise AlreadyExists(f"job {job.job_id} exists") from None
            self._remember(job.namespace, job.job_id, _known(job))
            return
        raise StoreUnavailable(f"job {job.job_id} is being deleted; retry")

    async def _transact_with_leftover_check(self, job: JobRecord, items: list[Item]) -> None:
        """Create the job; alongside, look for entries of an earlier job under
        the same id that outlived it (only possible when the TTL backstop
        removed its job item) and remove them."""
        if not self.ttl_grace:
            await self._transact(items)
            return
        check = asyncio.ensure_future(self._leftovers(job.namespace, job.job_id, job.created_at))
        try:
            await self._transact(items)
        except BaseException:
            check.cancel()
            with contextlib.suppress(BaseException):
                await check
            raise
        leftovers = await check
        if leftovers:
            await self._remove_entries(job.namespace, job.job_id, leftovers)

    async def _leftovers(self, namespace: str, job_id: str, created_at: int) -> list[Item]:
        return await self._query_all(
            TableName=self.tables["jobs"],
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            FilterExpression="attribute_exists(cr) AND cr <> :cr",
            ProjectionExpression="sk, cr, np, v, i",
            ExpressionAttributeValues={
                ":pk": _s(_job_pk(namespace, job_id)),
                ":lo": _s("C#"),
                ":hi": _s("E#" + HIGH),
                ":cr": _n(created_at),
            },
            ConsistentRead=True,
        )

    async def _remove_entries(self, namespace: str, job_id: str, entries: list[Item]) -> None:
        """Delete entries of the job partition outside a transaction (leftovers)."""
        pk = _job_pk(namespace, job_id)
        job_keys: list[Item] = []
        outbox_keys: list[Item] = []
        for entry in entries:
            sk = entry["sk"]["S"]
            job_keys.append(_key(pk, sk))
            if sk.startswith("E#") and "np" in entry:
                part_pk = _part_pk(namespace, job_id, _int(entry, "cr"), int(sk[2:]))
                job_keys.extend(_key(part_pk, _part_sk(n)) for n in range(_int(entry, "np")))
            elif sk.startswith("D#"):
                outbox_keys.append(_key(namespace, sk[2:].partition("#")[2]))
        await self._batch_delete(self.tables["jobs"], job_keys)
        if outbox_keys:
            await self._batch_delete(self.tables["outbox"], outbox_keys)

    async def _known_state(self, namespace: str, job_id: str) -> tuple[_Known | None, bool]:
        """The job's index state read from its item, and whether it is a tombstone."""
        item = await self._get(self.tables["jobs"], _key(_job_pk(namespace, job_id), "J"))
        if item is None:
            return None, False
        job = _decode_job(item)
        known = _Known(
            job.created_at, _int(item, "rev"), job.status, _opt_int(item, "ex"), _tags(job)
        )
        return known, "gone" in item

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        item = await self._get(self.tables["jobs"], _key(_job_pk(namespace, job_id), "J"))
        if item is None or "gone" in item:
            return None
        job = _decode_job(item)
        self._remember(namespace, job_id, _known(job))
        return job

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        ident = (job.namespace, job.job_id)
        known = self._recent.get(ident)
        if known is None or known.revision != expected_revision:
            known, gone = await self._known_state(*ident)
            if known is None or gone:
                self._remember(*ident, None)
                raise NotFound(f"job {job.job_id} does not exist")
        if known.revision != expected_revision or known.created_at != job.created_at:
            self._remember(*ident, None)
            raise RevisionConflict(f"job {job.job_id} moved past revision {expected_revision}")
        tags = _tags(job)
        if job.expires_at is not None and job.expires_at != known.expires:
            await self._expiry_marker(job.namespace, job.expires_at)
        event_items = self._event_items(job, events)
        items: list[Item] = [
            {
                "Put": {
                    "TableName": self.tables["jobs"],
                    "Item": self._job_item(job),
                    "ConditionExpression": "rev = :rev AND cr = :cr AND attribute_not_exists(gone) "
                    "AND (attribute_not_exists(wt) OR wt = :me OR wu < :now)",
                    "ExpressionAttributeValues": {
                        ":rev": _n(expected_revision),
                        ":cr": _n(job.created_at),
                        ":me": _s(self._node),
                        ":now": _n(time.time_ns() // 1000),
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            *event_items,
        ]
        if job.status is not known.status or job.expires_at != known.expires or tags != known.tags:
            items.extend(self._index_puts(job, tags))
            day = _day(job.created_at)
            for tag in set(known.tags) - set(tags):
                items.append(
                    {
                        "Delete": {
                            "TableName": self.tables["index"],
                            "Key": _key(
                                _tag_pk(job.namespace, tag, day),
                                _position(job.created_at, job.job_id),
                            ),
                        }
                    }
                )
            for tag in set(tags) - set(known.tags):
                await self._ensure_marker(f"TB#{job.namespace}#{tag}", day)
        if job.expires_at != known.expires:
            if known.expires is not None:
                items.append(
                    {
                        "Delete": {
                            "TableName": self.tables["index"],
                            "Key": self._expiry_key(job.namespace, job.job_id, known.expires),
                        }
                    }
                )
            if job.expires_at is not None:
                items.append(self._expiry_put(job, job.expires_at))
        items.extend(self._delivery_items(job.created_at, deliveries))
        try:
            await self._transact(items)
        except _Cancelled as cancelled:
            self._remember(*ident, None)
            first = cancelled.reasons[0] if cancelled.reasons else {}
            if first.get("Code") == "ConditionalCheckFailed":
                old = first.get("Item")
                if old is None or "gone" in old:
                    raise NotFound(f"job {job.job_id} does not exist") from None
                raise await self._lost(job, expected_revision, old) from None
            raise AlreadyExists(_delivery_conflict(deliveries)) from None
        except BaseException:
            self._remember(*ident, None)  # the outcome is unknown
            raise
        self._losses.pop(ident, None)
        self._remember(*ident, _known(job))

    async def _lost(self, job: JobRecord, expected_revision: int, old: Item) -> StaleRevision:
        """The error for a lost compare-and-set, with the job as it is now.

        Fairness between nodes writing one job: the node that just won
        answers first, so it tends to win again and a writer on another node
        can lose every retry. A node that lost twice in a row claims the next
        turn for a moment (``wt``/``wu`` on the job item; any write of the
        job clears it); the others wait for that write.
        """
        ident = (job.namespace, job.job_id)
        current = _decode_job(old)
        revision = _int(old, "rev")
        self._remember(
            *ident,
            _Known(
                current.created_at, revision, current.status, _opt_int(old, "ex"), _tags(current)
            ),
        )
        message = f"job {job.job_id} moved past revision {expected_revision}"
        if revision == expected_revision and current.created_at == job.created_at:
            # Not moved: another node holds the turn. Give it a moment to write.
            await asyncio.sleep(_TURN_WAIT)
            return StaleRevision(message, current)
        losses = self._losses.get(ident, 0) + 1
        self._losses[ident] = losses
        if len(self._losses) > 10_000:
            self._losses.clear()
        if losses >= 2:
            now = time.time_ns() // 1000
            with contextlib.suppress(ClientError):  # another node holds it, or the job went
                await self._call(
                    "update_item",
                    TableName=self.tables["jobs"],
                    Key=_key(_job_pk(*ident), "J"),
                    UpdateExpression="SET wt = :me, wu = :until",
                    ConditionExpression="cr = :cr AND attribute_not_exists(gone) AND "
                    "(attribute_not_exists(wt) OR wt = :me OR wu < :now)",
                    ExpressionAttributeValues={
                        ":me": _s(self._node),
                        ":until": _n(now + _TURN_US),
                        ":cr": _n(job.created_at),
                        ":now": _n(now),
                    },
                )
        return StaleRevision(message, current)

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        """Tombstone the job (one conditional transaction that also drops its
        listing entries), then remove the rest a transaction at a time. A crash
        in between leaves a tombstone that reads as absent and that the
        janitor (or a create of the same id) finishes."""
        ident = (namespace, job_id)
        self._remember(*ident, None)
        known, gone = await self._known_state(namespace, job_id)
        if known is None or gone:
            raise NotFound(f"job {job_id} does not exist")
        if known.revision != expected_revision:
            raise RevisionConflict(f"job {job_id} is at revision {known.revision}")
        now = time.time_ns() // 1000
        await self._ensure_marker(f"XB#{_group(shard_of(namespace))}", _day(now))
        day = _day(known.created_at)
        position = _position(known.created_at, job_id)
        items: list[Item] = [
            {
                "Update": {
                    "TableName": self.tables["jobs"],
                    "Key": _key(_job_pk(namespace, job_id), "J"),
                    "UpdateExpression": "SET gone = :now, ex = :now, rev = rev + :one REMOVE #ttl",
                    "ConditionExpression": "rev = :rev AND cr = :cr AND attribute_not_exists(gone)",
                    "ExpressionAttributeNames": {"#ttl": "ttl"},
                    "ExpressionAttributeValues": {
                        ":now": _n(now),
                        ":one": _n(1),
                        ":rev": _n(expected_revision),
                        ":cr": _n(known.created_at),
                    },
                }
            },
            {
                "Delete": {
                    "TableName": self.tables["index"],
                    "Key": _key(_list_pk(namespace, day), position),
                }
            },
            *(
                {
                    "Delete": {
                        "TableName": self.tables["index"],
                        "Key": _key(_tag_pk(namespace, tag, day), position),
                    }
                }
                for tag in known.tags
            ),
        ]
        if known.expires is not None:
            items.append(
                {
                    "Delete": {
                        "TableName": self.tables["index"],
                        "Key": self._expiry_key(namespace, job_id, known.expires),
                    }
                }
            )
        items.append(
            {
                "Put": {
                    "TableName": self.tables["index"],
                    "Item": {
                        **self._expiry_key(namespace, job_id, now),
                        "sh": _n(shard_of(namespace)),
                        "cr": _n(known.created_at),
                    },
                }
            }
        )
        try:
            await self._transact(items)
        except _Cancelled:
            known, gone = await self._known_state(namespace, job_id)
            if known is None or gone:
                raise NotFound(f"job {job_id} does not exist") from None
            raise RevisionConflict(f"job {job_id} is at revision {known.revision}") from None
        await self._purge_all(namespace, job_id, known.created_at)

    async def _purge_all(self, namespace: str, job_id: str, created_at: int) -> None:
        while not await self._purge_job(namespace, job_id, created_at, TX_ITEMS):
            pass

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        pk = _job_pk(namespace, job_id)
        jobs, index = self.tables["jobs"], self.tables["index"]
        self._remember(namespace, job_id, None)
        # Room in one transaction: the job item's check, and what the last step
        # removes besides (listing, tag and expiry entries).
        job_item, entries = await asyncio.gather(
            self._get(jobs, _key(pk, "J")),
            self._call(
                "query",
                TableName=jobs,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :e)",
                ProjectionExpression="sk, np, v, i, k, cr",
                ExpressionAttributeValues={":pk": _s(pk), ":e": _s("E#")},
                ConsistentRead=True,
                Limit=min(batch, TX_ITEMS),
            ),
        )
        if job_item is None or _int(job_item, "cr") != created_at:
            return True
        job = _decode_job(job_item)
        tags = _tags(job)
        budget = TX_ITEMS - 1
        deletes: list[Item] = []
        removed = 0
        more = bool(entries.get("LastEvaluatedKey"))
        for entry in entries.get("Items", []):
            seq = int(entry["sk"]["S"][2:])
            keys = [_key(pk, entry["sk"]["S"])]
            if "np" in entry:
                part_pk = _part_pk(namespace, job_id, _int(entry, "cr"), seq)
                keys.extend(_key(part_pk, _part_sk(n)) for n in range(_int(entry, "np")))
            if entry.get("k", {}).get("S") == EventKind.CHUNK.value:
                keys.append(_key(pk, _chunk_sk(_int(entry, "v"), _int(entry, "i"))))
            if removed >= batch or len(deletes) + len(keys) > budget:
                more = True
                break
            deletes.extend({"Delete": {"TableName": jobs, "Key": k}} for k in keys)
            removed += 1
        if not more and removed < batch and len(deletes) + 2 <= budget:
            room = min(batch - removed, (budget - len(deletes)) // 2)
            pointers = await self._call(
                "query",
                TableName=jobs,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :d)",
                ProjectionExpression="sk",
                ExpressionAttributeValues={":pk": _s(pk), ":d": _s("D#")},
                ConsistentRead=True,
                Limit=room,
            )
            for pointer in pointers.get("Items", []):
                sk = pointer["sk"]["S"]
                deletes.append({"Delete": {"TableName": jobs, "Key": _key(pk, sk)}})
                deletes.append(
                    {
                        "Delete": {
                            "TableName": self.tables["outbox"],
                            "Key": _key(namespace, sk[2:].partition("#")[2]),
                        }
                    }
                )
                removed += 1
            more = bool(pointers.get("LastEvaluatedKey")) or len(pointers.get("Items", [])) >= room
        finishing: list[Item] = []
        done = False
        if not more and removed < batch:
            day = _day(created_at)
            position = _position(created_at, job_id)
            finishing = [
                {"Delete": {"TableName": index, "Key": _key(_list_pk(namespace, day), position)}},
                *(
                    {
                        "Delete": {
                            "TableName": index,
                            "Key": _key(_tag_pk(namespace, t, day), position),
                        }
                    }
                    for t in tags
                ),
            ]
            expires = _opt_int(job_item, "ex")
            if expires is not None:
                finishing.append(
                    {
                        "Delete": {
                            "TableName": index,
                            "Key": self._expiry_key(namespace, job_id, expires),
                        }
                    }
                )
            if len(deletes) + len(finishing) + 1 <= TX_ITEMS:
                done = True
            elif not deletes:
                # Very many tags: drop the index entries first (each delete is
                # idempotent and the job is past its use), then the job item.
                await self._batch_delete(index, [f["Delete"]["Key"] for f in finishing])
                finishing = []
                done = True
            else:
                finishing = []  # the next call finishes
        condition: Item = {
            "TableName": jobs,
            "Key": _key(pk, "J"),
            "ConditionExpression": "cr = :cr",
            "ExpressionAttributeValues": {":cr": _n(created_at)},
        }
        if not done and not deletes:
            return False  # nothing fitted (cannot happen: an entry takes at most 10 items)
        try:
            await self._transact(
                [{"Delete" if done else "ConditionCheck": condition}, *deletes, *finishing]
            )
        except _Cancelled:
            return True  # the job went (or was created again) meanwhile
        return done

    # -- job reads -------------------------------------------------------------

    async def _with_parts(
        self, namespace: str, job_id: str, entries: list[Item]
    ) -> list[EventRecord]:
        """Decode log entries, fetching the parts of those kept in parts."""
        wanted: list[Item] = []
        for entry in entries:
            if "np" in entry:
                seq = int(entry["sk"]["S"][2:])
                part_pk = _part_pk(namespace, job_id, _int(entry, "cr"), seq)
                wanted.extend(_key(part_pk, _part_sk(n)) for n in range(_int(entry, "np")))
        parts: dict[tuple[str, str], bytes] = {}
        if wanted:
            for item in await self._batch_get(self.tables["jobs"], wanted):
                parts[(item["pk"]["S"], item["sk"]["S"])] = item["d"]["B"]
        events = []
        for entry in entries:
            seq = int(entry["sk"]["S"][2:])
            if "np" in entry:
                part_pk = _part_pk(namespace, job_id, _int(entry, "cr"), seq)
                pieces = [parts.get((part_pk, _part_sk(n))) for n in range(_int(entry, "np"))]
                if any(p is None for p in pieces):
                    raise CorruptData(f"log entry {seq} of job {job_id} misses a part")
                data = b"".join(p for p in pieces if p is not None)
            else:
                data = entry.get("d", {}).get("B", b"")
            events.append(_decode_event(entry, seq, data))
        return events

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        entries: list[Item] = []
        params: Item = {
            "TableName": self.tables["jobs"],
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":pk": _s(_job_pk(namespace, job_id)),
                ":lo": _s(_event_sk(after_seq + 1)),
                ":hi": _s("E#" + HIGH),
            },
            "ConsistentRead": True,
        }
        while len(entries) < limit:
            page = await self._call("query", **params, Limit=limit - len(entries))
            entries.extend(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return await self._with_parts(namespace, job_id, entries)

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        pk = _job_pk(namespace, job_id)
        pointers: list[Item] = []
        params: Item = {
            "TableName": self.tables["jobs"],
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":pk": _s(pk),
                ":lo": _s(_chunk_sk(version, max(after_index + 1, 0))),
                ":hi": _s(f"C#{version:010d}#{HIGH}"),
            },
            "ConsistentRead": True,
        }
        while len(pointers) < limit:
            page = await self._call("query", **params, Limit=limit - len(pointers))
            pointers.extend(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        if not pointers:
            return []
        seqs = [_int(p, "s") for p in pointers]
        found = await self._batch_get(self.tables["jobs"], [_key(pk, _event_sk(s)) for s in seqs])
        by_seq = {int(e["sk"]["S"][2:]): e for e in found}
        entries = []
        for seq in seqs:
            entry = by_seq.get(seq)
            if entry is not None:  # else purged meanwhile
                entries.append(entry)
        return await self._with_parts(namespace, job_id, entries)

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0 or version < 1:
            return None
        pk = _job_pk(namespace, job_id)
        pointer = await self._get(self.tables["jobs"], _key(pk, _chunk_sk(version, index)))
        if pointer is None:
            return None
        seq = _int(pointer, "s")
        entry = await self._get(self.tables["jobs"], _key(pk, _event_sk(seq)))
        if entry is None:
            return None
        [event] = await self._with_parts(namespace, job_id, [entry])
        return event

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        lo = "0"
        hi = HIGH
        if query.created_after is not None:
            lo = max(lo, f"{query.created_after + 1:016d}")
        if query.created_before is not None:
            if query.created_before <= 0:
                return []
            hi = min(hi, f"{query.created_before - 1:016d}#{HIGH}")
        exclude = None
        if query.after is not None:
            exclude = _position(*query.after)
            if query.descending:
                hi = min(hi, exclude)
            else:
                lo = max(lo, exclude)
        if lo > hi:
            return []
        lo_day = int(lo[:16]) // DAY if lo[:1].isdigit() and len(lo) >= 16 else 0
        hi_day = int(hi[:16]) // DAY if hi[:1].isdigit() else None
        if query.tag is not None:
            marker_pk = f"TB#{namespace}#{query.tag}"

            def bucket_pk(day: int) -> str:
                return _tag_pk(namespace, query.tag or "", day)
        else:
            marker_pk = f"LB#{namespace}"

            def bucket_pk(day: int) -> str:
                return _list_pk(namespace, day)

        filters: list[str] = []
        values: Item = {}
        if query.statuses is not None:
            marks = []
            for n, status in enumerate(sorted(query.statuses)):
                values[f":st{n}"] = _s(status.value)
                marks.append(f":st{n}")
            if not marks:
                return []
            filters.append(f"st IN ({', '.join(marks)})")
        if query.alive_at is not None:
            values[":alive"] = _n(query.alive_at)
            filters.append("(attribute_not_exists(ex) OR ex > :alive)")

        async def candidates() -> AsyncGenerator[tuple[int, str], None]:
            day_range = {":pk": _s(marker_pk), ":lo": _s(f"{lo_day:08d}")}
            day_range[":hi"] = _s(f"{hi_day:08d}" if hi_day is not None else HIGH)
            async with contextlib.aclosing(
                self._query(
                    TableName=self.tables["index"],
                    KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                    ExpressionAttributeValues=day_range,
                    ScanIndexForward=not query.descending,
                    ConsistentRead=True,
                )
            ) as markers:
                async for marker in markers:
                    params: Item = {
                        "TableName": self.tables["index"],
                        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
                        "ExpressionAttributeValues": {
                            ":pk": _s(bucket_pk(int(marker["sk"]["S"]))),
                            ":lo": _s(lo),
                            ":hi": _s(hi),
                            **values,
                        },
                        "ProjectionExpression": "sk",
                        "ScanIndexForward": not query.descending,
                        "ConsistentRead": True,
                        "Limit": max(query.limit + 1, 10),
                    }
                    if filters:
                        params["FilterExpression"] = " AND ".join(filters)
                    async with contextlib.aclosing(self._query(**params)) as entries:
                        async for item in entries:
                            sk = item["sk"]["S"]
                            if sk == exclude:
                                continue
                            yield int(sk[:16]), sk[17:]

        jobs: list[JobRecord] = []
        pending: list[tuple[int, str]] = []

        async def resolve() -> None:
            keys = [_key(_job_pk(namespace, job_id), "J") for _, job_id in pending]
            found: dict[str, Item] = {}
            for item in await self._batch_get(self.tables["jobs"], keys):
                found[item["pk"]["S"]] = item
            for created_at, job_id in pending:
                row = found.get(_job_pk(namespace, job_id))
                if row is None or "gone" in row or _int(row, "cr") != created_at:
                    continue
                job = _decode_job(row)
                if query.matches(job) and len(jobs) < query.limit:
                    jobs.append(job)
            pending.clear()

        stream = candidates()
        try:
            async for candidate in stream:
                pending.append(candidate)
                if len(pending) + len(jobs) >= query.limit:
                    await resolve()
                    if len(jobs) >= query.limit:
                        break
            if pending:
                await resolve()
        finally:
            await stream.aclose()
        return jobs

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        groups = sorted(
            {_group(s) for s in shards} if shards is not None else map(str, range(GROUPS))
        )
        wanted = set(shards) if shards is not None else None
        bound = f"{now:016d}#{HIGH}"

        async def of_group(group: str) -> list[tuple[int, str, str]]:
            found: list[tuple[int, str, str]] = []
            async with contextlib.aclosing(
                self._query(
                    TableName=self.tables["index"],
                    KeyConditionExpression="pk = :pk AND sk <= :hi",
                    ExpressionAttributeValues={
                        ":pk": _s(f"XB#{group}"),
                        ":hi": _s(f"{_day(now):08d}"),
                    },
                    ConsistentRead=True,
                )
            ) as days:
                async for marker in days:
                    day = int(marker["sk"]["S"])
                    seen = 0
                    async with contextlib.aclosing(
                        self._query(
                            TableName=self.tables["index"],
                            KeyConditionExpression="pk = :pk AND sk <= :hi",
                            ExpressionAttributeValues={
                                ":pk": _s(_expiry_pk(group, day)),
                                ":hi": _s(bound),
                            },
                            ProjectionExpression="sk, sh",
                            ConsistentRead=True,
                            Limit=max(limit, 10),
                        )
                    ) as entries:
                        async for item in entries:
                            seen += 1
                            if wanted is not None and _int(item, "sh") not in wanted:
                                continue
                            expires, namespace, job_id = item["sk"]["S"].split("#", 2)
                            found.append((int(expires), namespace, job_id))
                            if len(found) >= limit:
                                return found
                    if not seen and (day + 2) * DAY <= now:
                        await self._drop_marker(f"XB#{group}", day)
            return found

        merged = sorted(
            entry for found in await _gather(of_group(g) for g in groups) for entry in found
        )[:limit]
        if not merged:
            return []
        items = await self._batch_get(
            self.tables["jobs"], [_key(_job_pk(ns, job_id), "J") for _, ns, job_id in merged]
        )
        by_pk = {item["pk"]["S"]: item for item in items}
        expired = []
        for expires, namespace, job_id in merged:
            item = by_pk.get(_job_pk(namespace, job_id))
            if item is None or _opt_int(item, "ex") != expires:
                continue
            job = _decode_job(item)
            if job.expires_at != expires:  # a tombstone: expired when deleted
                job = dataclasses.replace(job, expires_at=expires)
            expired.append(job)
        return expired

    async def _drop_marker(self, pk: str, day: int) -> None:
        """Forget an index day that has been empty for a day (expiries are never
        set that far in the past)."""
        self._markers.discard((pk, f"{day:08d}"))
        await self._call("delete_item", TableName=self.tables["index"], Key=_key(pk, f"{day:08d}"))

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        item = await self._get(self.tables["outbox"], _key(namespace, delivery_id))
        return _decode_delivery(item) if item is not None else None

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        lo = f"{query.created_since:016d}" if query.created_since is not None else "0"
        hi = _position(*query.after) if query.after is not None else HIGH
        exclude = hi if query.after is not None else None
        if lo > hi:
            return []
        if query.job_id is not None:
            source = self._query(
                TableName=self.tables["jobs"],
                KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
                ExpressionAttributeValues={
                    ":pk": _s(_job_pk(namespace, query.job_id)),
                    ":lo": _s("D#" + lo),
                    ":hi": _s("D#" + hi),
                },
                ProjectionExpression="sk",
                ScanIndexForward=False,
                ConsistentRead=True,
                Limit=query.limit + 1,
            )
        else:
            params: Item = {
                "TableName": self.tables["outbox"],
                "IndexName": "created",
                "KeyConditionExpression": "pk = :pk AND lk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {":pk": _s(namespace), ":lo": _s(lo), ":hi": _s(hi)},
                "ProjectionExpression": "lk",
                "ScanIndexForward": False,
                "Limit": query.limit + 1,
            }
            if query.state is not None:
                params["FilterExpression"] = "st = :st"
                params["ExpressionAttributeValues"][":st"] = _s(query.state.value)
            source = self._query(**params)
        rows: list[DeliveryRecord] = []
        pending: list[str] = []

        async def resolve() -> None:
            found = await self._batch_get(
                self.tables["outbox"], [_key(namespace, ident) for ident in pending]
            )
            by_id = {item["sk"]["S"]: _decode_delivery(item) for item in found}
            for ident in pending:
                delivery = by_id.get(ident)
                if delivery is not None and query.matches(delivery) and len(rows) < query.limit:
                    rows.append(delivery)
            pending.clear()

        try:
            async for item in source:
                position = item["sk"]["S"][2:] if query.job_id is not None else item["lk"]["S"]
                if position == exclude:
                    continue
                pending.append(position.partition("#")[2])
                if len(pending) + len(rows) >= query.limit:
                    await resolve()
                    if len(rows) >= query.limit:
                        break
            if pending:
                await resolve()
        finally:
            await source.aclose()
        return rows

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        groups = sorted(
            {_group(s) for s in shards} if shards is not None else map(str, range(GROUPS))
        )
        wanted = set(shards) if shards is not None else None
        page = max(2 * limit, 25)
        starts: dict[str, Item | None] = dict.fromkeys(groups)
        pool: list[tuple[int, str, str, str]] = []
        claimed: list[DeliveryRecord] = []

        async def fetch(group: str) -> None:
            params: Item = {
                "TableName": self.tables["outbox"],
                "IndexName": "due",
                "KeyConditionExpression": "dp = :g AND nx <= :now",
                "ExpressionAttributeValues": {":g": _s(group), ":now": _n(now)},
                "Limit": page,
            }
            start = starts[group]
            if start is not None:
                params["ExclusiveStartKey"] = start
            answer = await self._call("query", **params)
            starts[group] = answer.get("LastEvaluatedKey")
            for item in answer.get("Items", []):
                if wanted is not None and _int(item, "sh") not in wanted:
                    continue
                lease = _opt_int(item, "lu")
                if lease is not None and lease > now:
                    continue
                pool.append((_int(item, "nx"), item["pk"]["S"], item["sk"]["S"], group))

        async def claim(namespace: str, delivery_id: str) -> DeliveryRecord | None:
            try:
                answer = await self._call(
                    "update_item",
                    TableName=self.tables["outbox"],
                    Key=_key(namespace, delivery_id),
                    UpdateExpression="SET lo = :owner, lu = :until",
                    ConditionExpression="st = :pending AND nx <= :now AND "
                    "(attribute_not_exists(lu) OR lu <= :now)",
                    ExpressionAttributeValues={
                        ":owner": _s(owner),
                        ":until": _n(lease_until),
                        ":pending": _s(DeliveryState.PENDING.value),
                        ":now": _n(now),
                    },
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return None  # another node got it, or it changed
                raise
            return _decode_delivery(answer["Attributes"])

        fresh = list(groups)
        while len(claimed) < limit:
            if fresh:
                await _gather(fetch(g) for g in fresh)
            if not pool:
                # every row read so far was another node's or leased: read on
                fresh = [g for g in groups if starts[g] is not None]
                if not fresh:
                    break
                continue
            pool.sort()
            need = limit - len(claimed)
            take, pool = pool[:need], pool[need:]
            results = await _gather(claim(ns, ident) for _, ns, ident, _ in take)
            claimed.extend(r for r in results if r is not None)
            # read on in the groups whose rows read so far are used up
            in_pool = {entry[3] for entry in pool}
            fresh = [g for g in groups if starts[g] is not None and g not in in_pool]
        claimed.sort(key=lambda d: (d.next_attempt_at, d.namespace, d.delivery_id))
        return claimed

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        async def finish(d: DeliveryRecord) -> bool:
            values: Item = {
                ":st": _s(d.state.value),
                ":at": _n(d.attempts),
                ":nx": _n(d.next_attempt_at),
                ":up": _n(d.updated_at),
                ":doc": _b(dumps(delivery_to_doc(d))),
                ":owner": _s(owner),
            }
            if d.state is DeliveryState.PENDING:
                update = "SET st = :st, #at = :at, nx = :nx, up = :up, doc = :doc, dp = dg "
                update += "REMOVE lo, lu"
            else:
                update = "SET st = :st, #at = :at, nx = :nx, up = :up, doc = :doc "
                update += "REMOVE lo, lu, dp"
            try:
                await self._call(
                    "update_item",
                    TableName=self.tables["outbox"],
                    Key=_key(d.namespace, d.delivery_id),
                    UpdateExpression=update,
                    ConditionExpression="lo = :owner",
                    ExpressionAttributeNames={"#at": "at"},
                    ExpressionAttributeValues=values,
                )
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
            return True

        return await _gather(finish(d) for d in deliveries)

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        async def requeue(delivery_id: str) -> bool:
            try:
                await self._call(
                    "update_item",
                    TableName=self.tables["outbox"],
                    Key=_key(namespace, delivery_id),
                    UpdateExpression="SET st = :pending, #at = :zero, nx = :now, up = :now, "
                    "dp = dg REMOVE lo, lu",
                    ConditionExpression="attribute_exists(pk) AND "
                    "(attribute_not_exists(lu) OR lu <= :now)",
                    ExpressionAttributeNames={"#at": "at"},
                    ExpressionAttributeValues={
                        ":pending": _s(DeliveryState.PENDING.value),
                        ":zero": _n(0),
                        ":now": _n(now),
                    },
                )
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
            return True

        return sum(await _gather(requeue(i) for i in dict.fromkeys(delivery_ids)))

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        groups = sorted(
            {_group(s) for s in shards} if shards is not None else map(str, range(GROUPS))
        )
        wanted = set(shards) if shards is not None else None

        async def of_group(group: str) -> tuple[int, int | None]:
            count, oldest = 0, None
            async with contextlib.aclosing(
                self._query(
                    TableName=self.tables["outbox"],
                    IndexName="due",
                    KeyConditionExpression="dp = :g",
                    ExpressionAttributeValues={":g": _s(group)},
                    ProjectionExpression="sh, nx",
                )
            ) as entries:
                async for item in entries:
                    if wanted is not None and _int(item, "sh") not in wanted:
                        continue
                    count += 1
                    due = _int(item, "nx")
                    oldest = due if oldest is None else min(oldest, due)
            return count, oldest

        results = await _gather(of_group(g) for g in groups)
        dues = [oldest for _, oldest in results if oldest is not None]
        return OutboxStats(sum(c for c, _ in results), min(dues, default=None))

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        item: Item = {
            **_key(f"N#{endpoint.namespace}", _endpoint_sk(endpoint.url)),
            "url": _s(endpoint.url),
        }
        if endpoint.disabled_at is not None:
            item["da"] = _n(endpoint.disabled_at)
        if endpoint.reason is not None:
            item["rs"] = _s(endpoint.reason)
        await self._call("put_item", TableName=self.tables["meta"], Item=item)

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        item = await self._get(self.tables["meta"], _key(f"N#{namespace}", _endpoint_sk(url)))
        if item is None:
            return None
        return EndpointRecord(namespace, url, _opt_int(item, "da"), _opt_str(item, "rs"))

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        items = await self._query_all(
            TableName=self.tables["meta"],
            KeyConditionExpression="pk = :pk AND begins_with(sk, :w)",
            ExpressionAttributeValues={":pk": _s(f"N#{namespace}"), ":w": _s("W#")},
            ConsistentRead=True,
        )
        endpoints = [
            EndpointRecord(namespace, i["url"]["S"], _opt_int(i, "da"), _opt_str(i, "rs"))
            for i in items
        ]
        return sorted(endpoints, key=lambda e: e.url)


# -- helpers ----------------------------------------------------------------------------------


_sessions: list[Any] = []


def _session() -> Any:
    """One SDK session per process: a session loads the service's model once
    (a few hundred milliseconds), and clients of one session share it."""
    if not _sessions:
        _sessions.append(aioboto3.Session())
    return _sessions[0]


def _stream_large_body(request: Any, **_: Any) -> None:
    """Hand aiohttp a large request body (a transaction with a big chunk) as a
    stream: as raw bytes above 1 MiB it warns that it may block the loop."""
    body = request.body
    if isinstance(body, bytes | bytearray) and len(body) > 1 << 20:
        request.body = io.BytesIO(body)


async def _gather(work: Iterable[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*work))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _flag(options: Mapping[str, str], name: str) -> bool:
    raw = options.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"dynamodb option {name} must be true or false, not {raw!r}")


def _delivery_conflict(deliveries: Sequence[DeliveryRecord]) -> str:
    return f"a delivery among {[d.delivery_id for d in deliveries]} exists"


def _decode_job(item: Item) -> JobRecord:
    try:
        raw = item["doc"]["B"]
    except KeyError as exc:
        raise CorruptData(f"stored job item has no document: {exc!r}") from exc
    return job_from_doc(loads(raw))


def _decode_event(entry: Item, seq: int, data: bytes) -> EventRecord:
    try:
        return EventRecord(
            seq=seq,
            kind=EventKind(entry["k"]["S"]),
            at=_int(entry, "at"),
            data=bytes(data),
            version=_opt_int(entry, "v") or 0,
            index=_int(entry, "i") if "i" in entry else -1,
            format=_opt_str(entry, "f") or "",
            codec=_opt_str(entry, "c") or "",
            digest=bytes(entry["g"]["B"]) if "g" in entry else None,
            offset=_opt_int(entry, "o") or 0,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"log entry {seq} is malformed: {exc!r}") from exc


def _decode_key(namespace: str, item: Item) -> KeyRecord:
    try:
        return KeyRecord(
            namespace,
            item["sk"]["S"].removeprefix("K#"),
            item["role"]["S"],
            item["hash"]["S"],
            _int(item, "cr"),
            name=_opt_str(item, "nm"),
            expires_at=_opt_int(item, "ex"),
            revoked_at=_opt_int(item, "rv"),
            last_used_at=_opt_int(item, "lu"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored key is malformed: {exc!r}") from exc


def _decode_audit(namespace: str, item: Item) -> AuditRecord:
    try:
        return audit_from_doc(
            namespace, item["sk"]["S"], _int(item, "at"), _int(item, "ex"), loads(item["doc"]["B"])
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored audit entry is malformed: {exc!r}") from exc


def _decode_delivery(item: Item) -> DeliveryRecord:
    try:
        return delivery_from_row(
            (
                item["pk"]["S"],
                item["sk"]["S"],
                item["j"]["S"],
                _int(item, "sh"),
                item["st"]["S"],
                _int(item, "at"),
                _int(item, "nx"),
                _int(item, "cr"),
                _int(item, "up"),
                _opt_str(item, "lo"),
                _opt_int(item, "lu"),
                item["pay"]["B"],
                item["doc"]["B"],
            )
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptData(f"stored delivery is malformed: {exc!r}") from exc
