"""HTTP handlers for job output: appending, uploading, versions, and reading.

* ``POST …/output`` appends one chunk; ``PUT …/output`` streams a whole
  version of any size into chunks (see :class:`_Upload`).
* ``GET …/output`` returns a version as JSON (up to a size limit);
  ``GET …/output/raw`` streams its bytes with ``Content-Length``, ``ETag``,
  ``Range``, ``If-Range``, ``If-None-Match``, ``Repr-Digest``, and the stored
  zstd frames as they are to a client that accepts ``zstd``.
* ``GET …/versions`` lists the versions with their sizes and digests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from storage_adapters import CorruptData, JobRecord, OutputFormat, VersionRecord

from . import validation
from .api import AppState, JSONResponse, job_call, job_location, namespace_config
from .auth import Action
from .clock import render_timestamp
from .codec import ZSTD, raw_frame
from .jobs import JobService
from .lifecycle import Chunk, InvalidChange
from .logs import log_event
from .problems import Problem
from .views import etag_matches, output_etag, version_view

__all__ = [
    "accepts_zstd",
    "append_output",
    "get_output",
    "get_raw_output",
    "list_versions",
    "put_output",
    "requested_range",
    "start_version",
]

logger = logging.getLogger("aos.output")

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)


# -- writing ------------------------------------------------------------------------


async def append_output(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.WRITE)
    fmt, content_type = validation.chunk_format(request.headers.get("content-type"))
    index = validation.parse_chunk_index(request.headers.get("x-chunk-index"))
    data = await validation.read_body(request, state.settings.max_chunk_bytes)
    validation.check_chunk(data, fmt)
    config = await namespace_config(state, namespace)
    account = await state.limits.reserve_bytes(config, namespace, len(data))
    try:
        result = await state.jobs.append(
            namespace,
            job_id,
            data,
            fmt,
            content_type,
            index,
            max_size=state.limits.max_output(config, state.settings.max_version_bytes),
        )
    except BaseException:
        account(False)
        raise
    account(result.created)  # not created: a retried index, stored before
    chunk = result.event
    return JSONResponse(
        {"seq": chunk.seq, "version": chunk.version, "index": chunk.index, "size": len(data)},
        status_code=201 if result.created else 200,
    )


async def start_version(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.WRITE)
    job = await state.jobs.start_version(namespace, job_id)
    return JSONResponse({"version": job.current_version, "seq": job.last_seq}, status_code=201)


async def put_output(request: Request) -> Response:
    """Stream the body into the current version, which it completes.

    Without ``X-Chunk-Index`` the version must be empty. After a dropped
    upload, ``X-Chunk-Index: n`` with the body from byte ``size`` on (both
    from ``GET …/versions``, or from the ``409`` a plain retry gets) carries
    on after the ``n`` chunks that were stored.
    """
    state, namespace, job_id = await job_call(request, Action.WRITE)
    fmt, content_type = validation.chunk_format(request.headers.get("content-type"))
    resume = validation.parse_chunk_index(request.headers.get("x-chunk-index"))
    config = await namespace_config(state, namespace)
    limit = state.limits.max_output(config, state.settings.max_version_bytes)
    declared = request.headers.get("content-length")
    if declared is not None and validation.is_count(declared) and int(declared) > limit:
        raise Problem(
            "version-too-large",
            f"the body is {declared} bytes; a version holds at most {limit} bytes",
        )
    if state.limits.needs_length(config) and (
        declared is None or not validation.is_count(declared)
    ):
        raise Problem(
            "length-required", f"namespace {namespace!r} has a storage quota: send Content-Length"
        )
    job = await state.jobs.get(namespace, job_id)
    if job.terminal:
        raise InvalidChange(f"the job is {job.status.value}, which is final", "job-terminal")
    version = job.versions[job.current_version - 1]
    first = resume or 0
    if version.completed_at is not None or first != version.chunks:
        where = job_location(namespace, job_id)
        if version.completed_at is not None:
            detail = (
                f"version {version.number} is complete; start a new one with POST {where}/versions"
            )
        elif resume is None:
            detail = (
                f"version {version.number} already holds {version.chunks} chunks "
                f"({version.size} bytes): to resume an upload, send X-Chunk-Index: "
                f"{version.chunks} with the body from byte {version.size}; to replace the "
                f"output, start a new version with POST {where}/versions"
            )
        else:
            detail = (
                f"version {version.number} holds {version.chunks} chunks ({version.size} "
                f"bytes), so an upload resumes at X-Chunk-Index: {version.chunks} from byte "
                f"{version.size}, not at chunk {resume}"
            )
        raise Problem(
            "version-complete" if version.completed_at is not None else "chunk-index-conflict",
            detail,
            extra={
                "version": version.number,
                "nextChunkIndex": version.chunks,
                "size": version.size,
            },
        )
    # reserved once the request is known to be good, settled however it ends
    size = int(declared) if declared is not None and validation.is_count(declared) else 0
    account = await state.limits.reserve_bytes(config, namespace, size)
    upload = _Upload(state, job, version, fmt, content_type, limit)
    try:
        if first:
            await upload.hash_stored()
        async for piece in request.stream():
            await upload.feed(piece)
        await upload.finish()
    except ClientDisconnect:
        # What was stored stays stored; the producer resumes after it.
        await upload.settle()
        log_event(
            logger,
            "upload.interrupted",
            namespace=namespace,
            jobId=job_id,
            version=version.number,
            storedChunks=upload.next_index,
        )
        account(False)  # the next count of the namespace counts what was stored
        return Response(status_code=400)
    except BaseException:
        account(False)
        raise
    finally:
        await upload.settle()
    account(True)
    job = await state.jobs.get(namespace, job_id)
    stored = job.version(version.number)
    assert stored is not None
    return JSONResponse(
        version_view(stored, job.current_version),
        status_code=200 if first else 201,
        headers={
            "Location": f"{job_location(namespace, job_id)}/output/raw?version={stored.number}"
        },
    )


class _Upload:
    """One ``PUT`` body on its way into chunks.

    Whole chunks are cut as the body arrives and go through two stages: encoding
    (compression and digests, on a worker thread, in order, since the version's
    running SHA-256 takes them in order) and writing (one at a time, each with
    its index, so another writer interleaving is refused rather than mixed in).
    While chunk *n* is written, chunk *n + 1* is encoded and chunk *n + 2*
    arrives: about three chunks in memory, whatever the size of the body. Text
    is cut on UTF-8 character boundaries, so every chunk is valid text alone.
    """

    def __init__(
        self,
        state: AppState,
        job: JobRecord,
        version: VersionRecord,
        fmt: OutputFormat,
        content_type: str,
        limit: int,
    ) -> None:
        self.jobs: JobService = state.jobs
        self.job = job
        self.version = version
        self.fmt = fmt
        self.content_type = content_type
        self.chunk_size = state.settings.upload_chunk_bytes
        self.limit = limit
        self.buffer = bytearray()
        self.sha = hashlib.sha256()
        self.next_index = version.chunks
        self.size = version.size
        #: the last chunk's encoding and writing, under way
        self.encoding: asyncio.Task[Chunk] | None = None
        self.writing: asyncio.Task[None] | None = None

    async def hash_stored(self) -> None:
        """Resuming: digest the chunks stored before (they are checked as read)."""
        async for _ in self.jobs.outputs.data(self.job, self.version, sha=self.sha):
            pass

    async def feed(self, piece: bytes) -> None:
        self.buffer += piece
        if self.size + len(self.buffer) > self.limit:
            await self.drain()
            raise Problem(
                "version-too-large",
                f"the version would grow past {self.limit} bytes; {self._stored()}",
            )
        while len(self.buffer) > self.chunk_size:
            cut = self._cut()
            data = bytes(self.buffer[:cut])
            del self.buffer[:cut]
            await self._store(data)

    async def finish(self) -> None:
        """Store the rest of the body as the last chunk, and seal the version."""
        tail = bytes(self.buffer)
        self.buffer.clear()
        if tail:
            await self._store(tail, last=True)
        await self.drain()
        if not tail:
            # The body ended on a chunk boundary (or was empty).
            await self.jobs.seal(
                self.job.namespace,
                self.job.job_id,
                self.version.number,
                self.next_index,
                self.sha.hexdigest(),
            )

    async def drain(self) -> None:
        """Wait for the chunks under way (the first error goes on)."""
        writing, self.writing, self.encoding = self.writing, None, None
        if writing is not None:
            await writing

    async def settle(self) -> None:
        """Wait for the chunks under way when the upload has already failed."""
        with contextlib.suppress(Exception):
            await self.drain()

    def _cut(self) -> int:
        """Where the next chunk ends: at the chunk size, or for text just before
        the UTF-8 character that straddles it."""
        cut = self.chunk_size
        if self.fmt is not OutputFormat.BINARY:
            back = cut
            while back > cut - 4 and back > 0 and self.buffer[back] & 0xC0 == 0x80:
                back -= 1
            if self.buffer[back] & 0xC0 != 0x80 and back > 0:
                cut = back
        return cut

    async def _store(self, data: bytes, *, last: bool = False) -> None:
        if self.fmt is not OutputFormat.BINARY:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                await self.drain()
                raise Problem(
                    "validation-failed",
                    f"byte {self.size + exc.start} of the output is not UTF-8, which "
                    f"{self.fmt.value} output must be; {self._stored()}",
                    extra=self._position(),
                ) from None
        self.size += len(data)
        index = self.next_index
        self.next_index += 1
        previous_write = self.writing
        self.encoding = asyncio.create_task(self._encode(data, self.encoding))
        self.writing = asyncio.create_task(
            self._write(data, index, self.encoding, previous_write, last)
        )
        if previous_write is not None:
            await previous_write  # back-pressure: chunk n - 1 is stored
        if last:
            await self.drain()

    async def _encode(self, data: bytes, previous: asyncio.Task[Chunk] | None) -> Chunk:
        if previous is not None:
            await previous  # the running digest takes the chunks in order
        return await self.jobs.codec.encode_async(data, self.sha)

    async def _write(
        self,
        data: bytes,
        index: int,
        encoding: asyncio.Task[Chunk],
        previous: asyncio.Task[None] | None,
        last: bool,
    ) -> None:
        if previous is not None:
            await previous
        chunk = await encoding
        result = await self.jobs.append(
            self.job.namespace,
            self.job.job_id,
            data,
            self.fmt,
            self.content_type,
            index,
            sha256=self.sha.hexdigest() if last else None,
            encoded=chunk,
            max_size=self.limit,
        )
        if not result.created:
            raise Problem(
                "chunk-index-conflict",
                f"chunk {index} of version {self.version.number} was written by someone else "
                "during this upload",
                extra=self._position(),
            )

    def _stored(self) -> str:
        return f"chunks up to {self.next_index} are stored; resume from there"

    def _position(self) -> dict[str, Any]:
        return {"version": self.version.number, "nextChunkIndex": self.next_index}


# -- reading ------------------------------------------------------------------------


def _version_param(request: Request, current: int) -> int:
    raw = request.query_params.get("version")
    if raw is None or raw == "":
        return current
    if not validation.is_count(raw) or int(raw) < 1:
        raise Problem("bad-request", "?version must be a positive integer")
    return int(raw)


async def _version_call(request: Request) -> tuple[AppState, JobRecord, VersionRecord, str]:
    """A read of one output version: ``(state, job, version, its ETag)``."""
    state, namespace, job_id = await job_call(request, Action.READ)
    job = await state.jobs.get(namespace, job_id)
    number = _version_param(request, job.current_version)
    version = job.version(number)
    if version is None:
        raise Problem("version-not-found", f"job {job_id!r} has no version {number}")
    if version.completed_at is not None and version.sha256 is None:
        state.jobs.digest_later(job, number)  # a crash may have cut the first try short
    return state, job, version, output_etag(job, version)


async def list_versions(request: Request) -> Response:
    state, namespace, job_id = await job_call(request, Action.READ)
    job = await state.jobs.get(namespace, job_id)
    for version in job.versions:
        if version.completed_at is not None and version.sha256 is None:
            state.jobs.digest_later(job, version.number)
    return JSONResponse(
        {
            "jobId": job.job_id,
            "currentVersion": job.current_version,
            "items": [version_view(v, job.current_version) for v in job.versions],
        }
    )


async def get_output(request: Request) -> Response:
    state, job, version, etag = await _version_call(request)
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    limit = state.settings.max_inline_output_bytes
    if version.size > limit:
        raw_url = f"{job_location(job.namespace, job.job_id)}/output/raw?version={version.number}"
        raise Problem(
            "output-too-large",
            f"version {version.number} is {version.size} bytes, over the {limit}-byte limit "
            f"of this route; download it from {raw_url}",
            extra={"rawUrl": raw_url},
        )
    data = b"".join([part async for part in state.jobs.outputs.data(job, version)])
    output: Any
    if version.format is OutputFormat.BINARY:
        output, encoding = base64.b64encode(data).decode("ascii"), "base64"
    else:
        output, encoding = data.decode("utf-8"), "utf-8"
        if version.format is OutputFormat.JSON:
            try:
                output, encoding = orjson.loads(data), "json"
            except orjson.JSONDecodeError:
                pass  # not a whole document (yet): the text as it is
    return JSONResponse(
        {
            "jobId": job.job_id,
            "version": version.number,
            "format": version.format.value if version.format else None,
            "contentType": version.content_type,
            "encoding": encoding,
            "size": version.size,
            "chunks": version.chunks,
            "sha256": version.sha256,
            "completedAt": render_timestamp(version.completed_at),
            "output": output,
        },
        headers={"ETag": etag},
    )


async def get_raw_output(request: Request) -> Response:
    state, job, version, etag = await _version_call(request)
    headers = {"Vary": "Accept-Encoding", "Accept-Ranges": "bytes"}
    span = requested_range(
        request.headers.get("range"), request.headers.get("if-range"), etag, version.size
    )
    # zstd when it is smaller: the stored frames, and frames of raw blocks
    # around chunks that did not compress.
    zstd = (
        span is None
        and 0 <= version.zstd_size < version.size
        and accepts_zstd(request.headers.get("accept-encoding"))
    )
    if zstd:
        # Another representation of the same bytes: another entity tag.
        etag = f'{etag[:-1]}.{ZSTD}"'
    headers["ETag"] = etag
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if version.sha256 is not None and not zstd:
        raw_digest = base64.b64encode(bytes.fromhex(version.sha256)).decode("ascii")
        headers["Repr-Digest"] = f"sha-256=:{raw_digest}:"
    media_type = version.content_type or "application/octet-stream"
    status = 200
    body: AsyncIterator[bytes]
    if zstd:
        headers["Content-Encoding"] = ZSTD
        headers["Content-Length"] = str(version.zstd_size)
        body = _frames(state, job, version)
    elif span is not None:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{version.size}"
        headers["Content-Length"] = str(end - start + 1)
        body = _slice(state, job, version, start, end)
    else:
        headers["Content-Length"] = str(version.size)
        body = _checked(state, job, version)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    # The first piece is read before the headers go out, so a store that is
    # down, or a first chunk that is damaged, is a problem response.
    first = await anext(body, b"")
    return StreamingResponse(
        _prepend(first, body), status_code=status, headers=headers, media_type=media_type
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for piece in rest:
        yield piece


async def _checked(state: AppState, job: JobRecord, version: VersionRecord) -> AsyncIterator[bytes]:
    """The whole version, checked: against its SHA-256 before the last piece
    goes out when it has one (a mismatch cuts the response short, so the client
    sees an error rather than a complete download of the wrong bytes), else
    chunk by chunk. One pass of SHA-256 either way."""
    known = version.sha256 is not None
    sha = hashlib.sha256() if known else None
    held: bytes | None = None
    async for data in state.jobs.outputs.data(job, version, sha=sha, check=not known):
        if held is not None:
            yield held
        held = data
    digest = sha.hexdigest() if sha is not None else None
    if digest is not None and digest != version.sha256:
        log_event(
            logger,
            "version.corrupt",
            logging.ERROR,
            namespace=job.namespace,
            jobId=job.job_id,
            version=version.number,
            detail=f"SHA-256 {digest} is not the recorded {version.sha256}",
        )
        raise CorruptData(f"version {version.number} does not match its SHA-256")
    if held is not None:
        yield held


async def _frames(state: AppState, job: JobRecord, version: VersionRecord) -> AsyncIterator[bytes]:
    """The version as one zstd stream: stored frames as they are (the client's
    decoder checks their checksums), other chunks checked here and framed."""
    codec = state.jobs.codec
    async for chunk in state.jobs.outputs.chunks(job, version):
        if chunk.codec == ZSTD:
            yield chunk.data
        else:
            yield raw_frame(await codec.decode_async(chunk))


async def _slice(
    state: AppState, job: JobRecord, version: VersionRecord, start: int, end: int
) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (inclusive) of the version."""
    outputs = state.jobs.outputs
    chunk = await outputs.locate(job, version, start)
    skip = start - chunk.offset
    remaining = end - start + 1
    async for data in outputs.data(job, version, chunk.index):
        piece = data[skip : skip + remaining] if skip or len(data) - skip > remaining else data
        skip = 0
        remaining -= len(piece)
        yield piece
        if remaining <= 0:
            return


def requested_range(
    raw: str | None, if_range: str | None, etag: str, size: int
) -> tuple[int, int] | None:
    """The one byte range asked for, as ``(first, last)``; ``None`` to send it all.

    Several ranges, another unit, or an ``If-Range`` that no longer matches
    get the whole representation, as RFC 9110 allows; a malformed or
    unsatisfiable byte range is a ``416``.
    """
    if raw is None:
        return None
    raw = raw.strip()
    if if_range is not None and if_range.strip() != etag:
        return None
    compact = raw.replace(" ", "").lower()
    if not compact.startswith("bytes=") or "," in compact:
        return None
    match = _RANGE_RE.fullmatch(compact)
    unsatisfiable = Problem(
        "range-not-satisfiable",
        f"the output is {size} bytes; {raw!r} selects none of them",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable
    first, last = match.groups()
    if first == "":  # the last N bytes
        suffix = _range_position(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - suffix), size - 1
    start = _range_position(first)
    end = size - 1 if last == "" else min(_range_position(last), size - 1)
    if start >= size or (last != "" and _range_position(last) < start):
        raise unsatisfiable
    return start, end


def _range_position(digits: str) -> int:
    """A byte position of a range; past any size when it has more digits than
    ``int`` reads (4300)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else 1 << 63


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` names zstd with a non-zero weight."""
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() != ZSTD:
            continue
        weight = params.strip().lower()
        if weight.startswith("q="):
            try:
                return float(weight[2:]) > 0
            except ValueError:
                return False
        return True
    return False
