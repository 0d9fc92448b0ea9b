"""Forwarding a request to the node that owns its namespace, streaming both ways.

The entry node has already authenticated the request and found its namespace
(which may have meant reading a small JSON body: :class:`RecordingReceive`
keeps what was read so it can be sent on). The request goes to the owner with
every end-to-end header (``Authorization``, ``Last-Event-ID``,
``If-None-Match``, ``Range``, ``X-Chunk-Index``…), the entry node's request id
and ``X-AOS-Forwarded-By``; the owner serves a forwarded request itself,
whatever its own ring says, so a request makes one hop at most and can never
loop. Bodies stream in both directions chunk by chunk, never buffered whole:
an upload goes on as it arrives, an SSE stream, a long-poll or a raw download
comes back as the owner writes it. When the client goes away, the request to
the owner is closed too.

Failures, in the order they can happen:

* no connection to the owner (refused, unreachable, connect timeout): nothing
  was sent, so :class:`OwnerUnreachable` lets the caller serve the request
  locally from the store — correctness never depends on the owner;
* the owner fails before it answers: a read (``GET``/``HEAD``) is served
  locally as well; a write may or may not have happened, so it is a ``502``
  the client retries (writes are idempotent by ``jobId`` and ``X-Chunk-Index``);
* the owner takes longer than the read timeout: ``504``;
* the owner fails mid-body: the response ends there (an SSE client resumes
  from its ``Last-Event-ID``; a download from ``Range``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

from .http1 import Broken, PeerClient, PeerResponse, TimedOut, Unreachable
from .ring import Member

__all__ = [
    "FORWARDED_HEADER",
    "ForwardFailed",
    "Forwarder",
    "OwnerUnreachable",
    "RecordingReceive",
]

logger = logging.getLogger("aos.cluster")

#: set on a forwarded request: the node that forwarded it
FORWARDED_HEADER = "x-aos-forwarded-by"

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the client library sets itself.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",  # sent again below when the body is not chunked
        b"expect",  # the entry node answered any 100-continue itself
        b"x-request-id",
        b"x-aos-forwarded-by",
        b"x-aos-cluster-auth",
    }
)
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
        b"x-request-id",  # the entry node's middleware sets it (the same id)
        # ... and these (service.middleware.SECURITY_HEADERS, HSTS): not twice
        b"x-content-type-options",
        b"referrer-policy",
        b"x-frame-options",
        b"content-security-policy",
        b"strict-transport-security",
    }
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class OwnerUnreachable(Exception):
    """The owner could not be reached and nothing was sent: serve it here."""


class ForwardFailed(Exception):
    """The owner failed before answering; ``status`` is 502 or 504."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _ClientGone(Exception):
    pass


class RecordingReceive:
    """An ASGI ``receive`` that keeps the body parts read through it (up to ``cap``
    bytes), so a request whose handler read a small body can still be forwarded,
    or served again locally."""

    __slots__ = ("_receive", "cap", "complete", "overflow", "parts", "size")

    def __init__(self, receive: Receive, cap: int) -> None:
        self._receive = receive
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False
        self.overflow = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if body and not self.overflow:
                self.size += len(body)
                if self.size > self.cap:
                    self.overflow, self.parts = True, []
                else:
                    self.parts.append(body)
            if not message.get("more_body", False):
                self.complete = True
        return message

    async def next_from_client(self) -> Message:
        """The next message past what was recorded (not recorded itself)."""
        return await self._receive()

    def replay(self) -> Receive:
        """A fresh ``receive``: the recorded body first, then the rest from the client."""
        if self.overflow:
            raise RuntimeError("the body read so far was too large to keep")
        pending: list[Message] = [
            {
                "type": "http.request",
                "body": b"".join(self.parts),
                "more_body": not self.complete,
            }
        ]
        receive = self._receive

        async def replayed() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        return replayed


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class Forwarder:
    def __init__(
        self,
        node_id: str,
        *,
        secret: str | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 90.0,
        max_idle_connections: int = 256,
    ) -> None:
        self.node_id = node_id
        self.secret = secret
        # No cap on connections: each forwarded stream or long-poll holds one
        # for its lifetime (file descriptors are the limit); idle ones are capped.
        self.client = PeerClient(
            connect_timeout=connect_timeout,
            read_timeout=timeout,
            max_idle_per_peer=max_idle_connections,
        )

    async def close(self) -> None:
        await self.client.close()

    def _headers(self, scope: Scope, request_id: str) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in scope["headers"] if k not in _REQUEST_DROP]
        for name, value in scope["headers"]:
            if name == b"content-length":
                headers.append((name, value))
        headers.append((b"x-request-id", request_id.encode("ascii")))
        headers.append((FORWARDED_HEADER.encode(), self.node_id.encode()))
        if self.secret is not None:
            headers.append((b"x-aos-cluster-auth", self.secret.encode()))
        return headers

    async def forward(
        self,
        scope: Scope,
        receive: RecordingReceive,
        send: Send,
        owner: Member,
        request_id: str,
    ) -> None:
        """Send the request to ``owner`` and its answer to the client, streaming."""
        method: str = scope["method"]
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        has_body = _has_body(scope)
        chunked = has_body and not any(k == b"content-length" for k, _ in scope["headers"])
        streamed = False  # whether body parts past the recorded ones were sent

        async def body() -> AsyncIterator[bytes]:
            nonlocal streamed
            if receive.parts:
                yield b"".join(receive.parts)
            done = receive.complete
            while not done:
                message = await receive.next_from_client()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                streamed = True
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                done = not message.get("more_body", False)

        if receive.overflow:
            raise RuntimeError("cannot forward: the body read so far was not kept")
        try:
            response = await self.client.request(
                owner.url,
                method,
                target,
                self._headers(scope, request_id),
                body() if has_body else None,
                chunked=chunked,
            )
        except Unreachable as exc:
            if streamed:
                raise ForwardFailed(502, f"the owner node {owner.id} failed: {exc}") from None
            raise OwnerUnreachable(f"{owner.id}: {exc}") from None
        except TimedOut:
            raise ForwardFailed(504, f"the owner node {owner.id} did not answer in time") from None
        except _ClientGone:
            return
        except Broken as exc:
            if method in _SAFE_METHODS:
                raise OwnerUnreachable(f"{owner.id}: {exc}") from None
            raise ForwardFailed(
                502,
                f"the owner node {owner.id} failed during the request ({exc}); "
                "it may or may not have taken effect: retry it",
            ) from None
        try:
            await self._relay(response, receive, send, watch=not has_body, owner=owner)
        finally:
            response.release()

    async def _relay(
        self,
        response: PeerResponse,
        receive: RecordingReceive,
        send: Send,
        *,
        watch: bool,
        owner: Member,
    ) -> None:
        headers = [(k, v) for k, v in response.headers if k not in _RESPONSE_DROP]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})

        async def pump() -> None:
            try:
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (Broken, TimedOut) as exc:
                logger.warning(
                    "cluster.forward_broken",
                    extra={"fields": {"node": owner.id, "detail": f"{type(exc).__name__}: {exc}"}},
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        if not watch:
            await pump()
            return

        async def client_gone() -> None:
            while (await receive.next_from_client())["type"] != "http.disconnect":
                pass

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
            with contextlib.suppress(asyncio.CancelledError):
                await watching
