"""Placing namespaces on nodes: shards, the consistent-hash ring, membership,
and forwarding requests to the owner node (docs/scaling.md)."""

from .forward import (
    FORWARDED_HEADER,
    Forwarder,
    ForwardFailed,
    OwnerUnreachable,
    RecordingReceive,
)
from .membership import AUTH_HEADER, PING_PATH, Membership, MembershipSettings, parse_peers
from .ring import DEFAULT_VNODES, HashRing, Member
from .shards import SHARDS, shard_of

__all__ = [
    "AUTH_HEADER",
    "DEFAULT_VNODES",
    "FORWARDED_HEADER",
    "PING_PATH",
    "SHARDS",
    "ForwardFailed",
    "Forwarder",
    "HashRing",
    "Member",
    "Membership",
    "MembershipSettings",
    "OwnerUnreachable",
    "RecordingReceive",
    "parse_peers",
    "shard_of",
]
