"""Throughput of encryption at rest: sealing and opening output chunks.

    python -m loadtests.bench_crypto --seconds 1

For chunk sizes from 64 KiB to 1 MiB it times :func:`service.crypto.seal_chunk`
and :func:`service.crypto.open_chunk` (AES-256-GCM with the chunk's associated
data, as the service stores and reads chunks) on random bytes, one thread,
and, for comparison, the codec every chunk already goes through: encoding
(SHA-256 and zstd level 3) and decoding (zstd) of text of the same size.
Prints one JSON line per result: ``{"system", "scenario", "metric", "value",
"unit"}``, throughput in MiB/s of plaintext.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

from service.codec import Codec
from service.crypto import DataKeys, MasterKeys, open_chunk, parse_master_keys, seal_chunk
from storage_adapters import EventKind, EventRecord

from .harness import emit

SIZES = (64 * 1024, 256 * 1024, 1024 * 1024)
MIB = 1024 * 1024


def rate(size: int, seconds: float, call: Callable[[], object]) -> float:
    """MiB/s of ``size``-byte calls of ``call`` over about ``seconds``."""
    call()  # warm up
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(8):
            call()
        done += 8
    return done * size / elapsed / MIB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    keys = DataKeys(MasterKeys(parse_master_keys("bench:" + "A" * 43 + "=")))
    key = keys.current("bench")
    codec = Codec(max_chunk=max(SIZES))
    line = b"0000042 a line of job output, with some numbers 3.14159 and words\n"
    for size in SIZES:
        chunk = EventRecord(1, EventKind.CHUNK, 0, os.urandom(size), 1, 0, "binary")
        sealed = seal_chunk(key, "bench", "job", chunk)
        scenario = f"chunk-{size // 1024}KiB"
        seal = rate(size, args.seconds, partial(seal_chunk, key, "bench", "job", chunk))
        emit("aes-256-gcm", scenario, "seal", round(seal), "MiB/s")
        opened = rate(size, args.seconds, partial(open_chunk, key, "bench", "job", sealed))
        emit("aes-256-gcm", scenario, "open", round(opened), "MiB/s")
        both = 1 / (1 / seal + 1 / opened)
        emit("aes-256-gcm", scenario, "seal+open", round(both), "MiB/s")

        text = (line * (size // len(line) + 1))[:size]
        encoded = codec.encode(text)
        stored = EventRecord(1, EventKind.CHUNK, 0, encoded.data, 1, 0, "text", encoded.codec)
        encode = rate(size, args.seconds, partial(codec.encode, text))
        emit("codec", scenario, "encode", round(encode), "MiB/s")
        decode = rate(size, args.seconds, partial(codec.decode, stored))
        emit("codec", scenario, "decode", round(decode), "MiB/s")


if __name__ == "__main__":
    main()
