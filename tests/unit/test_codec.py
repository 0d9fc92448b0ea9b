"""Chunk encoding: zstd when it pays, digests checked on every read."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import pytest
import zstandard

from service.codec import ZSTD, Codec, raw_frame
from service.lifecycle import Chunk, zstd_frame_size
from storage_adapters import CorruptData, EventKind, EventRecord

TEXT = b"".join(b"line %d of a build log, with some repetition\n" % i for i in range(20_000))


def stored(codec: Codec, data: bytes, index: int = 0) -> EventRecord:
    chunk = codec.encode(data)
    return EventRecord(
        seq=index + 2,
        kind=EventKind.CHUNK,
        at=0,
        data=chunk.data,
        version=1,
        index=index,
        format="text",
        codec=chunk.codec,
        digest=chunk.digest,
    )


@pytest.fixture
def codec() -> Codec:
    return Codec(max_chunk=4 * 1024 * 1024)


def test_compressible_chunks_are_stored_as_zstd_and_read_back(codec: Codec) -> None:
    chunk = codec.encode(TEXT)
    assert chunk.codec == ZSTD
    assert len(chunk.data) < len(TEXT) // 5
    assert chunk.size == len(TEXT)
    assert chunk.digest == hashlib.sha256(TEXT).digest()
    assert codec.decode(stored(codec, TEXT)) == TEXT
    assert codec.size_of(stored(codec, TEXT)) == len(TEXT)


def test_small_or_incompressible_chunks_are_stored_as_they_came(codec: Codec) -> None:
    tiny = b"a" * 100
    noise = os.urandom(256 * 1024)
    for data in (tiny, noise):
        chunk = codec.encode(data)
        assert (chunk.codec, chunk.data) == ("", data)
        assert codec.decode(stored(codec, data)) == data
        assert codec.size_of(stored(codec, data)) == len(data)


def test_compression_can_be_turned_off() -> None:
    codec = Codec(compression=False, max_chunk=1 << 20)
    assert codec.encode(TEXT).codec == ""


async def test_decoding_updates_a_running_digest(codec: Codec) -> None:
    sha = hashlib.sha256()
    for index, part in enumerate((TEXT, b"tail", os.urandom(70_000))):
        await codec.decode_async(stored(codec, part, index), sha)
    assert sha.digest() != hashlib.sha256(TEXT).digest()
    whole = hashlib.sha256()
    for part in (TEXT, b"tail"):
        whole.update(part)
    assert sha.copy().digest() != whole.digest()  # the noise is in it too


@pytest.mark.parametrize("data", [TEXT, os.urandom(2048)], ids=["zstd", "as-is"])
def test_a_damaged_chunk_is_an_error(codec: Codec, data: bytes) -> None:
    event = stored(codec, data)
    damaged = bytearray(event.data)
    damaged[len(damaged) // 2] ^= 0x01
    with pytest.raises(CorruptData, match="chunk 0 of version 1"):
        codec.decode(dataclasses.replace(event, data=bytes(damaged)))


def test_a_digest_that_does_not_match_is_an_error(codec: Codec) -> None:
    event = dataclasses.replace(stored(codec, TEXT), digest=hashlib.sha256(b"other").digest())
    with pytest.raises(CorruptData, match="SHA-256"):
        codec.decode(event)


def test_unknown_codecs_and_impossible_frames_are_errors(codec: Codec) -> None:
    event = stored(codec, TEXT)
    with pytest.raises(CorruptData, match="unknown codec"):
        codec.decode(dataclasses.replace(event, codec="brotli"))
    with pytest.raises(CorruptData, match="not a zstd frame"):
        codec.decode(dataclasses.replace(event, data=b"not zstd at all"))
    small = Codec(max_chunk=1024)
    with pytest.raises(CorruptData, match="impossible size"):
        small.decode(event)  # a frame claiming more than any chunk holds is not inflated


def test_stored_frames_back_to_back_are_one_zstd_stream(codec: Codec) -> None:
    """What a client that accepts zstd receives: the stored frames concatenated."""
    parts = [TEXT, TEXT[:5000], b"x" * 4096]
    frames = b"".join(codec.encode(p).data for p in parts)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == b"".join(parts)


def test_plain_gives_the_bytes_as_appended(codec: Codec) -> None:
    event = stored(codec, TEXT)
    plain = codec.plain(event)
    assert (plain.data, plain.codec, plain.digest) == (TEXT, "", None)
    status = EventRecord(seq=1, kind=EventKind.STATUS, at=0, data=b"{}")
    assert codec.plain(status) is status


@pytest.mark.parametrize("size", [0, 1, 512, 128 * 1024, 128 * 1024 + 1, 1 << 20, 3_000_001])
def test_raw_frames_are_zstd_frames_of_the_bytes(size: int) -> None:
    data = os.urandom(size)
    frame = raw_frame(data)
    assert zstandard.frame_content_size(frame) == size
    assert zstandard.ZstdDecompressor().decompress(frame) == data
    assert len(frame) == zstd_frame_size(Chunk.stored_as_is(data))


def test_a_mixed_version_is_one_zstd_stream(codec: Codec) -> None:
    parts = [TEXT, os.urandom(200_000), b"tiny", TEXT[:9000]]
    chunks = [codec.encode(p) for p in parts]
    assert [c.codec for c in chunks] == ["zstd", "", "", "zstd"]
    stream = b"".join(
        c.data if c.codec else raw_frame(p) for c, p in zip(chunks, parts, strict=True)
    )
    assert len(stream) == sum(zstd_frame_size(c) for c in chunks)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream), read_across_frames=True)
    assert reader.read() == b"".join(parts)
