"""The consistent-hash ring: which node owns each shard.

Nodes are placed on a 64-bit ring at ``weight * vnodes`` points each (BLAKE2b
of ``"{node id}#{i}"``, stable across processes and versions). The shards sit
at fixed, evenly spaced points of the same ring, and a shard belongs to the
node of the first point at or after it, wrapping around. So:

* the owner of a namespace is one table lookup (``shard_of`` → owner);
* adding a node moves to it only the shards its points land in front of —
  about ``1/(N+1)`` of them — and moves nothing between the other nodes;
  removing a node hands only its own shards to its ring neighbours;
* a node of weight 2 has twice the points, and so about twice the shards.

A ring is immutable; membership builds a new one when the members change.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from .shards import SHARDS, shard_of

__all__ = ["DEFAULT_VNODES", "HashRing", "Member"]

#: ring points of a node of weight 1
DEFAULT_VNODES = 256
#: the largest weight of a node (a node of weight 100 has 100 times the points)
MAX_WEIGHT = 100.0
_SPACE = 1 << 64


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """A node of the cluster: its id, the URL peers reach it at, its weight."""

    id: str
    url: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a node id must not be empty")
        if not 0 < self.weight <= MAX_WEIGHT:  # NaN fails too
            raise ValueError(f"node {self.id}: the weight must be above 0 and at most 100")


class HashRing:
    __slots__ = ("_by_id", "_owners", "digest", "members", "vnodes")

    def __init__(self, members: Iterable[Member], *, vnodes: int = DEFAULT_VNODES) -> None:
        self.members: tuple[Member, ...] = tuple(sorted(set(members)))
        if not self.members:
            raise ValueError("a ring needs at least one member")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self._by_id = {m.id: m for m in self.members}
        if len(self._by_id) != len(self.members):
            raise ValueError("two members share a node id")
        self.vnodes = vnodes
        points: list[tuple[int, str]] = []
        for member in self.members:
            count = max(1, round(vnodes * member.weight))
            points.extend((_point(f"{member.id}#{i}"), member.id) for i in range(count))
        points.sort()
        positions = [p for p, _ in points]
        owners: list[Member] = []
        for shard in range(SHARDS):
            at = (shard * _SPACE + _SPACE // 2) // SHARDS  # the middle of the shard's arc
            index = bisect_left(positions, at) % len(points)
            owners.append(self._by_id[points[index][1]])
        self._owners: tuple[Member, ...] = tuple(owners)
        # Nodes compare this to tell whether they see the same ring.
        described = ";".join(f"{m.id}={m.url}*{m.weight!r}" for m in self.members)
        self.digest = hashlib.blake2b(f"{vnodes}|{described}".encode(), digest_size=6).hexdigest()

    def owner(self, namespace: str) -> Member:
        return self._owners[shard_of(namespace)]

    def owner_of_shard(self, shard: int) -> Member:
        if not 0 <= shard < SHARDS:
            raise IndexError(f"shard {shard} is not in 0..{SHARDS - 1}")
        return self._owners[shard]

    def shards_of(self, node_id: str) -> frozenset[int]:
        return frozenset(s for s, m in enumerate(self._owners) if m.id == node_id)

    def member(self, node_id: str) -> Member | None:
        return self._by_id.get(node_id)

    def shard_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self._by_id, 0)
        for member in self._owners:
            counts[member.id] += 1
        return counts

    def __len__(self) -> int:
        return len(self.members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashRing) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"HashRing({len(self.members)} members, {self.digest})"
