"""Async Output Service: run long jobs, deliver their output asynchronously."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("async-output-service")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
