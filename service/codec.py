"""How chunks are stored: compressed with zstd when it pays, and checked on read.

Each chunk is compressed on its own (one zstd frame, with its content size and
checksum), so any chunk can be read alone: a range request starts in the
middle, an SSE replay sends chunks one by one, and a client that accepts
``zstd`` gets the stored frames back to back, which is itself a valid zstd
stream. A chunk is stored as it came when it is small, or when compressing
saved too little to be worth the work of decompressing it on every read.

Every chunk records the SHA-256 of its bytes as appended. Reading a chunk
decodes it and checks that digest; a mismatch raises :class:`CorruptData`,
so damaged output is an error, never bytes served as if they were right.
Chunks of 64 KiB and more are encoded and decoded on worker threads (zstd and
hashlib release the GIL), so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import TYPE_CHECKING

import zstandard

from storage_adapters import CorruptData, EventRecord

from .lifecycle import RAW_BLOCK, Chunk

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

__all__ = ["ZSTD", "Codec", "raw_frame"]

ZSTD = "zstd"

#: below this a chunk is stored as it came (a frame costs ~20 bytes of its own)
_MIN_COMPRESS = 512
#: chunks this big are encoded and decoded off the event loop
_OFF_LOOP = 64 * 1024


class Codec:
    """Encodes chunks for the store and decodes them back, checked."""

    def __init__(self, *, compression: bool = True, level: int = 3, max_chunk: int) -> None:
        """``max_chunk``: the largest chunk the service stores; a frame that
        claims to hold more is corrupt, and is not decompressed."""
        self.compression = compression
        self.level = level
        self.max_chunk = max_chunk
        self._local = threading.local()

    # zstd contexts are not thread-safe; each thread keeps its own.
    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self.level, write_checksum=True, write_content_size=True
            )
            self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def encode(self, data: bytes, sha: Hash | None = None) -> Chunk:
        """The chunk to store for ``data``; ``sha``, a running digest, is updated."""
        digest = hashlib.sha256(data).digest()
        if sha is not None:
            sha.update(data)
        if self.compression and len(data) >= _MIN_COMPRESS:
            packed = self._compressor().compress(data)
            # Keep it compressed only if that saves at least 1/32 of it.
            if len(packed) <= len(data) - len(data) // 32:
                return Chunk(packed, len(data), digest, ZSTD)
        return Chunk(data, len(data), digest)

    async def encode_async(self, data: bytes, sha: Hash | None = None) -> Chunk:
        if len(data) < _OFF_LOOP:
            return self.encode(data, sha)
        return await asyncio.to_thread(self.encode, data, sha)

    def decode(self, event: EventRecord, sha: Hash | None = None, check: bool = True) -> bytes:
        """The bytes of a chunk as appended; :class:`CorruptData` if they are
        not what was stored. ``sha``, a running digest, is updated with them.

        ``check=False`` skips the chunk's own SHA-256, for a caller that checks
        a digest over the whole version instead (zstd still checks its frame).
        """
        data = event.data
        if event.codec == ZSTD:
            data = self._unpack(event, data)
        elif event.codec:
            raise CorruptData(f"{_where(event)} is stored with an unknown codec {event.codec!r}")
        if check and event.digest is not None and hashlib.sha256(data).digest() != event.digest:
            raise CorruptData(f"{_where(event)} does not match its SHA-256")
        if sha is not None:
            sha.update(data)
        return data

    async def decode_async(
        self, event: EventRecord, sha: Hash | None = None, check: bool = True
    ) -> bytes:
        if len(event.data) < _OFF_LOOP:
            return self.decode(event, sha, check)
        return await asyncio.to_thread(self.decode, event, sha, check)

    def size_of(self, event: EventRecord) -> int:
        """The size of a chunk as appended, without decoding it."""
        if event.codec == ZSTD:
            try:
                return int(zstandard.frame_content_size(event.data))
            except zstandard.ZstdError as exc:
                raise CorruptData(f"{_where(event)} is not a zstd frame: {exc}") from exc
        return len(event.data)

    async def plain_async(self, event: EventRecord) -> EventRecord:
        if len(event.data) < _OFF_LOOP:
            return self.plain(event)
        return await asyncio.to_thread(self.plain, event)

    def plain(self, event: EventRecord) -> EventRecord:
        """A chunk event with its bytes as appended (other events as they are)."""
        if event.digest is None and not event.codec:
            return event
        return EventRecord(
            seq=event.seq,
            kind=event.kind,
            at=event.at,
            data=self.decode(event),
            version=event.version,
            index=event.index,
            format=event.format,
            offset=event.offset,
        )

    def _unpack(self, event: EventRecord, data: bytes) -> bytes:
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise CorruptData(f"{_where(event)} is not a zstd frame: {exc}") from exc
        if not 0 <= size <= self.max_chunk:
            raise CorruptData(f"{_where(event)} claims an impossible size ({size} bytes)")
        try:
            return self._decompressor().decompress(data)
        except zstandard.ZstdError as exc:
            raise CorruptData(f"{_where(event)} does not decompress: {exc}") from exc


def raw_frame(data: bytes) -> bytes:
    """``data`` as a zstd frame of raw (uncompressed) blocks: how a chunk stored
    as it came joins the stored frames of a zstd response, for the cost of a copy.

    The header: magic number, a descriptor (single segment, 4-byte content
    size, no checksum — the chunk's SHA-256 is checked before it is sent), the
    content size; then blocks of at most 128 KiB, each with a 3-byte header
    (last-block bit, type 0 = raw, size).
    """
    parts = [_ZSTD_MAGIC, b"\xa0", len(data).to_bytes(4, "little")]
    if not data:
        parts.append(b"\x01\x00\x00")  # one empty last block
    for start in range(0, len(data), RAW_BLOCK):
        block = data[start : start + RAW_BLOCK]
        last = start + RAW_BLOCK >= len(data)
        parts.append(((len(block) << 3) | last).to_bytes(3, "little"))
        parts.append(block)
    return b"".join(parts)


_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")


def _where(event: EventRecord) -> str:
    return f"chunk {event.index} of version {event.version} (seq {event.seq})"
