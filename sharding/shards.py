"""Namespaces hash onto a fixed number of shards with a stable hash.

The shard of a namespace never changes (it is stored with its outbox rows);
which node owns a shard is the ring's business. BLAKE2b is stable across
processes and versions, unlike Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

__all__ = ["SHARDS", "shard_of"]

#: how many shards the namespaces are spread over
SHARDS = 1024


@lru_cache(maxsize=65_536)
def shard_of(namespace: str) -> int:
    digest = hashlib.blake2b(namespace.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SHARDS
