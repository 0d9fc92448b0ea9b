"""The route table: every path and method the app serves, and its handler."""

from __future__ import annotations

from . import api, output_api, webhook_api
from .routing import Handler, HandlerRoute

__all__ = ["route_table", "routes"]

#: (path below a job collection, methods and handlers)
JOB_ROUTES: list[tuple[str, dict[str, Handler]]] = [
    ("", {"POST": api.create_job, "GET": api.list_jobs}),
    ("/{job_id}", {"GET": api.get_job, "DELETE": api.delete_job}),
    ("/{job_id}/status", {"GET": api.get_status, "PATCH": api.patch_status}),
    ("/{job_id}/cancel", {"POST": api.cancel_job}),
    (
        "/{job_id}/output",
        {
            "POST": output_api.append_output,
            "PUT": output_api.put_output,
            "GET": output_api.get_output,
        },
    ),
    ("/{job_id}/output/raw", {"GET": output_api.get_raw_output}),
    ("/{job_id}/versions", {"POST": output_api.start_version, "GET": output_api.list_versions}),
    ("/{job_id}/stream", {"GET": api.stream_job}),
    ("/{job_id}/deliveries", {"GET": webhook_api.list_job_deliveries}),
    ("/{job_id}/deliveries/{delivery_id}/retry", {"POST": webhook_api.retry_delivery}),
]

_NS = "/api/v1/namespaces/{namespace}"

OTHER_ROUTES: list[tuple[str, dict[str, Handler]]] = [
    (_NS, {"PUT": api.put_namespace, "GET": api.get_namespace}),
    (f"{_NS}/keys", {"POST": api.create_key, "GET": api.list_keys}),
    (f"{_NS}/keys/{{key_id}}", {"GET": api.get_key, "DELETE": api.revoke_key}),
    (f"{_NS}/keys/{{key_id}}/rotate", {"POST": api.rotate_key}),
    (f"{_NS}/subscriber-tokens", {"POST": api.mint_token}),
    (f"{_NS}/audit", {"GET": api.read_audit}),
    (f"{_NS}/webhook-secrets", {"POST": webhook_api.rotate_secret}),
    (f"{_NS}/webhook-endpoints", {"GET": webhook_api.list_endpoints}),
    (f"{_NS}/webhook-endpoints/enable", {"POST": webhook_api.enable_endpoint}),
    (f"{_NS}/deliveries", {"GET": webhook_api.list_namespace_deliveries}),
    (f"{_NS}/deliveries/replay", {"POST": webhook_api.replay_deliveries}),
    ("/healthz", {"GET": api.healthz}),
    ("/readyz", {"GET": api.readyz}),
    ("/api/v1/cluster", {"GET": api.cluster_view}),
    ("/internal/v1/cluster/ping", {"GET": api.cluster_ping}),
    ("/metrics", {"GET": api.metrics}),
    ("/openapi.json", {"GET": api.openapi}),
]


def route_table() -> list[tuple[str, str, Handler]]:
    """Every ``(path, method, handler)`` the app serves; the OpenAPI test checks it."""
    table: list[tuple[str, str, Handler]] = []
    for prefix in ("/api/v1/jobs", f"{_NS}/jobs"):
        for suffix, handlers in JOB_ROUTES:
            table.extend((prefix + suffix, m, h) for m, h in handlers.items())
    for path, handlers in OTHER_ROUTES:
        table.extend((path, m, h) for m, h in handlers.items())
    return table


def routes() -> list[HandlerRoute]:
    return [HandlerRoute(path, handler, method) for path, method, handler in route_table()]
