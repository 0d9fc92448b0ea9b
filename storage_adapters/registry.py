"""Adapters chosen by URL scheme, imported only when used."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import StorageAdapter, StoreURL
from .errors import MissingExtra, UnknownScheme

__all__ = ["ADAPTERS", "adapter_for", "supported_schemes"]


@dataclass(frozen=True, slots=True)
class _Entry:
    target: str  # "module:Class"
    extra: str | None  # the pip extra that installs the driver
    driver: str | None  # the top-level module of the driver


ADAPTERS: dict[str, _Entry] = {
    "memory": _Entry("storage_adapters.memory:MemoryAdapter", None, None),
    "sqlite": _Entry("storage_adapters.sqlite:SQLiteAdapter", None, "aiosqlite"),
    "postgresql": _Entry("storage_adapters.postgresql:PostgreSQLAdapter", "postgresql", "asyncpg"),
    "postgres": _Entry("storage_adapters.postgresql:PostgreSQLAdapter", "postgresql", "asyncpg"),
    "mysql": _Entry("storage_adapters.mysql:MySQLAdapter", "mysql", "aiomysql"),
    "mariadb": _Entry("storage_adapters.mysql:MySQLAdapter", "mysql", "aiomysql"),
    "cassandra": _Entry("storage_adapters.cassandra:CassandraAdapter", "cassandra", "cassandra"),
    "mongodb": _Entry("storage_adapters.mongodb:MongoDBAdapter", "mongodb", "pymongo"),
    "dynamodb": _Entry("storage_adapters.dynamodb:DynamoDBAdapter", "dynamodb", "aioboto3"),
}


def supported_schemes() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(url: str, *, pool_size: int = 10) -> StorageAdapter:
    """A new, unopened adapter for ``url`` (``pool_size``: its default pool size).

    Raises :class:`UnknownScheme` for a scheme no adapter serves and
    :class:`MissingExtra` (naming the extra to install) when the adapter's
    driver is not installed.
    """
    parsed = StoreURL.parse(url)
    entry = ADAPTERS.get(parsed.scheme)
    if entry is None:
        raise UnknownScheme(
            f"no storage adapter for scheme {parsed.scheme!r} in {parsed.redacted()!r}; "
            f"supported: {', '.join(s + '://' for s in supported_schemes())}"
        )
    if entry.driver is not None:
        try:
            importlib.import_module(entry.driver)
        except ImportError as exc:
            hint = (
                f"pip install 'async-output-service[{entry.extra}]'"
                if entry.extra
                else "reinstall async-output-service"
            )
            raise MissingExtra(
                f"the {parsed.scheme}:// store needs the {entry.driver!r} driver: {hint}"
            ) from exc
    module_name, _, class_name = entry.target.partition(":")
    cls: type[StorageAdapter] = getattr(importlib.import_module(module_name), class_name)
    return cls(parsed, pool_size=pool_size)
