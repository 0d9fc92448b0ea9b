"""Placing namespaces: a fixed set of shards, and (later) nodes that own them."""

from .shards import SHARDS, shard_of

__all__ = ["SHARDS", "shard_of"]
