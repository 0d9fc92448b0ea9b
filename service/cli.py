"""``aos``: the command line.

``aos serve`` runs the service (uvicorn with uvloop and httptools);
``aos migrate`` brings the store's schema up to date and exits;
``aos rewrap`` wraps every namespace's data keys with the primary master key.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import secrets
import sys
from pathlib import Path

from storage_adapters import ConfigurationError, StoreURL, adapter_for

from . import __version__
from .logs import configure_logging, log_event, redact, register_secrets
from .settings import Secret, Settings

__all__ = ["main"]

logger = logging.getLogger("aos.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aos", description="Async Output Service")
    parser.add_argument("--version", action="version", version=f"aos {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="interface to listen on (AOS_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (AOS_PORT, default 8080)")
    serve.add_argument(
        "--storage-url",
        help="store URL (AOS_STORAGE_URL, default sqlite:///aos.db): sqlite:///path, memory://",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error (AOS_LOG_LEVEL)")
    serve.add_argument(
        "--no-access-log", action="store_true", help="do not log each request (AOS_ACCESS_LOG)"
    )
    serve.add_argument(
        "--tls-cert", help="serve HTTPS: PEM certificate chain (AOS_TLS_CERT, with --tls-key)"
    )
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (AOS_TLS_KEY)")

    migrate = commands.add_parser("migrate", help="apply schema migrations to the store")
    migrate.add_argument("--storage-url", help="store URL (AOS_STORAGE_URL)")

    rewrap = commands.add_parser(
        "rewrap",
        help="wrap every namespace's data keys with the primary master key (docs/security.md)",
    )
    rewrap.add_argument("--storage-url", help="store URL (AOS_STORAGE_URL)")
    return parser


def _admin_token(settings: Settings) -> Settings:
    """Settings with an admin token: configured, read from the token file, or new.

    A new token is written to ``admin_token_file`` (mode 600) and printed once,
    so a first ``aos serve`` works with no configuration and keeps its token
    across restarts.
    """
    if settings.admin_token:
        return settings
    path = Path(settings.admin_token_file)
    if path.is_file():
        token = path.read_text().strip()
        if token:
            log_event(logger, "admin_token.loaded", file=str(path))
            return settings.with_overrides(admin_token=Secret(token))
    token = "aos_admin_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    print(
        f"aos: generated an admin token (saved to {path}; set AOS_ADMIN_TOKEN to choose "
        f"your own):\n\n    {token}\n",
        flush=True,
    )
    return settings.with_overrides(admin_token=Secret(token))


def _serve(settings: Settings) -> int:
    import uvicorn

    from .app import create_app
    from .tls import server_context

    # A bad certificate or key stops the process here, before anything starts.
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = server_context(settings.tls_cert, settings.tls_key)
    log_config = configure_logging(settings.log_level)
    settings = _admin_token(settings)
    register_secrets(settings.admin_token)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=math.ceil(settings.keepalive_timeout),
        server_header=False,
        # No client addresses are used, so forwarded headers need no parsing.
        proxy_headers=False,
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )
    server = uvicorn.Server(config)
    # The objects made so far (modules, the app) live as long as the process:
    # move them out of the collector's sight, and collect the young generation
    # less often. Full collections over every object were the largest source
    # of tail latency under load (see docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    server.run()
    return 0 if server.started else 1


async def _rewrap(settings: Settings) -> int:
    """``aos rewrap``: prints what it did as JSON; exit 1 if a namespace was left."""
    from .crypto import load_data_keys
    from .namespaces import rewrap_namespaces

    keys = load_data_keys(settings.master_keys, settings.master_key_file)
    if keys is None:
        raise ConfigurationError("aos rewrap needs AOS_MASTER_KEYS or AOS_MASTER_KEY_FILE")
    store = adapter_for(settings.storage_url)
    await store.open(migrate=settings.migrate_on_start)
    try:
        report = await rewrap_namespaces(store, keys)
    finally:
        await store.close()
    print(
        json.dumps(
            {
                "primary": report.primary,
                "namespaces": report.namespaces,
                "updated": report.updated,
                "rewrapped": report.rewrapped,
                "sealedSecrets": report.sealed_secrets,
                "failed": list(report.failed),
            }
        ),
        flush=True,
    )
    return 1 if report.failed else 0


async def _migrate(settings: Settings) -> list[int]:
    store = adapter_for(settings.storage_url)
    applied = await store.open(migrate=True)
    await store.close()
    return applied


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {"storage_url": getattr(args, "storage_url", None)}
        if args.command == "serve":
            overrides |= {"host": args.host, "port": args.port, "log_level": args.log_level}
            if args.no_access_log:
                overrides["access_log"] = False
            overrides |= {"tls_cert": args.tls_cert, "tls_key": args.tls_key}
        settings = Settings.from_env(**overrides)
        register_secrets(
            settings.admin_token,
            settings.cluster_secret,
            StoreURL.parse(settings.storage_url).password,
        )
        if args.command == "serve":
            adapter_for(settings.storage_url)  # fail now on a bad URL or a missing extra
            return _serve(settings)
        configure_logging(settings.log_level)
        if args.command == "rewrap":
            return asyncio.run(_rewrap(settings))
        applied = asyncio.run(_migrate(settings))
        log_event(
            logger,
            "store.migrated",
            store=StoreURL.parse(settings.storage_url).redacted(),
            applied=applied,
        )
        return 0
    except ConfigurationError as exc:
        print(f"aos: {redact(str(exc))}", file=sys.stderr)
        return 2
