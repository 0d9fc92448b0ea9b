"""Who is in the cluster: static peers, DNS, announcements, health checks.

Every node keeps its own view; there is no coordinator. Candidates come from

* the static list ``AOS_PEERS`` (``id=http://host:port,…``, this node included);
* DNS (``AOS_PEERS_DNS=host:port``, a Kubernetes headless service): every
  address the name resolves to is a candidate ``http://address:port``, its
  node id learnt from its answer to a health check;
* with a cluster secret only: nodes that announce themselves in their own
  health checks, and the members that healthy peers report (gossip), so a new
  node joins by naming any one member.

Each candidate is checked every ``interval`` seconds (``GET
/internal/v1/cluster/ping``). Hysteresis keeps one lost packet from moving
shards: a member goes down after ``fall`` failures in a row and comes (back)
up after ``rise`` successes in a row. Static members start up, so nodes that
start together agree on the ring at once; discovered ones start down.

The ring is this node plus every member that is up. When it changes, the
listeners are told (old ring, new ring); for ``settle`` seconds after a change
the ring counts as *unsettled*, the time other nodes may take to agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .ring import DEFAULT_VNODES, MAX_WEIGHT, HashRing, Member

__all__ = [
    "AUTH_HEADER",
    "PING_PATH",
    "Membership",
    "MembershipSettings",
    "Peer",
    "PeerState",
    "parse_peers",
]

logger = logging.getLogger("aos.cluster")

PING_PATH = "/internal/v1/cluster/ping"
#: carries the cluster secret on pings and forwarded requests
AUTH_HEADER = "x-aos-cluster-auth"
#: a pinging node names itself with these
NODE_HEADER = "x-aos-node"
NODE_URL_HEADER = "x-aos-node-url"

#: a probe: (url, request headers) -> the peer's ping answer (raises on any failure)
Probe = Callable[[str, dict[str, str]], Awaitable[dict[str, Any]]]
#: a resolver: (host, port) -> addresses
Resolver = Callable[[str, int], Awaitable[list[str]]]
Listener = Callable[[HashRing, HashRing], None]


def _log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log line (the service's JSON formatter prints ``fields``)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def parse_peers(raw: str) -> list[Member]:
    """``id=http://host:port,…`` (the ``AOS_PEERS`` form) as members."""
    members: list[Member] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        node_id, sep, url = part.partition("=")
        node_id, url = node_id.strip(), url.strip().rstrip("/")
        if not sep or not node_id or not url:
            raise ValueError(f"{part!r} is not id=http://host:port")
        check_url(url)
        members.append(Member(node_id, url))
    ids = [m.id for m in members]
    if len(set(ids)) != len(ids):
        raise ValueError("a node id is listed twice")
    return members


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r}: a node URL is scheme://host:port with no path")
    return url


def parse_dns(raw: str) -> tuple[str, int]:
    """``host:port`` of ``AOS_PEERS_DNS``."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{raw!r} is not host:port")
    return host.strip("[]"), int(port)


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class PeerState:
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class Peer:
    """One candidate member as this node sees it."""

    url: str
    source: str  # static, dns, announced, gossip
    id: str | None = None
    weight: float = 1.0
    up: bool = False
    streak: int = 0  # successes (while down) or failures (while up) in a row
    checked_at: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    changed_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    vnodes: int = DEFAULT_VNODES
    #: how long after a ring change it counts as unsettled
    settle: float = 10.0
    #: discovered members down this long are forgotten
    forget_after: float = 300.0
    dns_interval: float = 5.0


class Membership:
    def __init__(
        self,
        me: Member,
        *,
        static: Iterable[Member] = (),
        dns: tuple[str, int] | None = None,
        secret: str | None = None,
        settings: MembershipSettings | None = None,
        probe: Probe | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.me = me
        self.settings = settings or MembershipSettings()
        self.secret = secret
        self.dns = dns
        self._probe = probe
        self._resolver = resolver
        self.peers: dict[str, Peer] = {}
        for member in static:
            if member.id == me.id:
                continue
            self.peers[member.url] = Peer(member.url, "static", member.id, up=True)
        self._listeners: list[Listener] = []
        self._wake = asyncio.Event()
        self._changed_at = -float("inf")
        self.ring = self._build()
        self._owned: frozenset[int] | None = self._owned_shards()

    # -- the ring -----------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        """Whether this node may have peers at all (a static list, DNS)."""
        return bool(self.peers) or self.dns is not None

    def owner(self, namespace: str) -> Member:
        return self.ring.owner(namespace)

    def owns(self, namespace: str) -> bool:
        return self.ring.owner(namespace).id == self.me.id

    def owned_shards(self) -> frozenset[int] | None:
        """The shards this node looks after; ``None`` while it is alone (all of them)."""
        return self._owned

    def settled(self) -> bool:
        return time.monotonic() - self._changed_at >= self.settings.settle

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _build(self) -> HashRing:
        # One member per node id: a node that came back at another address (a
        # new pod IP) counts once, at the address that answered last.
        latest: dict[str, Peer] = {}
        for peer in self.peers.values():
            if peer.up and peer.id is not None and peer.id != self.me.id:
                known = latest.get(peer.id)
                if known is None or (peer.last_ok or 0.0) > (known.last_ok or 0.0):
                    latest[peer.id] = peer
        members = [self.me, *(Member(p.id, p.url, p.weight) for p in latest.values() if p.id)]
        return HashRing(members, vnodes=self.settings.vnodes)

    def _owned_shards(self) -> frozenset[int] | None:
        return None if len(self.ring) == 1 else self.ring.shards_of(self.me.id)

    def _rebuild(self) -> None:
        ring = self._build()
        if ring == self.ring:
            return
        old, self.ring = self.ring, ring
        self._owned = self._owned_shards()
        self._changed_at = time.monotonic()
        _log(
            "cluster.ring",
            ring=ring.digest,
            members=[m.id for m in ring.members],
            ownedShards=len(ring.shards_of(self.me.id)),
        )
        for listener in self._listeners:
            try:
                listener(old, ring)
            except Exception:  # one listener's bug must not stop the others
                logger.exception("a ring listener failed")

    # -- pings ------------------------------------------------------------------

    def authorized(self, presented: str | None) -> bool:
        if self.secret is None:
            return True
        return presented is not None and hmac.compare_digest(presented, self.secret)

    def ping_headers(self) -> dict[str, str]:
        headers = {NODE_HEADER: self.me.id, NODE_URL_HEADER: self.me.url}
        if self.secret is not None:
            headers[AUTH_HEADER] = self.secret
        return headers

    def ping_answer(self, trusted: bool) -> dict[str, Any]:
        """What this node answers to a ping; the member list only to a trusted caller."""
        answer: dict[str, Any] = {
            "nodeId": self.me.id,
            "url": self.me.url,
            "weight": self.me.weight,
            "ring": self.ring.digest,
        }
        if trusted:
            answer["members"] = [
                {"id": m.id, "url": m.url, "weight": m.weight} for m in self.ring.members
            ]
        return answer

    def announced(self, node_id: str, url: str) -> None:
        """A node pinged us naming itself (the caller checked the secret)."""
        if self.secret is None or node_id == self.me.id:
            return
        try:
            check_url(url)
        except ValueError:
            return
        if url not in self.peers:
            self.peers[url] = Peer(url, "announced", node_id)  # its weight: from its answer
            self._wake.set()

    def _learn(self, answer: dict[str, Any]) -> None:
        if self.secret is None:
            return
        for entry in answer.get("members") or ():
            try:
                url, node_id = check_url(str(entry["url"]).rstrip("/")), str(entry["id"])
            except (KeyError, TypeError, ValueError):
                continue
            if node_id != self.me.id and url not in self.peers:
                self.peers[url] = Peer(url, "gossip", node_id)  # its weight: from its answer
                self._wake.set()

    def suspect(self, member: Member) -> None:
        """A request to ``member`` failed to connect: check it again soon."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Check every candidate each interval, forever (cancel to stop)."""
        if not self.clustered:
            return
        next_dns = 0.0
        while True:
            now = time.monotonic()
            if self.dns is not None and now >= next_dns:
                await self._discover()
                next_dns = now + self.settings.dns_interval
            await self.check_all()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval):
                    await self._wake.wait()
                # woken early: let a burst of failures gather, then check
                await asyncio.sleep(min(0.2, self.settings.interval))

    async def check_all(self) -> None:
        peers = list(self.peers.values())
        if peers:
            await asyncio.gather(*(self._check(peer) for peer in peers))
        self._forget()
        self._rebuild()

    async def _discover(self) -> None:
        assert self.dns is not None
        host, port = self.dns
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            _log("cluster.dns_failed", logging.WARNING, name=host, detail=str(exc))
            return
        urls = {f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses}
        for url in urls - self.peers.keys():
            if url != self.me.url:
                self.peers[url] = Peer(url, "dns")
        for url, peer in list(self.peers.items()):
            if peer.source == "dns" and url not in urls:
                del self.peers[url]  # gone from the service: not ready, or deleted

    async def _check(self, peer: Peer) -> None:
        assert self._probe is not None, "a clustered membership needs a probe"
        error: str | None = None
        answer: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.settings.timeout):
                answer = await self._probe(peer.url + PING_PATH, self.ping_headers())
            node_id = str(answer["nodeId"])
            if node_id == self.me.id:
                error = "it is this node"
            elif peer.id is not None and peer.source == "static" and node_id != peer.id:
                error = f"it answers as node {node_id!r}, not {peer.id!r}"
            else:
                weight = float(answer.get("weight", 1.0))
                if not 0 < weight <= MAX_WEIGHT:
                    raise ValueError(f"weight {weight!r} is not in (0, {MAX_WEIGHT:g}]")
                peer.id, peer.weight = node_id, weight
        except Exception as exc:  # any failure is a failed check
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.monotonic()
        peer.checked_at = now
        if error is None:
            peer.last_ok, peer.last_error = now, None
            self._learn(answer)
        else:
            peer.last_error = error
        healthy = error is None
        if healthy == peer.up:
            peer.streak = 0
            return
        peer.streak += 1
        if peer.streak >= (self.settings.rise if healthy else self.settings.fall):
            peer.up, peer.streak, peer.changed_at = healthy, 0, now
            _log(
                "cluster.member_up" if healthy else "cluster.member_down",
                logging.INFO if healthy else logging.WARNING,
                node=peer.id,
                url=peer.url,
                detail=error,
            )

    def _forget(self) -> None:
        horizon = time.monotonic() - self.settings.forget_after
        for url, peer in list(self.peers.items()):
            forgettable = peer.source in ("announced", "gossip") and not peer.up
            if forgettable and peer.changed_at < horizon:
                del self.peers[url]

    # -- views ------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "node": self.me.id,
            "ring": self.ring.digest,
            "members": len(self.ring),
            "ownedShards": len(self.ring.shards_of(self.me.id)),
            "settled": self.settled(),
        }

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        counts = self.ring.shard_counts()

        def ago(moment: float | None) -> float | None:
            return None if moment is None else round(now - moment, 3)

        members: list[dict[str, Any]] = [
            {
                "id": self.me.id,
                "url": self.me.url,
                "weight": self.me.weight,
                "source": "self",
                "state": PeerState.UP,
                "shards": counts.get(self.me.id, 0),
            }
        ]
        for peer in sorted(self.peers.values(), key=lambda p: (p.id or "", p.url)):
            members.append(
                {
                    "id": peer.id,
                    "url": peer.url,
                    "weight": peer.weight,
                    "source": peer.source,
                    "state": PeerState.UP if peer.up else PeerState.DOWN,
                    "shards": counts.get(peer.id, 0) if peer.up and peer.id else 0,
                    "streak": peer.streak,
                    "checkedSecondsAgo": ago(peer.checked_at),
                    "lastOkSecondsAgo": ago(peer.last_ok),
                    "lastError": peer.last_error,
                }
            )
        return {
            **self.summary(),
            "vnodes": self.settings.vnodes,
            "check": {
                "interval": self.settings.interval,
                "rise": self.settings.rise,
                "fall": self.settings.fall,
            },
            "dns": f"{self.dns[0]}:{self.dns[1]}" if self.dns else None,
            "members": members,
        }
