"""Reading output versions from the store with bounded memory.

A version is read in batches of chunks, as many at a time as fit in
``batch_bytes`` given the version's largest stored chunk, so a 10 GB output
costs a node one batch of memory whatever its chunk sizes. Chunks come back
in order and are checked to follow on from each other (index and byte
offset): a missing chunk is an error, never a silently shorter output.
Encrypted chunks are decrypted as they are read (:meth:`OutputReader.open`),
so everything above sees chunks as encoded: zstd frames or bytes as they came.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from storage_adapters import CorruptData, EventRecord, JobRecord, StorageAdapter, VersionRecord

from .codec import Codec
from .crypto import EncryptionKeyMissing, KeySource, inner_codec, open_chunk

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

__all__ = ["OutputReader"]

#: batches never hold more chunks than this, however small they are
_MAX_BATCH = 256


class OutputReader:
    def __init__(
        self,
        store: StorageAdapter,
        codec: Codec,
        *,
        batch_bytes: int,
        max_chunk: int,
        keys: KeySource | None = None,
    ) -> None:
        """``max_chunk``: the size to assume for a version that does not record
        its largest chunk; ``keys``: where the data keys of encrypted chunks are."""
        self.store = store
        self.codec = codec
        self.batch_bytes = batch_bytes
        self.max_chunk = max_chunk
        self.keys = keys

    def batch_limit(self, largest: int) -> int:
        """How many entries of at most ``largest`` bytes make one batch."""
        largest = largest or self.max_chunk
        return max(1, min(_MAX_BATCH, self.batch_bytes // max(largest, 1)))

    async def chunks(
        self, job: JobRecord, version: VersionRecord, first: int = 0
    ) -> AsyncIterator[EventRecord]:
        """The stored chunks of ``version`` from index ``first`` on, as far as
        ``job`` (the row read before) counts them.

        The next batch is read while this one is consumed, so the store's
        latency overlaps the sending; each batch is half the read budget.
        """
        limit = max(1, self.batch_limit(version.max_chunk) // 2)

        def fetch(start: int) -> asyncio.Task[list[EventRecord]] | None:
            if start >= version.chunks:
                return None
            count = min(limit, version.chunks - start)
            return asyncio.ensure_future(
                self.store.read_chunks(job.namespace, job.job_id, version.number, start - 1, count)
            )

        expected = first
        upcoming = fetch(first)
        try:
            while upcoming is not None:
                batch = await upcoming
                upcoming = None
                if batch and batch[-1].index == expected + len(batch) - 1:
                    upcoming = fetch(expected + len(batch))
                for chunk in batch:
                    if chunk.index != expected:
                        break
                    expected += 1
                    yield await self.open(job, chunk)
                if expected < version.chunks and upcoming is None:
                    raise CorruptData(
                        f"chunk {expected} of version {version.number} of job "
                        f"{job.job_id!r} is missing from the store"
                    )
        finally:
            if upcoming is not None:
                upcoming.cancel()

    async def data(
        self,
        job: JobRecord,
        version: VersionRecord,
        first: int = 0,
        sha: Hash | None = None,
        check: bool = True,
    ) -> AsyncIterator[bytes]:
        """The bytes of ``version`` from chunk ``first`` on, decoded and checked;
        ``sha``, a running digest, is updated with them (``check=False``: the
        caller checks that digest instead of each chunk's)."""
        offset = 0 if first == 0 else None
        async for chunk in self.chunks(job, version, first):
            data = await self.codec.decode_async(chunk, sha, check)
            if offset is not None and chunk.offset != offset:
                raise CorruptData(
                    f"chunk {chunk.index} of version {version.number} starts at byte "
                    f"{chunk.offset}, not {offset}"
                )
            offset = chunk.offset + len(data)
            yield data
        if first == 0 and offset != version.size:
            raise CorruptData(
                f"version {version.number} holds {offset} bytes, not the {version.size} recorded"
            )

    async def digest(self, job: JobRecord, version: VersionRecord) -> str:
        """The hex SHA-256 of the whole version, read from the store."""
        sha = hashlib.sha256()
        async for _ in self.data(job, version, sha=sha):
            pass
        return sha.hexdigest()

    async def locate(self, job: JobRecord, version: VersionRecord, offset: int) -> EventRecord:
        """The chunk that holds byte ``offset`` of the version (``0 <= offset < size``).

        Chunks know where they start, so this is a search by index that first
        guesses from the average chunk size: for evenly cut output (a ``PUT``)
        the first guess is right.
        """
        if not 0 <= offset < version.size:
            raise ValueError(f"offset {offset} is outside the version")
        low, high = 0, version.chunks - 1
        guess = min(high, offset * version.chunks // version.size)
        while low <= high:
            chunk = await self.store.find_chunk(job.namespace, job.job_id, version.number, guess)
            if chunk is None:
                raise CorruptData(f"chunk {guess} of version {version.number} is missing")
            chunk = await self.open(job, chunk)
            if offset < chunk.offset:
                high = guess - 1
            elif offset >= chunk.offset + self.codec.size_of(chunk):
                low = guess + 1
            else:
                return chunk
            guess = (low + high) // 2
        raise CorruptData(f"no chunk of version {version.number} holds byte {offset}")

    async def open(self, job: JobRecord, event: EventRecord) -> EventRecord:
        """``event`` with its bytes decrypted if it is an encrypted chunk (else
        as it is), with the data key its version records."""
        if inner_codec(event.codec) is None:
            return event
        version = (await self.refreshed(job, event)).version(event.version)
        key_id = version.key_id if version is not None else None
        if key_id is None:
            raise CorruptData(
                f"chunk {event.index} of version {event.version} of job {job.job_id!r} is "
                "encrypted, but its version names no data key"
            )
        if self.keys is None:
            raise EncryptionKeyMissing(
                f"chunk {event.index} of version {event.version} of job {job.job_id!r} is "
                "encrypted, and encryption is not configured here"
            )
        key = await self.keys.data_key(job.namespace, key_id)
        return open_chunk(key, job.namespace, job.job_id, event)

    async def refreshed(self, job: JobRecord, event: EventRecord) -> JobRecord:
        """``job``, or the row read again if ``event`` is an encrypted chunk of a
        version whose data key ``job`` (read before the chunk was) does not know."""
        if inner_codec(event.codec) is None:
            return job
        version = job.version(event.version)
        if version is not None and version.key_id is not None:
            return job
        return await self.store.get_job(job.namespace, job.job_id) or job
