"""Pluggable durable state for the Async Output Service.

``adapter_for(url)`` picks the adapter by URL scheme and imports its driver
only then; :class:`StorageAdapter` is the contract every store implements.
"""

from .base import Capability, StorageAdapter, StoreURL
from .errors import (
    AlreadyExists,
    AOSError,
    ConfigurationError,
    Conflict,
    CorruptData,
    MissingExtra,
    NotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    UnknownScheme,
)
from .records import (
    TERMINAL_STATUSES,
    AttemptRecord,
    DeliveryQuery,
    DeliveryRecord,
    DeliveryState,
    EndpointRecord,
    EventKind,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    KeyRecord,
    NamespaceRecord,
    OutboxStats,
    OutputFormat,
    VersionRecord,
)
from .registry import adapter_for, supported_schemes

__all__ = [
    "TERMINAL_STATUSES",
    "AOSError",
    "AlreadyExists",
    "AttemptRecord",
    "Capability",
    "ConfigurationError",
    "Conflict",
    "CorruptData",
    "DeliveryQuery",
    "DeliveryRecord",
    "DeliveryState",
    "EndpointRecord",
    "EventKind",
    "EventRecord",
    "JobQuery",
    "JobRecord",
    "JobStatus",
    "KeyRecord",
    "MissingExtra",
    "NamespaceRecord",
    "NotFound",
    "OutboxStats",
    "OutputFormat",
    "RevisionConflict",
    "StorageAdapter",
    "StoreError",
    "StoreURL",
    "StoreUnavailable",
    "UnknownScheme",
    "VersionRecord",
    "adapter_for",
    "supported_schemes",
]
