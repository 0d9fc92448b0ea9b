"""The service's error tree.

Storage adapters translate every driver exception into one of these at the
edge (``raise StoreUnavailable(...) from exc``), so nothing above the adapter
layer ever sees a driver type. The HTTP layer maps each class onto one problem
response::

    AOSError
    ├── StoreError                      a store operation did not happen
    │   ├── StoreUnavailable            503: the store cannot be reached or is overloaded
    │   ├── Conflict                    409: a conditional write lost
    │   │   ├── AlreadyExists           conditional create found the row
    │   │   └── RevisionConflict        compare-and-set saw another revision
    │   ├── NotFound                    404: the row is gone
    │   └── CorruptData                 500: a stored row cannot be decoded
    └── ConfigurationError              the store URL or an extra is wrong (at start)
        ├── UnknownScheme
        └── MissingExtra
"""

from __future__ import annotations

__all__ = [
    "AOSError",
    "AlreadyExists",
    "ConfigurationError",
    "Conflict",
    "CorruptData",
    "MissingExtra",
    "NotFound",
    "RevisionConflict",
    "StoreError",
    "StoreUnavailable",
    "UnknownScheme",
]


class AOSError(Exception):
    """Root of every error the service raises on purpose."""


class StoreError(AOSError):
    """A store operation did not take effect."""


class StoreUnavailable(StoreError):
    """The store could not be reached, timed out, or refused the load.

    Nothing was acknowledged; the caller may retry.
    """


class Conflict(StoreError):
    """A conditional write found the row in another state than expected."""


class AlreadyExists(Conflict):
    """A conditional create found an existing row with the same key."""


class RevisionConflict(Conflict):
    """A compare-and-set on a job revision lost against a concurrent writer."""


class NotFound(StoreError):
    """The row the operation targets does not exist."""


class CorruptData(StoreError):
    """A stored row could not be decoded."""


class ConfigurationError(AOSError):
    """The configuration cannot work; raised at start, never per request."""


class UnknownScheme(ConfigurationError):
    """No adapter is registered for the URL's scheme."""


class MissingExtra(ConfigurationError):
    """The adapter's driver is not installed."""
