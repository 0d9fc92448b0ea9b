"""The cluster inside the service: owner routing, the ping and admin routes,
and what a node does when the ring changes (docs/scaling.md).

A handler that has found (and authorised) the namespace of a request calls
:func:`route_to_owner`; on a node that does not own the namespace it raises
:class:`ForwardTo`, which :class:`ClusterLayer` — between the request
middleware and the router — turns into a streamed forward to the owner. If the
owner cannot be reached, the layer serves the request here after all, from
the store. A request that arrives forwarded is always served where it lands.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sharding import (
    FORWARDED_HEADER,
    Forwarder,
    ForwardFailed,
    HashRing,
    Member,
    Membership,
    MembershipSettings,
    OwnerUnreachable,
    RecordingReceive,
)
from sharding.http1 import PeerClient

from .hub import Hub
from .logs import log_event
from .metrics import Metrics
from .problems import Problem
from .settings import Settings

__all__ = [
    "FORWARDED_HEADER",
    "SERVE_HERE",
    "ClusterLayer",
    "ForwardTo",
    "build_membership",
    "rebalance",
    "route_to_owner",
]

logger = logging.getLogger("aos.cluster")

#: set in the scope of a request this node serves whoever owns its namespace
SERVE_HERE = "aos.serve_here"


class ForwardTo(Exception):
    """The namespace of this request is owned by ``owner``."""

    def __init__(self, owner: Member) -> None:
        super().__init__(owner.id)
        self.owner = owner


def route_to_owner(request: Request, membership: Membership, namespace: str) -> None:
    """Raise :class:`ForwardTo` unless this node serves ``namespace``'s requests."""
    if request.scope.get(SERVE_HERE):
        return
    owner = membership.owner(namespace)
    if owner.id != membership.me.id:
        raise ForwardTo(owner)


def build_membership(settings: Settings, client: PeerClient) -> Membership:
    """This node's membership, checking its peers with ``client``."""
    me = Member(settings.node_id, settings.advertised_url, settings.node_weight)
    timeout = max(settings.cluster_check_interval, 1.0)

    async def probe(url: str, headers: dict[str, str]) -> dict[str, Any]:
        status, body = await client.get_bytes(url, headers, within=timeout)
        if status != 200:
            raise ValueError(f"the ping answered {status}")
        answer: dict[str, Any] = orjson.loads(body)
        return answer

    return Membership(
        me,
        static=settings.peers,
        dns=settings.peers_dns,
        secret=settings.cluster_secret,
        settings=MembershipSettings(
            interval=settings.cluster_check_interval,
            timeout=timeout,
            rise=settings.cluster_rise,
            fall=settings.cluster_fall,
            vnodes=settings.cluster_vnodes,
            settle=max(10.0, 2 * (settings.cluster_fall + 1) * settings.cluster_check_interval),
        ),
        probe=probe,
    )


def rebalance(membership: Membership, hub: Hub, old: HashRing, new: HashRing) -> None:
    """After a ring change: end the live consumers of namespaces this node no
    longer owns (they reconnect by cursor and reach the new owner), and have
    the others look at the store once, in case another node wrote meanwhile."""
    me = membership.me.id
    moved = 0
    for topic in hub.topics():
        if new.owner(topic[0]).id != me:
            hub.close_topic(topic)
            moved += 1
        else:
            hub.nudge(topic)
    if moved:
        log_event(logger, "cluster.streams_moved", jobs=moved, ring=new.digest)


class ClusterLayer:
    """Forwards requests that a handler found to belong to another node."""

    def __init__(
        self,
        app: ASGIApp,
        membership: Membership,
        forwarder: Forwarder,
        metrics: Metrics,
        *,
        max_recorded: int,
    ) -> None:
        self.app = app
        self.membership = membership
        self.forwarder = forwarder
        self.metrics = metrics
        self.max_recorded = max_recorded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(self.membership.ring) == 1:
            # alone in its ring, a node owns every namespace: nothing to forward
            await self.app(scope, receive, send)
            return
        forwarded_by = auth = None
        for name, value in scope["headers"]:
            if name == b"x-aos-forwarded-by":
                forwarded_by = value
            elif name == b"x-aos-cluster-auth":
                auth = value
        if forwarded_by is not None and self.membership.authorized(
            auth.decode("latin-1") if auth is not None else None
        ):
            scope[SERVE_HERE] = True
            await self.app(scope, receive, send)
            return
        recorder = RecordingReceive(receive, self.max_recorded)
        try:
            await self.app(scope, recorder, send)
            return
        except ForwardTo as exc:
            owner = exc.owner
        request_id: str = scope["state"]["request_id"]
        try:
            await self.forwarder.forward(scope, recorder, send, owner, request_id)
            self.metrics.forwarded("forwarded")
            return
        except OwnerUnreachable as exc:
            detail = str(exc)
        except ForwardFailed as exc:
            self.metrics.forwarded("failed")
            self.membership.suspect(owner)
            slug = "owner-timeout" if exc.status == 504 else "owner-failed"
            raise Problem(slug, exc.detail) from None
        self.metrics.forwarded("served-here")
        self.membership.suspect(owner)
        log_event(
            logger, "cluster.owner_unreachable", logging.WARNING, node=owner.id, detail=detail
        )
        scope[SERVE_HERE] = True
        await self.app(scope, recorder.replay(), send)
