"""``mongodb://host:27017/aos``: MongoDB (or a MongoDB-protocol server such as
FerretDB) through PyMongo's native async client.

No multi-document transactions are used, so the adapter runs on a standalone
server, a replica set, a sharded cluster and FerretDB alike. Every atomic step
is one document:

* ``jobs`` — one document per job, ``_id`` ``"{namespace}/{job}"``: the
  indexed fields (``ns``, ``j``, ``c`` created at, ``r`` revision, ``st``
  status, ``x`` expires at, ``sh`` shard, ``t`` tags, ``ls`` last seq, ``vk``
  chunks per version), the whole record as one JSON blob (``doc``) and
  ``p``, the *pending* map: log entries and deliveries committed but maybe not
  yet copied to their collections (``pb`` their bytes, ``ps`` since when).
  The job document is the commit point: ``create_job`` inserts it,
  ``update_job`` is one ``find_one_and_update`` filtered on revision and
  ``createdAt`` that sets the job and adds its new entries to ``p``.
* ``events`` — one document per log entry, ``_id``
  ``"{namespace}/{job}/{createdAt}/{seq}"``; the writer copies the pending
  entries here right after its commit (insert, never overwrite), and clears
  them from the job in the background. Readers merge the job's pending map, so
  a crash between commit and copy loses nothing and hides nothing; the next
  writer of the job, a purge, or the outbox claimer's repair sweep copies
  what a crashed writer left. Entries carry ``c``: leftovers of a deleted job
  never show in a job created again under the same id.
* ``blobs`` — chunks larger than 1 MiB, in parts of 4 MiB, written before
  the commit (a lost compare-and-set deletes its parts), so chunks of any size
  fit MongoDB's 16 MiB document limit.
* ``audit`` — one document per audit entry, ``_id`` ``"{namespace}/{entry}"``,
  inserted (never updated) and purged by expiry (no TTL index: FerretDB has none).
* ``deliveries`` (``_id`` ``"{namespace}/{delivery}"``), ``namespaces``,
  ``api_keys``, ``webhook_endpoints`` and ``schema_migrations``.

The URL is a MongoDB connection string handed to PyMongo as it is (``w``,
``journal``, ``replicaSet``, ``tls``, ``authSource``, ``readConcernLevel``…);
the database is its path and is required. Defaults the adapter adds when the
URL does not set them:

* ``pool_size`` (adapter option, removed from the URL) — connections at most,
  PyMongo's ``maxPoolSize`` (default from ``AOS_STORE_POOL_SIZE``);
* ``serverSelectionTimeoutMS`` — 3000: a server that is down gives a 503 in 3 s;
* ``connectTimeoutMS`` — 3000;
* ``socketTimeoutMS`` — 10000: the most one exchange with the server may take
  (PyMongo's ``timeoutMS``, if the URL sets it, also bounds server selection:
  keep it small, or an outage gives a 503 only after it);
* ``appname`` — ``aos``.

``readPreference`` must stay ``primary``: the service reads its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import bson.errors
import pymongo.errors
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.uri_parser import parse_uri

from sharding import shard_of

from .base import StorageAdapter, StoreURL, shielded
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

__all__ = ["MIGRATIONS", "MongoDBAdapter"]

logger = logging.getLogger(__name__)

Doc = dict[str, Any]

#: chunks up to this size (as stored) travel inside the job and event documents
INLINE_MAX = 1 << 20
#: larger ones are cut into parts of this size in ``blobs``
BLOB_PART = 4 << 20
#: a write is refused (and the backlog copied first) while the job holds more
#: pending bytes than this: the job document stays far below 16 MiB
PENDING_MAX = 6 << 20
#: bytes counted per pending entry besides its data
_ENTRY_OVERHEAD = 256
#: pending entries older than this (µs) are copied by the repair sweep
REPAIR_AGE = 10_000_000
#: seconds between two repair sweeps of one adapter
REPAIR_INTERVAL = 5.0
#: seconds a node waits for another node's migration before taking it over
MIGRATION_TAKEOVER = 60.0
#: guard mode: seconds after which a lock document is taken as left by a crash
LOCK_STALE = 30.0
#: guard mode: seconds a writer waits for a job's lock before giving up (503)
LOCK_WAIT = 5.0

_DEFAULTS = {
    "serverSelectionTimeoutMS": "3000",
    "connectTimeoutMS": "3000",
    "socketTimeoutMS": "10000",
    "appname": "aos",
}

#: server error codes that mean "not now" rather than "never"
_TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        50,  # MaxTimeMSExpired
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        133,  # FailedToSatisfyReadPreference
        189,  # PrimarySteppedDown
        202,  # NetworkInterfaceExceededTimeLimit
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
        64,  # WriteConcernFailed
    }
)


def _indexes(*specs: tuple[str, list[tuple[str, int]], bool]) -> list[IndexModel]:
    return [IndexModel(keys, name=name, unique=unique) for name, keys, unique in specs]


#: Versioned schema: collections and indexes (no partial or TTL indexes, which
#: FerretDB refuses). Each version is applied by one node; creating an index
#: that exists is a no-op, so a migration taken over after a crash is safe.
MIGRATIONS: list[tuple[int, dict[str, list[IndexModel]]]] = [
    (
        1,
        {
            "namespaces": [],
            "api_keys": [],
            "jobs": _indexes(
                ("by_created", [("ns", ASCENDING), ("c", ASCENDING), ("j", ASCENDING)], False),
                (
                    "by_tag",
                    [("ns", ASCENDING), ("t", ASCENDING), ("c", ASCENDING), ("j", ASCENDING)],
                    False,
                ),
                ("expiring", [("x", ASCENDING), ("sh", ASCENDING)], False),
                ("pending", [("ps", ASCENDING), ("sh", ASCENDING)], False),
            ),
            "events": _indexes(
                ("by_seq", [("ns", ASCENDING), ("j", ASCENDING), ("s", ASCENDING)], False),
                (
                    "by_chunk",
                    [("ns", ASCENDING), ("j", ASCENDING), ("v", ASCENDING), ("i", ASCENDING)],
                    False,
                ),
            ),
            "blobs": _indexes(
                ("by_job", [("ns", ASCENDING), ("j", ASCENDING), ("c", ASCENDING)], False),
            ),
        },
    ),
    (
        2,
        {
            "deliveries": _indexes(
                ("due", [("st", ASCENDING), ("n", ASCENDING), ("_id", ASCENDING)], False),
                ("by_created", [("ns", ASCENDING), ("ca", ASCENDING), ("id", ASCENDING)], False),
                ("by_job", [("ns", ASCENDING), ("j", ASCENDING), ("ca", ASCENDING)], False),
                ("claimed", [("lt", ASCENDING)], False),
            ),
            "webhook_endpoints": _indexes(
                ("by_url", [("ns", ASCENDING), ("url", ASCENDING)], False),
            ),
        },
    ),
    (
        3,
        {
            "api_keys": _indexes(("by_ns", [("ns", ASCENDING), ("k", ASCENDING)], False)),
            # the audit log: a page is a range of (ns, i); the purge a range of x
            "audit": _indexes(
                ("by_ns", [("ns", ASCENDING), ("i", ASCENDING)], False),
                ("expiring", [("x", ASCENDING)], False),
            ),
        },
    ),
]

#: the fields of a key document that ``update_key`` may change
_KEY_FIELDS = {"expires_at": "x", "revoked_at": "rv", "last_used_at": "lu"}


def _job_key(namespace: str, job_id: str) -> str:
    # Namespaces never hold "/", so the key is unambiguous.
    return f"{namespace}/{job_id}"


def _now_us() -> int:
    return time.time_ns() // 1000


# -- documents --------------------------------------------------------------------


def _entry_of_event(event: EventRecord, blob: tuple[str, int] | None) -> Doc:
    entry: Doc = {
        "s": event.seq,
        "k": event.kind.value,
        "at": event.at,
        "v": event.version,
        "i": event.index,
        "f": event.format,
        "cd": event.codec,
        "dg": event.digest,
        "o": event.offset,
    }
    if blob is None:
        entry["d"] = event.data
    else:
        entry["bl"], entry["bn"] = blob
    return entry


def _event_id(namespace: str, job_id: str, created_at: int, seq: int) -> str:
    return f"{namespace}/{job_id}/{created_at}/{seq}"


def _event_doc(namespace: str, job_id: str, created_at: int, entry: Mapping[str, Any]) -> Doc:
    return {
        "_id": _event_id(namespace, job_id, created_at, entry["s"]),
        "ns": namespace,
        "j": job_id,
        "c": created_at,
        **entry,
    }


def _delivery_doc(d: DeliveryRecord, job_created_at: int) -> Doc:
    return {
        "_id": f"{d.namespace}/{d.delivery_id}",
        "ns": d.namespace,
        "id": d.delivery_id,
        "j": d.job_id,
        "jc": job_created_at,
        "sh": d.shard,
        "st": d.state.value,
        "a": d.attempts,
        "n": d.next_attempt_at,
        "ca": d.created_at,
        "ua": d.updated_at,
        "lo": d.lease_owner,
        "lu": d.lease_until,
        "pl": d.payload,
        "doc": dumps(delivery_to_doc(d)),
    }


def _delivery_from_doc(doc: Mapping[str, Any]) -> DeliveryRecord:
    try:
        row = (
            doc["ns"],
            doc["id"],
            doc["j"],
            doc["sh"],
            doc["st"],
            doc["a"],
            doc["n"],
            doc["ca"],
            doc["ua"],
            doc.get("lo"),
            doc.get("lu"),
            doc["pl"],
            doc["doc"],
        )
    except KeyError as exc:
        raise CorruptData(f"stored delivery lacks {exc}") from exc
    return delivery_from_row(row)


def _key_from_doc(namespace: str, key_id: str, doc: Mapping[str, Any]) -> KeyRecord:
    try:
        return KeyRecord(
            namespace,
            key_id,
            doc["role"],
            doc["h"],
            doc["ca"],
            name=doc.get("n"),
            expires_at=doc.get("x"),
            revoked_at=doc.get("rv"),
            last_used_at=doc.get("lu"),
        )
    except KeyError as exc:
        raise CorruptData(f"key {key_id!r} lacks {exc}") from exc


def _job_fields(job: JobRecord) -> Doc:
    """The fields of a job document that change with the job."""
    return {
        "r": job.revision,
        "st": job.status.value,
        "x": job.expires_at,
        "t": sorted(set(job.tags)),
        "ls": job.last_seq,
        "vk": [v.chunks for v in job.versions],
        "doc": dumps(job_to_doc(job)),
    }


def _job_from(doc: Mapping[str, Any]) -> JobRecord:
    raw = doc.get("doc")
    if not isinstance(raw, bytes):
        raise CorruptData(f"job document {doc.get('_id')!r} has no record")
    return job_from_doc(loads(raw))


def _entry_size(entry: Mapping[str, Any]) -> int:
    data = entry.get("d") or entry.get("pl") or b""
    return len(data) + len(entry.get("doc") or b"") + _ENTRY_OVERHEAD


def _pending(doc: Mapping[str, Any]) -> tuple[list[Doc], list[Doc]]:
    """The pending log entries and deliveries of a job document."""
    pending = doc.get("p") or {}
    if not isinstance(pending, Mapping):
        raise CorruptData(f"job document {doc.get('_id')!r} has a malformed pending map")
    events = [e for k, e in pending.items() if k.startswith("e")]
    deliveries = [d for k, d in pending.items() if k.startswith("d")]
    return events, deliveries


def _ignore_duplicates(exc: pymongo.errors.BulkWriteError) -> None:
    """A copy that found some of its documents there already did its work."""
    errors = exc.details.get("writeErrors", [])
    if not errors or any(e.get("code") != 11000 for e in errors):
        raise exc
    if exc.details.get("writeConcernErrors"):
        raise exc


def _client_uri(url: StoreURL, pool_size: int) -> tuple[str, str]:
    """The connection string for PyMongo (our defaults added) and the database."""
    database = url.path.strip("/")
    if not database:
        raise ConfigurationError(
            f"the mongodb:// URL {url.redacted()!r} names no database: "
            "add it as the path, like mongodb://host:27017/aos"
        )
    if "/" in database or any(c in database for c in ' ."$\\'):
        raise ConfigurationError(f"{database!r} is not a valid MongoDB database name")
    parts = urlsplit(url.raw)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in {"pool_size", "guard"}
    ]
    present = {k.lower() for k, _ in query}
    for key, value in _DEFAULTS.items():
        if key.lower() not in present:
            query.append((key, value))
    if "maxpoolsize" not in present:
        query.append(("maxPoolSize", str(pool_size)))
    for key, value in query:
        if key.lower() == "readpreference" and value.lower() != "primary":
            raise ConfigurationError(
                f"readPreference={value} would read stale jobs; "
                "the service needs readPreference=primary"
            )
    uri = urlunsplit(parts._replace(query=urlencode(query)))
    try:
        parse_uri(uri, validate=True, warn=False)
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError) as exc:
        raise ConfigurationError(f"invalid mongodb:// URL {url.redacted()!r}: {exc}") from exc
    return uri, database


class MongoDBAdapter(StorageAdapter):
    schemes: ClassVar[tuple[str, ...]] = ("mongodb",)
    # Chunks of any size: the large ones are stored in parts.
    max_chunk_bytes: ClassVar[int | None] = None

    def __init__(self, url: StoreURL, *, pool_size: int = 10) -> None:
        super().__init__(url, pool_size=pool_size)
        self._uri, self._database = _client_uri(url, self.pool_size)
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._next_repair = 0.0
        guard = url.options.get("guard", "auto").lower()
        if guard not in {"auto", "true", "false"}:
            raise ConfigurationError(f"guard must be auto, true or false, not {guard!r}")
        self._guard_option = guard
        #: serialize updates through lock documents (servers whose conditional
        #: updates are not atomic, like FerretDB 1.x)
        self.guarded = guard == "true"
        #: guard mode: locks of ours whose release failed, or whose take failed
        #: with its outcome unknown (a store outage): they are taken back at
        #: once rather than after LOCK_STALE
        self._unreleased: set[str] = set()

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        try:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(self._uri, tz_aware=False)
        except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI) as exc:
            raise ConfigurationError(f"mongodb: {exc}") from exc
        self._client = client
        self._db = client[self._database]
        try:
            await self._db.command("ping")
            if self._guard_option == "auto":
                info = await self._db.command("buildInfo")
                self.guarded = "ferretdbVersion" in info
        except BaseException:
            await self._close()
            raise

    async def _close(self) -> None:
        tasks = list(self._background)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def _migrate(self, apply: bool) -> list[int]:
        table = self._col("schema_migrations")
        done = {d["_id"] async for d in table.find({"done": True}, {"_id": 1})}
        pending = [v for v, _ in MIGRATIONS if v not in done]
        if not apply:
            return pending
        applied = []
        for version, collections in MIGRATIONS:
            if version in pending and await self._apply_migration(version, collections):
                applied.append(version)
        return applied

    async def _apply_migration(
        self, version: int, collections: dict[str, list[IndexModel]]
    ) -> bool:
        """Apply one version unless another node does; ``True`` when this one did."""
        table = self._col("schema_migrations")
        me = uuid.uuid4().hex
        try:
            await table.insert_one({"_id": version, "done": False, "owner": me, "at": time.time()})
        except pymongo.errors.DuplicateKeyError:
            # Another node is at it: wait for it, or take over if it died.
            while True:
                row = await table.find_one({"_id": version})
                if row is None or row.get("done"):
                    return False
                if time.time() - float(row.get("at", 0)) > MIGRATION_TAKEOVER:
                    taken = await table.find_one_and_update(
                        {"_id": version, "done": False, "owner": row.get("owner")},
                        {"$set": {"owner": me, "at": time.time()}},
                    )
                    if taken is not None:
                        break
                await asyncio.sleep(0.1)
        db = self._require_db()
        existing = set(await db.list_collection_names())
        for name, indexes in collections.items():
            if name not in existing:
                with contextlib.suppress(pymongo.errors.CollectionInvalid):
                    await db.create_collection(name)
            if indexes:
                await db[name].create_indexes(indexes)
        await table.update_one({"_id": version, "owner": me}, {"$set": {"done": True}})
        return True

    async def _ping(self) -> None:
        await self._require_db().command("ping")

    # -- helpers -----------------------------------------------------------

    def _translate(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, pymongo.errors.DuplicateKeyError):
            return AlreadyExists(f"mongodb: {exc}")
        if isinstance(
            exc,
            pymongo.errors.ConnectionFailure
            | pymongo.errors.ExecutionTimeout
            | pymongo.errors.WTimeoutError,
        ):
            return StoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}")
        if isinstance(exc, pymongo.errors.PyMongoError):
            if exc.timeout:
                return StoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}")
            if exc.has_error_label("RetryableWriteError") or exc.has_error_label(
                "TransientTransactionError"
            ):
                return StoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}")
            code = getattr(exc, "code", None)
            if code in _TRANSIENT_CODES:
                return StoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}")
            if isinstance(exc, pymongo.errors.InvalidOperation) and self._client is None:
                return StoreUnavailable("mongodb store is not open")
            return StoreError(f"mongodb: {type(exc).__name__}: {exc}")
        if isinstance(exc, bson.errors.BSONError):
            return CorruptData(f"mongodb: undecodable document: {exc}")
        return super()._translate(exc)

    def _require_db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise StoreUnavailable("mongodb store is not open")
        return self._db

    def _col(self, name: str) -> AsyncCollection[Doc]:
        return self._require_db()[name]

    @contextlib.asynccontextmanager
    async def _locked(self, name: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock document ``name`` while updating the document it guards
        (guard mode only; otherwise a no-op). Yields whether the lock is held:
        with ``wait`` off, a lock held elsewhere yields ``False`` at once."""
        if not self.guarded:
            yield True
            return
        locks = self._col("locks")
        stamp = uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.002
        while True:
            try:
                await locks.insert_one({"_id": name, "o": stamp, "at": time.time()})
                break
            except pymongo.errors.DuplicateKeyError:
                held = await locks.find_one({"_id": name})
                if held is not None and (
                    held.get("o") in self._unreleased
                    or time.time() - float(held.get("at", 0)) > LOCK_STALE
                ):
                    # Left by a crashed holder, or by a release of ours that failed.
                    await locks.delete_one({"_id": name, "o": held.get("o")})
                    self._unreleased.discard(str(held.get("o")))
                    continue
                if not wait:
                    yield False
                    return
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"mongodb: {name} stayed locked") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
            except BaseException:
                # The insert may have landed (a connection lost on the way back).
                self._unreleased.add(stamp)
                raise
        try:
            yield True
        finally:
            try:
                await shielded(locks.delete_one({"_id": name, "o": stamp}))
            except BaseException:
                self._unreleased.add(stamp)
                raise

    def _in_background(self, work: Callable[[], Any]) -> None:
        async def run() -> None:
            try:
                await work()
            except Exception as exc:  # the next writer or the repair sweep does it
                logger.debug("mongodb background step failed: %r", exc)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- namespaces and keys ----------------------------------------------

    async def _put_namespace(self, namespace: NamespaceRecord) -> None:
        await self._col("namespaces").update_one(
            {"_id": namespace.name},
            {
                "$set": {"cfg": dumps(namespace.config), "ua": namespace.updated_at},
                "$setOnInsert": {"ca": namespace.created_at},
            },
            upsert=True,
        )

    async def _get_namespace(self, name: str) -> NamespaceRecord | None:
        doc = await self._col("namespaces").find_one({"_id": name})
        if doc is None:
            return None
        try:
            return NamespaceRecord(name, loads(doc["cfg"]), doc["ca"], doc["ua"])
        except KeyError as exc:
            raise CorruptData(f"namespace {name!r} lacks {exc}") from exc

    async def _list_namespaces(self, after: str | None, limit: int) -> list[NamespaceRecord]:
        if limit < 1:
            return []
        where: Doc = {"_id": {"$gt": after}} if after is not None else {}
        cursor = self._col("namespaces").find(where).sort("_id", ASCENDING).limit(limit)
        found = []
        async for doc in cursor:
            try:
                found.append(NamespaceRecord(doc["_id"], loads(doc["cfg"]), doc["ca"], doc["ua"]))
            except KeyError as exc:
                raise CorruptData(f"namespace {doc['_id']!r} lacks {exc}") from exc
        return found

    async def _create_key(self, key: KeyRecord) -> None:
        doc: Doc = {
            "_id": f"{key.namespace}/{key.key_id}",
            "ns": key.namespace,
            "k": key.key_id,
            "role": key.role,
            "h": key.secret_hash,
            "ca": key.created_at,
        }
        if key.name is not None:
            doc["n"] = key.name
        for name, field in _KEY_FIELDS.items():
            if (value := getattr(key, name)) is not None:
                doc[field] = value
        try:
            await self._col("api_keys").insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            raise AlreadyExists(f"key {key.key_id} exists") from None

    async def _get_key(self, namespace: str, key_id: str) -> KeyRecord | None:
        doc = await self._col("api_keys").find_one({"_id": f"{namespace}/{key_id}"})
        return _key_from_doc(namespace, key_id, doc) if doc is not None else None

    async def _list_keys(self, namespace: str) -> list[KeyRecord]:
        cursor = self._col("api_keys").find({"ns": namespace}).sort("k", ASCENDING)
        keys = [_key_from_doc(namespace, doc["k"], doc) async for doc in cursor]
        return sorted(keys, key=lambda k: k.key_id)  # the server's string order may differ

    async def _update_key(
        self, namespace: str, key_id: str, changes: Mapping[str, int | None]
    ) -> bool:
        sets = {_KEY_FIELDS[n]: v for n, v in changes.items() if v is not None}
        unsets = {_KEY_FIELDS[n]: "" for n, v in changes.items() if v is None}
        update: Doc = {}
        if sets:
            update["$set"] = sets
        if unsets:
            update["$unset"] = unsets
        key = f"{namespace}/{key_id}"
        # FerretDB writes whole documents: a concurrent update of another field
        # would be lost without the lock.
        async with self._locked(f"key/{key}"):
            result = await self._col("api_keys").update_one({"_id": key}, update)
        return result.matched_count > 0

    # -- the audit log ---------------------------------------------------------

    async def _append_audit(self, entries: Sequence[AuditRecord]) -> None:
        docs = {
            f"{e.namespace}/{e.entry_id}": {
                "_id": f"{e.namespace}/{e.entry_id}",
                "ns": e.namespace,
                "i": e.entry_id,
                "at": e.at,
                "x": e.expires_at,
                "doc": dumps(audit_to_doc(e)),
            }
            for e in entries
        }
        # a retried batch finds its entries there: duplicates are ignored
        await self._insert_new("audit", list(docs.values()))

    async def _list_audit(self, namespace: str, query: AuditQuery) -> list[AuditRecord]:
        if query.limit < 1:
            return []
        where: Doc = {"ns": namespace}
        ids: Doc = {}
        if query.min_id is not None:
            ids["$gte"] = query.min_id
        if query.max_id is not None:
            ids["$lt"] = query.max_id
        if ids:
            where["i"] = ids
        if query.alive_at is not None:
            where["x"] = {"$gt": query.alive_at}
        cursor = self._col("audit").find(where).sort("i", DESCENDING).limit(query.limit)
        found = []
        async for doc in cursor:
            try:
                found.append(
                    audit_from_doc(namespace, doc["i"], doc["at"], doc["x"], loads(doc["doc"]))
                )
            except (KeyError, TypeError) as exc:
                raise CorruptData(f"audit entry {doc.get('_id')!r} is malformed: {exc!r}") from exc
        return found

    async def _purge_audit(self, now: int, limit: int) -> int:
        if limit < 1:
            return 0
        audit = self._col("audit")
        cursor = audit.find({"x": {"$lte": now}}, {"_id": 1}).sort("x", ASCENDING).limit(limit)
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return 0
        result = await audit.delete_many({"_id": {"$in": ids}, "x": {"$lte": now}})
        return int(result.deleted_count)

    # -- writing jobs ------------------------------------------------------------

    async def _stage(
        self, job: JobRecord, events: Sequence[EventRecord], deliveries: Sequence[DeliveryRecord]
    ) -> tuple[dict[str, Doc], int, list[str]]:
        """The pending entries of a write (key → entry), their bytes, and the
        blob parts written for its large chunks (before the commit)."""
        entries: dict[str, Doc] = {}
        parts: list[Doc] = []
        for event in events:
            blob = None
            if len(event.data) > INLINE_MAX:
                blob_id = uuid.uuid4().hex
                count = 0
                for start in range(0, len(event.data), BLOB_PART):
                    parts.append(
                        {
                            "_id": f"{blob_id}/{count}",
                            "ns": job.namespace,
                            "j": job.job_id,
                            "c": job.created_at,
                            "d": event.data[start : start + BLOB_PART],
                        }
                    )
                    count += 1
                blob = (blob_id, count)
            entries[f"e{event.seq}"] = _entry_of_event(event, blob)
        for n, delivery in enumerate(deliveries):
            entries[f"d{job.revision}_{n}"] = _delivery_doc(delivery, job.created_at)
        if parts:
            blobs = self._col("blobs")
            for part in parts:  # one at a time: each is up to 4 MiB
                await blobs.insert_one(part)
        size = sum(_entry_size(e) for e in entries.values())
        return entries, size, [p["_id"] for p in parts]

    async def _drop_parts(self, part_ids: list[str]) -> None:
        if part_ids:
            with contextlib.suppress(pymongo.errors.PyMongoError):
                await self._col("blobs").delete_many({"_id": {"$in": part_ids}})

    async def _copy(
        self,
        namespace: str,
        job_id: str,
        created_at: int,
        events: Iterable[Doc],
        deliveries: Iterable[Doc],
    ) -> None:
        """Copy committed pending entries to their collections; idempotent, and
        never overwrites (a delivery the drainer moved on stays as it is)."""
        steps = []
        event_docs = [_event_doc(namespace, job_id, created_at, e) for e in events]
        delivery_docs = list(deliveries)
        for docs, name in ((event_docs, "events"), (delivery_docs, "deliveries")):
            if docs:
                steps.append(self._insert_new(name, docs))
        if steps:
            await asyncio.gather(*steps)

    async def _insert_new(self, name: str, docs: list[Doc]) -> None:
        try:
            await self._col(name).insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            _ignore_duplicates(exc)

    async def _clear(self, key: str, created_at: int, revision: int) -> None:
        """Empty the pending map, if no write came after ``revision`` (whose
        writer copied everything the map can hold)."""
        async with self._locked(f"job/{key}"):
            await self._clear_locked(key, created_at, revision)

    async def _clear_locked(self, key: str, created_at: int, revision: int) -> None:
        await self._col("jobs").update_one(
            {"_id": key, "c": created_at, "r": revision},
            {"$set": {"p": {}, "pb": 0}, "$unset": {"ps": ""}},
        )

    async def _flush(self, doc: Mapping[str, Any], *, locked: bool = False) -> None:
        """Copy and clear what a job document holds pending (repair)."""
        events, deliveries = _pending(doc)
        if events or deliveries:
            await self._copy(doc["ns"], doc["j"], doc["c"], events, deliveries)
        if locked:
            await self._clear_locked(doc["_id"], doc["c"], doc["r"])
        else:
            await self._clear(doc["_id"], doc["c"], doc["r"])

    async def _create_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        key = _job_key(job.namespace, job.job_id)
        entries, size, parts = await self._stage(job, events, deliveries)
        doc: Doc = {
            "_id": key,
            "ns": job.namespace,
            "j": job.job_id,
            "c": job.created_at,
            "sh": shard_of(job.namespace),
            **_job_fields(job),
            "p": entries,
            "pb": size,
        }
        if entries:
            doc["ps"] = job.updated_at
        jobs = self._col("jobs")
        for attempt in (1, 2):
            try:
                await jobs.insert_one(doc)
                break
            except pymongo.errors.DuplicateKeyError:
                existing = await jobs.find_one({"_id": key}, {"c": 1, "gone": 1})
                if attempt == 1 and (existing is None or existing.get("gone")):
                    if existing is not None:  # a delete that did not finish
                        await self._finish_delete(key, job.namespace, job.job_id, existing["c"])
                    continue
                await self._drop_parts(parts)
                raise AlreadyExists(f"job {job.job_id} exists") from None
        await self._after_commit(job, list(entries.values()))

    async def _after_commit(self, job: JobRecord, entries: list[Doc]) -> None:
        """Copy a committed write's pending entries, then clear them in the
        background. The write is committed already: a failure here is left to
        the next writer or the repair sweep, never reported."""
        events = [e for e in entries if "s" in e]
        deliveries = [e for e in entries if "s" not in e]
        if not entries:
            return
        key = _job_key(job.namespace, job.job_id)
        try:
            await self._copy(job.namespace, job.job_id, job.created_at, events, deliveries)
        except Exception as exc:  # committed: the entries stay pending in the job
            logger.warning("mongodb: copying the entries of job %s failed: %r", key, exc)
            return
        self._in_background(lambda: self._clear(key, job.created_at, job.revision))

    async def _get_job(self, namespace: str, job_id: str) -> JobRecord | None:
        doc = await self._col("jobs").find_one(
            {"_id": _job_key(namespace, job_id)}, {"doc": 1, "gone": 1}
        )
        if doc is None or doc.get("gone"):
            return None
        return _job_from(doc)

    async def _update_job(
        self,
        job: JobRecord,
        events: Sequence[EventRecord],
        expected_revision: int,
        deliveries: Sequence[DeliveryRecord],
    ) -> None:
        key = _job_key(job.namespace, job.job_id)
        entries, size, parts = await self._stage(job, events, deliveries)
        update: Doc = {"$set": _job_fields(job)}
        where: Doc = {"_id": key, "r": expected_revision, "c": job.created_at}
        if entries:
            update["$set"].update({f"p.{k}": e for k, e in entries.items()})
            update["$inc"] = {"pb": size}
            update["$min"] = {"ps": job.updated_at}
            where["pb"] = {"$lte": PENDING_MAX}
        try:
            async with self._locked(f"job/{key}"):
                before = await self._compare_and_set(job, expected_revision, where, update)
        except BaseException:
            await self._drop_parts(parts)
            raise
        held_events, held_deliveries = _pending(before)
        await self._after_commit(job, [*held_events, *held_deliveries, *entries.values()])

    async def _compare_and_set(
        self, job: JobRecord, expected_revision: int, where: Doc, update: Doc
    ) -> Doc:
        """The job document before ``update``; the reason when it did not apply."""
        key = _job_key(job.namespace, job.job_id)
        jobs = self._col("jobs")
        for attempt in (1, 2):
            before = await jobs.find_one_and_update(
                where, update, return_document=ReturnDocument.BEFORE
            )
            if before is not None:
                return before
            current = await jobs.find_one(
                {"_id": key}, {"p": 1, "pb": 1, "r": 1, "c": 1, "ns": 1, "j": 1, "gone": 1}
            )
            if current is None or current.get("gone"):
                raise NotFound(f"job {job.job_id} does not exist")
            backlog = (
                current["r"] == expected_revision
                and current["c"] == job.created_at
                and current.get("pb", 0) > PENDING_MAX
            )
            if attempt == 2 or not backlog:
                raise RevisionConflict(
                    f"job {job.job_id} is at revision {current['r']}, not {expected_revision}"
                )
            # Earlier writers' copies failed: do them, then try again.
            await self._flush(current, locked=True)
        raise AssertionError("unreachable")

    async def _delete_job(self, namespace: str, job_id: str, expected_revision: int) -> None:
        key = _job_key(namespace, job_id)
        jobs = self._col("jobs")
        # The job becomes a tombstone (invisible, expired: the janitor finishes
        # a delete that stops half way), then its log goes, then the document.
        async with self._locked(f"job/{key}"):
            before = await jobs.find_one_and_update(
                {"_id": key, "r": expected_revision, "gone": {"$ne": True}},
                {
                    "$set": {"gone": True, "r": expected_revision + 1, "x": 0, "p": {}, "pb": 0},
                    "$unset": {"ps": ""},
                },
                return_document=ReturnDocument.BEFORE,
            )
        if before is None:
            current = await jobs.find_one({"_id": key}, {"r": 1, "gone": 1})
            if current is None or current.get("gone"):
                raise NotFound(f"job {job_id} does not exist")
            raise RevisionConflict(
                f"job {job_id} is at revision {current['r']}, not {expected_revision}"
            )
        _, held_deliveries = _pending(before)
        if held_deliveries:  # deliveries outlive the job, as in every store
            await self._copy(namespace, job_id, before["c"], (), held_deliveries)
        await self._finish_delete(key, namespace, job_id, before["c"])

    async def _finish_delete(self, key: str, namespace: str, job_id: str, created_at: int) -> None:
        owned = {"ns": namespace, "j": job_id, "c": created_at}
        await self._col("events").delete_many(owned)
        await self._col("blobs").delete_many(owned)
        await self._col("jobs").delete_one({"_id": key, "c": created_at, "gone": True})

    async def _expired_jobs(
        self, now: int, limit: int, shards: Collection[int] | None
    ) -> list[JobRecord]:
        where: Doc = {"x": {"$lte": now}}
        if shards is not None:
            where["sh"] = {"$in": sorted(shards)}
        cursor = (
            self._col("jobs")
            .find(where, {"doc": 1, "x": 1, "gone": 1})
            .sort([("x", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        found = []
        async for doc in cursor:
            job = _job_from(doc)
            if doc.get("gone"):  # a delete to finish: expired now
                job = job_from_doc({**job_to_doc(job), "expiresAt": doc["x"]})
            found.append(job)
        return found

    async def _purge_job(self, namespace: str, job_id: str, created_at: int, batch: int) -> bool:
        key = _job_key(namespace, job_id)
        jobs = self._col("jobs")
        doc = await jobs.find_one({"_id": key}, {"c": 1, "r": 1, "p": 1, "ns": 1, "j": 1})
        if doc is None or doc.get("c") != created_at:
            return True
        if doc.get("p"):
            await self._flush(doc)  # entries are purged from their collections only
        owned = {"ns": namespace, "j": job_id, "c": created_at}
        events = self._col("events")
        gone = [
            d
            async for d in events.find(owned, {"_id": 1, "bl": 1, "bn": 1})
            .sort("s", ASCENDING)
            .limit(batch)
        ]
        if gone:
            await self._drop_parts(
                [f"{d['bl']}/{n}" for d in gone if "bl" in d for n in range(d["bn"])]
            )
            await events.delete_many({"_id": {"$in": [d["_id"] for d in gone]}})
        budget = batch - len(gone)
        if budget <= 0:
            return False
        outbox = self._col("deliveries")
        rows = [
            d["_id"]
            async for d in outbox.find({"ns": namespace, "j": job_id, "jc": created_at}, {"_id": 1})
            .sort("ca", ASCENDING)
            .limit(budget)
        ]
        if rows:
            await outbox.delete_many({"_id": {"$in": rows}})
        if len(rows) >= budget:
            return False
        # Parts of writes that lost their compare-and-set and crashed before
        # removing them; then the job itself.
        await self._col("blobs").delete_many(owned)
        await jobs.delete_one({"_id": key, "c": created_at})
        return True

    # -- reading the log ------------------------------------------------------------

    async def _job_state(self, namespace: str, job_id: str) -> Doc | None:
        doc = await self._col("jobs").find_one(
            {"_id": _job_key(namespace, job_id)}, {"c": 1, "ls": 1, "vk": 1, "p": 1, "gone": 1}
        )
        if doc is None or doc.get("gone"):
            return None
        return doc

    async def _read_log(
        self,
        namespace: str,
        job_id: str,
        where: Doc,
        order: str,
        after: int,
        limit: int,
        wanted: Callable[[Mapping[str, Any]], bool],
        bound: Callable[[Doc], int],
    ) -> list[EventRecord]:
        """Up to ``limit`` committed entries matching ``where`` with ``order``
        (``s`` or ``i``) past ``after``, ascending.

        The job document (its ``createdAt``, how far the log goes, the entries
        still pending) and the first page of the collection are read at the
        same time. When the two do not make a contiguous run that is full or
        reaches the end of the log (a copy landed between the two reads, a
        purge is under way, a deleted job left entries), the collection is
        read again after the job: everything committed before the job was read
        is then either pending in it or copied already.
        """
        events = self._col("events")
        query = {"ns": namespace, "j": job_id, **where, order: {"$gt": after}}
        state, first = await asyncio.gather(
            self._job_state(namespace, job_id),
            events.find(query).sort(order, ASCENDING).limit(limit).to_list(),
        )
        if state is None:
            return []
        created_at, end = state["c"], bound(state)
        held = [e for e in _pending(state)[0] if wanted(e) and after < e[order] <= end]

        def merged(found: list[Doc]) -> list[Doc]:
            by_key = {e[order]: e for e in held}
            by_key.update((e[order], e) for e in found if e.get("c") == created_at)
            return [by_key[k] for k in sorted(by_key) if k <= end][:limit]

        entries = merged(first)
        keys = [e[order] for e in entries]
        complete = (
            all(e.get("c") == created_at for e in first)
            and keys == list(range(after + 1, after + 1 + len(keys)))
            and (len(keys) == limit or (keys[-1] if keys else after) >= end)
        )
        if not complete:
            again = {**query, "c": created_at, order: {"$gt": after, "$lte": end}}
            entries = merged(await events.find(again).sort(order, ASCENDING).limit(limit).to_list())
        return await self._records(entries)

    async def _records(self, entries: list[Doc]) -> list[EventRecord]:
        """Entries as records, the parts of large chunks fetched in one read."""
        wanted = [f"{e['bl']}/{n}" for e in entries if "bl" in e for n in range(e["bn"])]
        parts: dict[str, bytes] = {}
        if wanted:
            async for part in self._col("blobs").find({"_id": {"$in": wanted}}):
                parts[part["_id"]] = part["d"]
        records = []
        for e in entries:
            try:
                if "bl" in e:
                    data = b"".join(parts[f"{e['bl']}/{n}"] for n in range(e["bn"]))
                else:
                    data = e["d"]
                records.append(
                    EventRecord(
                        seq=e["s"],
                        kind=EventKind(e["k"]),
                        at=e["at"],
                        data=bytes(data),
                        version=e["v"],
                        index=e["i"],
                        format=e["f"],
                        codec=e["cd"],
                        digest=bytes(e["dg"]) if e.get("dg") is not None else None,
                        offset=e["o"],
                    )
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise CorruptData(f"stored log entry {e.get('s')!r} is malformed: {exc!r}") from exc
        return records

    async def _read_events(
        self, namespace: str, job_id: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        return await self._read_log(
            namespace,
            job_id,
            {},
            "s",
            max(after_seq, 0),
            limit,
            lambda e: True,
            lambda state: int(state.get("ls", 0)),
        )

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_index: int, limit: int
    ) -> list[EventRecord]:
        def chunks(state: Doc) -> int:
            counts = state.get("vk") or []
            return int(counts[version - 1]) - 1 if 1 <= version <= len(counts) else -1

        return await self._read_log(
            namespace,
            job_id,
            {"v": version},
            "i",
            max(after_index, -1),
            limit,
            lambda e: e.get("v") == version and e.get("i", -1) >= 0,
            chunks,
        )

    async def _find_chunk(
        self, namespace: str, job_id: str, version: int, index: int
    ) -> EventRecord | None:
        if index < 0:
            return None
        found = await self._read_chunks(namespace, job_id, version, index - 1, 1)
        return found[0] if found and found[0].index == index else None

    async def _list_jobs(self, namespace: str, query: JobQuery) -> list[JobRecord]:
        where: Doc = {"ns": namespace, "gone": {"$ne": True}}
        also: list[Doc] = []
        if query.tag is not None:
            where["t"] = query.tag
        if query.statuses is not None:
            where["st"] = {"$in": sorted(s.value for s in query.statuses)}
        created: Doc = {}
        if query.created_after is not None:
            created["$gt"] = query.created_after
        if query.created_before is not None:
            created["$lt"] = query.created_before
        if created:
            where["c"] = created
        if query.alive_at is not None:
            also.append({"$or": [{"x": None}, {"x": {"$gt": query.alive_at}}]})
        if query.after is not None:
            created_at, last_id = query.after
            op = "$lt" if query.descending else "$gt"
            also.append({"$or": [{"c": {op: created_at}}, {"c": created_at, "j": {op: last_id}}]})
        if also:
            where["$and"] = also
        direction = DESCENDING if query.descending else ASCENDING
        cursor = (
            self._col("jobs")
            .find(where, {"doc": 1})
            .sort([("c", direction), ("j", direction)])
            .limit(query.limit)
        )
        return [_job_from(doc) async for doc in cursor]

    # -- the webhook outbox ---------------------------------------------------

    async def _get_delivery(self, namespace: str, delivery_id: str) -> DeliveryRecord | None:
        doc = await self._col("deliveries").find_one({"_id": f"{namespace}/{delivery_id}"})
        return _delivery_from_doc(doc) if doc is not None else None

    async def _list_deliveries(self, namespace: str, query: DeliveryQuery) -> list[DeliveryRecord]:
        where: Doc = {"ns": namespace}
        if query.job_id is not None:
            where["j"] = query.job_id
        if query.state is not None:
            where["st"] = query.state.value
        if query.created_since is not None:
            where["ca"] = {"$gte": query.created_since}
        if query.after is not None:
            created_at, last_id = query.after
            where["$or"] = [{"ca": {"$lt": created_at}}, {"ca": created_at, "id": {"$lt": last_id}}]
        cursor = (
            self._col("deliveries")
            .find(where)
            .sort([("ca", DESCENDING), ("id", DESCENDING)])
            .limit(query.limit)
        )
        return [_delivery_from_doc(doc) async for doc in cursor]

    def _due(self, now: int, shards: Collection[int] | None) -> Doc:
        where: Doc = {
            "st": "pending",
            "n": {"$lte": now},
            "$or": [{"lu": None}, {"lu": {"$lte": now}}],
        }
        if shards is not None:
            where["sh"] = {"$in": sorted(shards)}
        return where

    async def _claim_deliveries(
        self,
        now: int,
        limit: int,
        owner: str,
        lease_until: int,
        shards: Collection[int] | None,
    ) -> list[DeliveryRecord]:
        await self._repair(now, shards)
        outbox = self._col("deliveries")
        claimed: list[DeliveryRecord] = []
        tried: set[str] = set()
        # Find candidates, then lease them with one update that re-checks each
        # row (atomic per document) and marks the rows it took with a token of
        # this claim; rows another claimer took in between are skipped.
        while len(claimed) < limit:
            want = limit - len(claimed)
            where = self._due(now, shards)
            if tried:
                where["_id"] = {"$nin": sorted(tried)}
            candidates = [
                d["_id"]
                async for d in outbox.find(where, {"_id": 1})
                .sort([("n", ASCENDING), ("_id", ASCENDING)])
                .limit(want)
            ]
            if not candidates:
                break
            tried.update(candidates)
            token = uuid.uuid4().hex
            lease = {"$set": {"lo": owner, "lu": lease_until, "lt": token}}
            if self.guarded:
                await asyncio.gather(*(self._claim_one(c, now, shards, lease) for c in candidates))
                modified = 1
            else:
                taken = await outbox.update_many(
                    {**self._due(now, shards), "_id": {"$in": candidates}}, lease
                )
                modified = taken.modified_count
            if modified:
                rows = outbox.find({"lt": token, "_id": {"$in": candidates}})
                claimed.extend([_delivery_from_doc(d) async for d in rows])
            if len(candidates) < want:
                break
        claimed.sort(key=lambda d: (d.next_attempt_at, d.namespace, d.delivery_id))
        return claimed

    async def _claim_one(
        self, delivery: str, now: int, shards: Collection[int] | None, lease: Doc
    ) -> None:
        """Guard mode: lease one row under its lock; a row locked by another
        claimer is left to it."""
        async with self._locked(f"delivery/{delivery}", wait=False) as held:
            if held:
                await self._col("deliveries").update_one(
                    {**self._due(now, shards), "_id": delivery}, lease
                )

    async def _repair(self, now: int, shards: Collection[int] | None) -> None:
        """Copy the pending entries writers left behind (a crash between commit
        and copy), at most every few seconds: their deliveries become claimable."""
        clock = time.monotonic()
        if clock < self._next_repair:
            return
        self._next_repair = clock + REPAIR_INTERVAL
        where: Doc = {"ps": {"$lte": now - REPAIR_AGE}}
        if shards is not None:
            where["sh"] = {"$in": sorted(shards)}
        cursor = (
            self._col("jobs")
            .find(where, {"ns": 1, "j": 1, "c": 1, "r": 1, "p": 1})
            .sort("ps", ASCENDING)
            .limit(32)
        )
        async for doc in cursor:
            await self._flush(doc)

    async def _finish_deliveries(
        self, deliveries: Sequence[DeliveryRecord], owner: str
    ) -> list[bool]:
        outbox = self._col("deliveries")
        token = uuid.uuid4().hex
        ids = [f"{d.namespace}/{d.delivery_id}" for d in deliveries]
        changes = [
            {
                "$set": {
                    "st": d.state.value,
                    "a": d.attempts,
                    "n": d.next_attempt_at,
                    "ua": d.updated_at,
                    "doc": dumps(delivery_to_doc(d)),
                    "lo": None,
                    "lu": None,
                    "lt": token,
                }
            }
            for d in deliveries
        ]
        if self.guarded:

            async def finish(delivery: str, change: Doc) -> None:
                async with self._locked(f"delivery/{delivery}"):
                    await outbox.update_one({"_id": delivery, "lo": owner}, change)

            await asyncio.gather(*(finish(i, c) for i, c in zip(ids, changes, strict=True)))
        else:
            await outbox.bulk_write(
                [
                    pymongo.UpdateOne({"_id": i, "lo": owner}, c)
                    for i, c in zip(ids, changes, strict=True)
                ],
                ordered=False,
            )
        done = {d["_id"] async for d in outbox.find({"_id": {"$in": ids}, "lt": token}, {"_id": 1})}
        return [i in done for i in ids]

    async def _requeue_deliveries(
        self, namespace: str, delivery_ids: Sequence[str], now: int
    ) -> int:
        outbox = self._col("deliveries")
        ids = [f"{namespace}/{i}" for i in delivery_ids]
        free: Doc = {"$or": [{"lu": None}, {"lu": {"$lte": now}}]}
        change = {"$set": {"st": "pending", "a": 0, "n": now, "ua": now, "lo": None, "lu": None}}
        if self.guarded:

            async def requeue(delivery: str) -> int:
                async with self._locked(f"delivery/{delivery}"):
                    done = await outbox.update_one({**free, "_id": delivery}, change)
                    return done.matched_count

            return sum(await asyncio.gather(*(requeue(i) for i in ids)))
        result = await outbox.update_many({**free, "_id": {"$in": ids}}, change)
        return result.matched_count

    async def _outbox_stats(self, now: int, shards: Collection[int] | None) -> OutboxStats:
        where: Doc = {"st": "pending"}
        if shards is not None:
            where["sh"] = {"$in": sorted(shards)}
        outbox = self._col("deliveries")
        # Two reads at once rather than one $group: FerretDB has no $min accumulator.
        count, oldest = await asyncio.gather(
            outbox.count_documents(where),
            outbox.find_one(where, {"n": 1}, sort=[("n", ASCENDING)]),
        )
        return OutboxStats(count, oldest["n"] if oldest is not None else None)

    async def _put_endpoint(self, endpoint: EndpointRecord) -> None:
        await self._col("webhook_endpoints").update_one(
            {"_id": f"{endpoint.namespace}/{endpoint.url}"},
            {
                "$set": {
                    "ns": endpoint.namespace,
                    "url": endpoint.url,
                    "da": endpoint.disabled_at,
                    "re": endpoint.reason,
                }
            },
            upsert=True,
        )

    async def _get_endpoint(self, namespace: str, url: str) -> EndpointRecord | None:
        doc = await self._col("webhook_endpoints").find_one({"_id": f"{namespace}/{url}"})
        return EndpointRecord(namespace, url, doc.get("da"), doc.get("re")) if doc else None

    async def _list_endpoints(self, namespace: str) -> list[EndpointRecord]:
        cursor = self._col("webhook_endpoints").find({"ns": namespace}).sort("url", ASCENDING)
        return [EndpointRecord(namespace, d["url"], d.get("da"), d.get("re")) async for d in cursor]
