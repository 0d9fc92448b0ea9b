"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Written by hand next to the handlers; ``tests/test_openapi.py`` checks that it
names exactly the routes the app serves and that real responses match its
schemas.
"""

from __future__ import annotations

from typing import Any

from . import __version__

__all__ = ["build_openapi"]

_TS = {"type": "string", "format": "date-time"}
_TS_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_NAME = "^[a-z0-9][a-z0-9._-]{0,62}$"
_JOB_ID = "^[a-z0-9][a-z0-9._-]{0,127}$"
_STATUSES = ["Queued", "Running", "Succeeded", "Failed", "Cancelled"]
_DURATION = {
    "description": "Seconds, or an ISO-8601 duration (PT1H, P7D, P1W).",
    "oneOf": [{"type": "number", "minimum": 1}, {"type": "string"}],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(
    schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "Entity tag of the representation"}}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail", "requestId"],
        "properties": {
            "type": {"type": "string", "description": "urn:aos:problem:<slug>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "requestId": {"type": ["string", "null"]},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["pointer", "detail"],
                    "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
            "rawUrl": {"type": "string"},
        },
    },
    "Metadata": {
        "type": "object",
        "description": "title, description and tags, plus any other JSON fields (size-limited).",
        "properties": {
            "title": {"type": "string", "maxLength": 256},
            "description": {"type": "string", "maxLength": 4096},
            "tags": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[A-Za-z0-9._:/=+@-]{1,64}$"},
            },
        },
    },
    "RetentionPolicy": {
        "type": "object",
        "required": ["ttl"],
        "additionalProperties": False,
        "properties": {"ttl": _DURATION},
    },
    "CreateJob": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "namespace": {"type": "string", "pattern": _NAME},
            "jobId": {"type": "string", "pattern": _JOB_ID},
            "metadata": _ref("Metadata"),
            "webhookUrl": {"type": ["string", "null"], "format": "uri"},
            "retentionPolicy": {"oneOf": [_ref("RetentionPolicy"), {"type": "null"}]},
        },
    },
    "JobError": {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "code": {"type": "string"},
            "details": {},
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "namespace",
            "jobId",
            "status",
            "progress",
            "estimatedCompletion",
            "metadata",
            "webhookUrl",
            "retentionPolicy",
            "createdAt",
            "updatedAt",
            "startedAt",
            "completedAt",
            "error",
            "currentVersion",
            "lastSeq",
            "expiresAt",
        ],
        "properties": {
            "namespace": {"type": "string", "pattern": _NAME},
            "jobId": {"type": "string", "pattern": _JOB_ID},
            "status": {"enum": _STATUSES},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "estimatedCompletion": _TS_OR_NULL,
            "metadata": _ref("Metadata"),
            "webhookUrl": {"type": ["string", "null"]},
            "retentionPolicy": {
                "type": "object",
                "required": ["ttl"],
                "properties": {"ttl": {"type": ["integer", "null"]}},
            },
            "createdAt": _TS,
            "updatedAt": _TS,
            "startedAt": _TS_OR_NULL,
            "completedAt": _TS_OR_NULL,
            "error": {"oneOf": [_ref("JobError"), {"type": "null"}]},
            "currentVersion": {"type": "integer", "minimum": 1},
            "lastSeq": {"type": "integer", "minimum": 1},
            "expiresAt": _TS_OR_NULL,
        },
    },
    "JobList": {
        "type": "object",
        "required": ["items", "nextCursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Job")},
            "nextCursor": {"type": ["string", "null"]},
        },
    },
    "JobStatus": {
        "type": "object",
        "required": ["jobId", "status", "progress", "estimatedCompletion", "lastSeq", "updatedAt"],
        "properties": {
            "jobId": {"type": "string"},
            "status": {"enum": _STATUSES},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "estimatedCompletion": _TS_OR_NULL,
            "lastSeq": {"type": "integer"},
            "updatedAt": _TS,
        },
    },
    "StatusPatch": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "status": {"enum": _STATUSES},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "estimatedCompletion": _TS_OR_NULL,
            "error": {"oneOf": [{"type": "string"}, _ref("JobError")]},
        },
    },
    "AppendResult": {
        "type": "object",
        "required": ["seq", "version", "index", "size"],
        "properties": {
            "seq": {"type": "integer"},
            "version": {"type": "integer"},
            "index": {"type": "integer", "minimum": 0},
            "size": {"type": "integer", "minimum": 1},
        },
    },
    "NewVersion": {
        "type": "object",
        "required": ["version", "seq"],
        "properties": {"version": {"type": "integer"}, "seq": {"type": "integer"}},
    },
    "Output": {
        "type": "object",
        "required": [
            "jobId",
            "version",
            "format",
            "contentType",
            "encoding",
            "size",
            "chunks",
            "completedAt",
            "output",
        ],
        "properties": {
            "jobId": {"type": "string"},
            "version": {"type": "integer"},
            "format": {"enum": ["text", "json", "binary", None]},
            "contentType": {"type": ["string", "null"]},
            "encoding": {
                "enum": ["utf-8", "base64", "json"],
                "description": "utf-8: output is the text; base64: the bytes in base64; "
                "json: output is the parsed JSON document",
            },
            "size": {"type": "integer"},
            "chunks": {"type": "integer"},
            "sha256": {"type": ["string", "null"]},
            "completedAt": _TS_OR_NULL,
            "output": {},
        },
    },
    "Version": {
        "type": "object",
        "required": [
            "version",
            "current",
            "complete",
            "format",
            "contentType",
            "size",
            "storedSize",
            "chunks",
            "sha256",
            "createdAt",
            "completedAt",
        ],
        "properties": {
            "version": {"type": "integer"},
            "current": {"type": "boolean", "description": "the version chunks go to"},
            "complete": {
                "type": "boolean",
                "description": "takes no more chunks (the job ended, a newer version "
                "started, or an upload finished it)",
            },
            "format": {"enum": ["text", "json", "binary", None]},
            "contentType": {"type": ["string", "null"]},
            "size": {"type": "integer", "description": "bytes of output"},
            "storedSize": {"type": "integer", "description": "bytes stored, after compression"},
            "chunks": {"type": "integer"},
            "sha256": {
                "type": ["string", "null"],
                "description": "hex SHA-256 of the output, once the version is complete "
                "and digested",
            },
            "createdAt": {"type": "string", "format": "date-time"},
            "completedAt": _TS_OR_NULL,
        },
    },
    "VersionList": {
        "type": "object",
        "required": ["jobId", "currentVersion", "items"],
        "properties": {
            "jobId": {"type": "string"},
            "currentVersion": {"type": "integer"},
            "items": {"type": "array", "items": _ref("Version")},
        },
    },
    "NamespaceConfig": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "defaultRetentionPolicy": {"oneOf": [_ref("RetentionPolicy"), {"type": "null"}]},
            "webhookUrl": {"type": ["string", "null"], "format": "uri"},
            "webhookRetrySchedule": {
                "type": ["array", "null"],
                "maxItems": 20,
                "items": _DURATION,
                "description": "Waits before each retry; default 5s, 5m, 30m, 2h, 5h, 10h, 10h",
            },
            "webhookSecret": {
                "type": "string",
                "pattern": "^whsec_",
                "description": "Replace the signing secrets with this one",
            },
            "quotas": {"oneOf": [_ref("Quotas"), {"type": "null"}]},
            "rateLimits": {"oneOf": [_ref("RateLimits"), {"type": "null"}]},
            "subscriberKeys": {
                "type": ["array", "null"],
                "maxItems": 20,
                "description": (
                    "Keys that sign subscriber tokens (omitted: kept as they are; given: they "
                    "replace all, the service's own aos-… key too unless listed as {kid} alone)"
                ),
                "items": {
                    "type": "object",
                    "required": ["kid"],
                    "additionalProperties": False,
                    "properties": {
                        "kid": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                        "alg": {"enum": ["HS256", "EdDSA"]},
                        "secret": {"type": "string", "minLength": 32},
                        "publicKey": {"type": "string"},
                    },
                },
            },
            "auditRetention": {
                "oneOf": [_DURATION, {"type": "null"}],
                "description": "How long audit entries are kept (null: AOS_AUDIT_RETENTION)",
            },
        },
    },
    "Quotas": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: {"type": ["integer", "null"], "minimum": 0}
            for name in ("maxJobs", "maxStoredBytes", "maxConcurrentStreams", "maxOutputBytes")
        },
    },
    "RateLimits": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["rate", "burst"],
                        "additionalProperties": False,
                        "properties": {
                            "rate": {"type": "number", "minimum": 1 / 3600},
                            "burst": {"type": "number", "minimum": 1},
                        },
                    },
                    {"type": "null"},
                ]
            }
            for name in ("namespace", "perKey", "statusPolls")
        },
    },
    "Namespace": {
        "type": "object",
        "required": [
            "name",
            "defaultRetentionPolicy",
            "webhookUrl",
            "webhookRetrySchedule",
            "webhookSecrets",
            "createdAt",
            "updatedAt",
        ],
        "properties": {
            "name": {"type": "string", "pattern": _NAME},
            "defaultRetentionPolicy": {
                "type": ["object", "null"],
                "properties": {"ttl": {"type": "integer"}},
            },
            "webhookUrl": {"type": ["string", "null"]},
            "webhookRetrySchedule": {"type": ["array", "null"], "items": {"type": "number"}},
            "webhookSecrets": {
                "type": "array",
                "description": "Signing secrets, newest first; all unexpired ones sign",
                "items": {
                    "type": "object",
                    "required": ["secret", "createdAt", "expiresAt"],
                    "properties": {
                        "secret": {"type": "string", "pattern": "^whsec_"},
                        "createdAt": _TS,
                        "expiresAt": _TS_OR_NULL,
                    },
                },
            },
            "quotas": {"oneOf": [_ref("Quotas"), {"type": "null"}]},
            "rateLimits": {"oneOf": [_ref("RateLimits"), {"type": "null"}]},
            "subscriberKeys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kid", "alg", "managed"],
                    "properties": {
                        "kid": {"type": "string"},
                        "alg": {"enum": ["HS256", "EdDSA"]},
                        "managed": {"type": "boolean"},
                        "publicKey": {"type": "string"},
                    },
                },
            },
            "auditRetention": {"type": ["integer", "null"]},
            "createdAt": _TS,
            "updatedAt": _TS,
        },
    },
    "Delivery": {
        "type": "object",
        "required": [
            "deliveryId",
            "jobId",
            "eventType",
            "url",
            "state",
            "attempts",
            "nextAttemptAt",
            "createdAt",
            "updatedAt",
            "lastStatus",
            "lastError",
            "log",
            "payload",
        ],
        "properties": {
            "deliveryId": {"type": "string", "description": "The webhook-id header"},
            "jobId": {"type": "string"},
            "eventType": {"enum": ["job.status", "job.output", "job.completed"]},
            "url": {"type": "string"},
            "state": {"enum": ["pending", "succeeded", "dead"]},
            "attempts": {"type": "integer"},
            "nextAttemptAt": _TS_OR_NULL,
            "createdAt": _TS,
            "updatedAt": _TS,
            "lastStatus": {"type": ["integer", "null"]},
            "lastError": {"type": ["string", "null"]},
            "log": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "status", "latencyMs", "error", "response"],
                    "properties": {
                        "at": _TS,
                        "status": {"type": ["integer", "null"]},
                        "latencyMs": {"type": "number"},
                        "error": {"type": ["string", "null"]},
                        "response": {"type": ["string", "null"]},
                    },
                },
            },
            "payload": {"type": "object", "required": ["type", "timestamp", "data"]},
        },
    },
    "DeliveryList": {
        "type": "object",
        "required": ["items", "nextCursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Delivery")},
            "nextCursor": {"type": ["string", "null"]},
        },
    },
    "Endpoint": {
        "type": "object",
        "required": ["url", "disabled", "disabledAt", "reason"],
        "properties": {
            "url": {"type": "string"},
            "disabled": {"type": "boolean"},
            "disabledAt": _TS_OR_NULL,
            "reason": {"type": ["string", "null"]},
        },
    },
    "KeyRequest": {
        "type": "object",
        "required": ["role"],
        "additionalProperties": False,
        "properties": {
            "role": {"enum": ["admin", "producer", "consumer"]},
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "expiresIn": _DURATION,
            "expiresAt": {"type": "string", "format": "date-time"},
        },
    },
    "KeyInfo": {
        "type": "object",
        "required": [
            "keyId",
            "namespace",
            "role",
            "name",
            "state",
            "createdAt",
            "expiresAt",
            "revokedAt",
            "lastUsedAt",
        ],
        "properties": {
            "keyId": {"type": "string"},
            "namespace": {"type": "string"},
            "role": {"enum": ["admin", "producer", "consumer"]},
            "name": {"type": ["string", "null"]},
            "state": {"enum": ["active", "expired", "revoked"]},
            "createdAt": _TS,
            "expiresAt": _TS_OR_NULL,
            "revokedAt": _TS_OR_NULL,
            "lastUsedAt": {
                **_TS_OR_NULL,
                "description": "When the key last authenticated a request (to about a minute)",
            },
        },
    },
    "Key": {
        "allOf": [
            _ref("KeyInfo"),
            {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": {"type": "string", "description": "Shown once; only its hash is stored."}
                },
            },
        ]
    },
    "KeyRotation": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"gracePeriod": {**_DURATION, "description": "How long the old key works"}},
    },
    "TokenRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "jobId": {"type": "string", "pattern": _JOB_ID},
            "subject": {"type": "string", "minLength": 1, "maxLength": 128},
            "ttl": _DURATION,
        },
    },
    "Token": {
        "type": "object",
        "required": ["token", "tokenType", "namespace", "jobId", "subject", "expiresAt"],
        "properties": {
            "token": {
                "type": "string",
                "description": "A JWT: Authorization: Bearer, or ?access_token=",
            },
            "tokenType": {"const": "Bearer"},
            "namespace": {"type": "string"},
            "jobId": {"type": ["string", "null"]},
            "subject": {"type": ["string", "null"]},
            "expiresAt": _TS,
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "at", "action", "actor", "outcome", "target", "requestId", "detail"],
        "properties": {
            "id": {"type": "string"},
            "at": _TS,
            "action": {"type": "string"},
            "actor": {"type": "string", "description": "root, key:<keyId>, token:<sub>"},
            "outcome": {"enum": ["success", "failure"]},
            "target": {"type": ["string", "null"]},
            "requestId": {"type": ["string", "null"]},
            "detail": {"type": "object"},
        },
    },
}

_COMMON_PROBLEMS = {
    "400": _problem("Bad request (path, query or header)"),
    "401": _problem("Missing or invalid credentials"),
    "403": _problem("The key may not do this in this namespace"),
    "429": {
        **_problem("Over a rate limit or a quota; see Retry-After"),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
    "503": _problem("The store is unavailable; nothing was written"),
}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**responses, **_COMMON_PROBLEMS},
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _json_body(name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


_NS_HEADER = _header(
    "X-Namespace", {"type": "string", "pattern": _NAME}, "Namespace of the call (short paths)"
)
_NS_QUERY = _query(
    "namespace", {"type": "string", "pattern": _NAME}, "Namespace of the call (short paths)"
)
_IF_NONE_MATCH = _header("If-None-Match", {"type": "string"}, "Answer 304 if the ETag matches")
_VERSION = _query("version", {"type": "integer", "minimum": 1}, "Output version (default: current)")
_NOT_FOUND = _problem("No such job (or version) in the namespace")
_RAW_HEADERS = {
    "Content-Length": {"schema": {"type": "integer"}},
    "Accept-Ranges": {"schema": {"type": "string"}},
    "Repr-Digest": {
        "schema": {"type": "string"},
        "description": "sha-256 of the whole output (RFC 9530), once the version is digested",
    },
}
_CONFLICT = _problem("The change conflicts with the job's state")
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["status", "progress", "version", "chunk", "reset", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the entry's seq"},
    },
}


def _job_operations(prefix: str, short: bool) -> dict[str, dict[str, Any]]:
    tag = "" if short else "InNamespace"
    extra = [_NS_HEADER, _NS_QUERY] if short else []
    path_params = (
        [
            {
                "name": "namespace",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": _NAME},
            }
        ]
        if not short
        else []
    )
    job_param = {
        "name": "jobId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": _JOB_ID},
    }
    jp = [*path_params, job_param, *extra]

    def op(operation_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _operation(operation_id + tag, *args, **kwargs)

    return {
        f"{prefix}": {
            "parameters": [*path_params, *extra],
            "post": op(
                "createJob",
                "Submit a job",
                {
                    "201": _json(
                        _ref("Job"),
                        "Created",
                        {**_ETAG, "Location": {"schema": {"type": "string"}}},
                    ),
                    "200": _json(_ref("Job"), "The same request made before: the existing job"),
                    "404": _problem("No such namespace"),
                    "409": _problem("The job id exists with a different body"),
                    "413": _problem("Body or metadata too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("CreateJob"),
            ),
            "get": op(
                "listJobs",
                "List jobs, newest first by default",
                {"200": _json(_ref("JobList"), "One page")},
                parameters=[
                    _query("status", {"type": "string"}, "Comma-separated statuses"),
                    _query("tag", {"type": "string"}, "Only jobs with this tag"),
                    _query("createdAfter", _TS, "Exclusive lower bound"),
                    _query("createdBefore", _TS, "Exclusive upper bound"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "Page size (default 50)",
                    ),
                    _query("order", {"enum": ["asc", "desc"]}, "By creation time"),
                    _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
                ],
            ),
        },
        f"{prefix}/{{jobId}}": {
            "parameters": jp,
            "get": op(
                "getJob",
                "Read a job",
                {
                    "200": _json(_ref("Job"), "The job", _ETAG),
                    "304": {"description": "Not modified"},
                    "404": _NOT_FOUND,
                },
                parameters=[_IF_NONE_MATCH],
            ),
            "delete": op(
                "deleteJob",
                "Delete a finished job, its output and its log",
                {
                    "204": {"description": "Deleted"},
                    "404": _NOT_FOUND,
                    "409": _problem("The job is not finished"),
                },
            ),
        },
        f"{prefix}/{{jobId}}/status": {
            "parameters": jp,
            "get": op(
                "getJobStatus",
                "Status, with ETag; long-poll with ?wait and If-None-Match",
                {
                    "200": _json(_ref("JobStatus"), "Status", _ETAG),
                    "304": {"description": "Unchanged (or unchanged for the whole wait)"},
                    "404": _NOT_FOUND,
                },
                parameters=[
                    _IF_NONE_MATCH,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 60},
                        "Seconds to hold the request until the ETag changes",
                    ),
                ],
            ),
            "patch": op(
                "updateJobStatus",
                "Change status, progress or estimated completion",
                {
                    "200": _json(_ref("JobStatus"), "The new status", _ETAG),
                    "404": _NOT_FOUND,
                    "409": _problem("Invalid transition, or the job is finished"),
                    "413": _problem("Body too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("StatusPatch"),
            ),
        },
        f"{prefix}/{{jobId}}/cancel": {
            "parameters": jp,
            "post": op(
                "cancelJob",
                "Cancel a job",
                {
                    "200": _json(_ref("Job"), "Cancelled", _ETAG),
                    "404": _NOT_FOUND,
                    "409": _problem("The job is finished"),
                },
            ),
        },
        f"{prefix}/{{jobId}}/output": {
            "parameters": jp,
            "post": op(
                "appendOutput",
                "Append one chunk to the current version",
                {
                    "201": _json(_ref("AppendResult"), "Stored"),
                    "200": _json(_ref("AppendResult"), "A retry of a stored X-Chunk-Index"),
                    "404": _NOT_FOUND,
                    "409": _CONFLICT,
                    "413": _problem("Chunk too large"),
                    "415": _problem("Text or JSON in a charset other than UTF-8"),
                    "422": _problem("Empty chunk, or text/JSON that is not UTF-8"),
                },
                parameters=[
                    _header(
                        "X-Chunk-Index",
                        {"type": "integer", "minimum": 0},
                        "Position of the chunk in its version, for safe retries",
                    )
                ],
                body={
                    "required": True,
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "string"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
            ),
            "get": op(
                "getOutput",
                "The output of one version as JSON",
                {
                    "200": _json(_ref("Output"), "Output", _ETAG),
                    "304": {"description": "Not modified"},
                    "404": _NOT_FOUND,
                    "413": _problem("Too large for this route: use /output/raw"),
                },
                parameters=[_VERSION, _IF_NONE_MATCH],
            ),
            "put": op(
                "uploadOutput",
                "Stream a whole output of any size into the current version, completing it",
                {
                    "201": _json(_ref("Version"), "Stored; the version is complete"),
                    "200": _json(_ref("Version"), "A resumed upload finished"),
                    "400": _problem("The upload was cut off: resume it with X-Chunk-Index"),
                    "404": _NOT_FOUND,
                    "409": _problem(
                        "The version is complete, or holds chunks and X-Chunk-Index does not "
                        "resume after them (the problem gives nextChunkIndex and size)"
                    ),
                    "413": _problem("The version would pass AOS_MAX_VERSION_BYTES"),
                    "415": _problem("Text or JSON in a charset other than UTF-8"),
                    "422": _problem("Text or JSON that is not UTF-8"),
                },
                parameters=[
                    _header(
                        "X-Chunk-Index",
                        {"type": "integer", "minimum": 0},
                        "Resume a dropped upload: the number of chunks stored, with the body "
                        "from byte `size` of the version on",
                    )
                ],
                body={
                    "required": True,
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
            ),
        },
        f"{prefix}/{{jobId}}/output/raw": {
            "parameters": jp,
            "get": op(
                "getRawOutput",
                "The bytes of one version, streamed",
                {
                    "200": {
                        "description": "The bytes (stored zstd frames as they are, with "
                        "Content-Encoding: zstd, to a client that accepts zstd)",
                        "headers": {**_ETAG, **_RAW_HEADERS},
                        # The stored bytes in the version's content type: no schema
                        # (OpenAPI 3.1's way for binary content; a JSON one is JSON).
                        "content": {"*/*": {}},
                    },
                    "206": {
                        "description": "The byte range asked for",
                        "headers": {
                            **_ETAG,
                            **_RAW_HEADERS,
                            "Content-Range": {"schema": {"type": "string"}},
                        },
                        "content": {"*/*": {}},
                    },
                    "304": {"description": "Not modified"},
                    "404": _NOT_FOUND,
                    "416": _problem("The range selects no byte of the output"),
                },
                parameters=[
                    _VERSION,
                    _IF_NONE_MATCH,
                    _header("Range", {"type": "string"}, "One byte range: bytes=first-last"),
                    _header(
                        "If-Range", {"type": "string"}, "Send the range only if the ETag matches"
                    ),
                    _header(
                        "Accept-Encoding",
                        {"type": "string"},
                        "zstd: the stored frames as they are, when every chunk is compressed",
                    ),
                ],
            ),
        },
        f"{prefix}/{{jobId}}/versions": {
            "parameters": jp,
            "post": op(
                "startVersion",
                "Start a new output version",
                {
                    "201": _json(_ref("NewVersion"), "The new version"),
                    "404": _NOT_FOUND,
                    "409": _CONFLICT,
                },
            ),
            "get": op(
                "listVersions",
                "The job's output versions with their sizes and digests",
                {"200": _json(_ref("VersionList"), "Oldest first"), "404": _NOT_FOUND},
            ),
        },
        f"{prefix}/{{jobId}}/deliveries": {
            "parameters": jp,
            "get": op(
                "listJobDeliveries",
                "The job's webhook deliveries and their attempts",
                {"200": _json(_ref("DeliveryList"), "One page, newest first"), "404": _NOT_FOUND},
                parameters=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "Page size (default 50)",
                    ),
                    _query("cursor", {"type": "string"}, "nextCursor of the last page"),
                ],
            ),
        },
        f"{prefix}/{{jobId}}/deliveries/{{deliveryId}}/retry": {
            "parameters": [
                *jp,
                {
                    "name": "deliveryId",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
            ],
            "post": op(
                "retryDelivery",
                "Replay one delivery now, with a fresh retry budget",
                {
                    "202": _json(_ref("Delivery"), "Queued"),
                    "404": _problem("No such delivery for this job"),
                    "409": _problem("The delivery is being attempted right now"),
                },
            ),
        },
        f"{prefix}/{{jobId}}/stream": {
            "parameters": jp,
            "get": op(
                "streamJob",
                "Server-Sent Events: the log after the cursor, then live; `end` after the "
                "final status",
                {
                    "200": {
                        "description": "An event stream",
                        # One event (OpenAPI 3.2's itemSchema; the events are
                        # what an EventSource gets: event, data, last id).
                        "content": {"text/event-stream": {"itemSchema": _SSE_EVENT}},
                    },
                    "204": {"description": "The job is finished and the cursor is at its end"},
                    "404": _NOT_FOUND,
                },
                parameters=[
                    _header(
                        "Last-Event-ID", {"type": "integer", "minimum": 0}, "Resume after this seq"
                    ),
                    _query(
                        "lastEventId",
                        {"type": "integer", "minimum": 0},
                        "Resume after this seq (when headers cannot be set)",
                    ),
                    _query(
                        "from",
                        {"enum": ["beginning", "latest"]},
                        "Without a cursor: the whole log (default) or only new entries",
                    ),
                ],
            ),
        },
    }


_KEY_PARAM = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-z]{1,64}$"},
}


def build_openapi() -> dict[str, Any]:
    ns_param = {
        "name": "namespace",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": _NAME},
    }
    paths: dict[str, Any] = {
        **_job_operations("/api/v1/jobs", short=True),
        **_job_operations("/api/v1/namespaces/{namespace}/jobs", short=False),
        "/api/v1/namespaces/{namespace}": {
            "parameters": [ns_param],
            "put": _operation(
                "putNamespace",
                "Create or replace a namespace's configuration",
                {
                    "201": _json(_ref("Namespace"), "Created"),
                    "200": _json(_ref("Namespace"), "Replaced"),
                    "413": _problem("Body too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("NamespaceConfig", required=False),
            ),
            "get": _operation(
                "getNamespace",
                "Read a namespace's configuration",
                {
                    "200": _json(_ref("Namespace"), "The namespace"),
                    "404": _problem("No such namespace"),
                },
            ),
        },
        "/api/v1/namespaces/{namespace}/keys": {
            "parameters": [ns_param],
            "post": _operation(
                "createKey",
                "Create an API key (shown once)",
                {
                    "201": _json(_ref("Key"), "Created"),
                    "404": _problem("No such namespace"),
                    "409": _problem("The namespace has as many keys as it may"),
                    "413": _problem("Body too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("KeyRequest"),
            ),
            "get": _operation(
                "listKeys",
                "Every key of the namespace, revoked and expired ones too (never a secret)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ref("KeyInfo")}},
                        },
                        "Keys",
                    )
                },
            ),
        },
        "/api/v1/namespaces/{namespace}/keys/{key_id}": {
            "parameters": [ns_param, _KEY_PARAM],
            "get": _operation(
                "getKey",
                "One key",
                {"200": _json(_ref("KeyInfo"), "The key"), "404": _problem("No such key")},
            ),
            "delete": _operation(
                "revokeKey",
                "Revoke a key: it stops working (on other nodes within AOS_KEY_CACHE)",
                {"204": {"description": "Revoked"}, "404": _problem("No such key")},
            ),
        },
        "/api/v1/namespaces/{namespace}/keys/{key_id}/rotate": {
            "parameters": [ns_param, _KEY_PARAM],
            "post": _operation(
                "rotateKey",
                "A new key with the same role; the old one expires after the grace period",
                {
                    "201": _json(_ref("Key"), "The new key"),
                    "404": _problem("No such key"),
                    "409": _problem("The key is revoked or expired"),
                    "413": _problem("Body too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("KeyRotation", required=False),
            ),
        },
        "/api/v1/namespaces/{namespace}/subscriber-tokens": {
            "parameters": [ns_param],
            "post": _operation(
                "mintSubscriberToken",
                "A short-lived read-only token for a browser (any key of the namespace)",
                {
                    "201": _json(_ref("Token"), "The token"),
                    "404": _problem("No such namespace"),
                    "413": _problem("Body too large"),
                    "422": _problem("Invalid body"),
                },
                body=_json_body("TokenRequest", required=False),
            ),
        },
        "/api/v1/namespaces/{namespace}/audit": {
            "parameters": [ns_param],
            "get": _operation(
                "readAuditLog",
                "The namespace's audit log, newest first",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items", "nextCursor"],
                            "properties": {
                                "items": {"type": "array", "items": _ref("AuditEntry")},
                                "nextCursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of entries",
                    )
                },
                parameters=[
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size"
                    ),
                    _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
                    _query(
                        "since", {"type": "string", "format": "date-time"}, "Entries at or after"
                    ),
                    _query("until", {"type": "string", "format": "date-time"}, "Entries before"),
                    _query("action", {"type": "string"}, "Only actions starting with this"),
                ],
            ),
        },
        "/api/v1/namespaces/{namespace}/webhook-secrets": {
            "parameters": [ns_param],
            "post": _operation(
                "rotateWebhookSecret",
                "Make a new signing secret; the current ones keep signing for the grace period",
                {
                    "201": _json(_ref("Namespace"), "The namespace with its secrets"),
                    "404": _problem("No such namespace"),
                    "422": _problem("Invalid body"),
                },
                body={
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"gracePeriod": _DURATION},
                            }
                        }
                    },
                },
            ),
        },
        "/api/v1/namespaces/{namespace}/webhook-endpoints": {
            "parameters": [ns_param],
            "get": _operation(
                "listWebhookEndpoints",
                "Endpoints known to the namespace",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ref("Endpoint")}},
                        },
                        "Endpoints",
                    )
                },
            ),
        },
        "/api/v1/namespaces/{namespace}/webhook-endpoints/enable": {
            "parameters": [ns_param],
            "post": _operation(
                "enableWebhookEndpoint",
                "Enable an endpoint that a 410 disabled",
                {"200": _json(_ref("Endpoint"), "Enabled"), "422": _problem("Invalid body")},
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["url"],
                                "additionalProperties": False,
                                "properties": {"url": {"type": "string"}},
                            }
                        }
                    },
                },
            ),
        },
        "/api/v1/namespaces/{namespace}/deliveries": {
            "parameters": [ns_param],
            "get": _operation(
                "listDeliveries",
                "The namespace's deliveries, e.g. the dead ones",
                {"200": _json(_ref("DeliveryList"), "One page, newest first")},
                parameters=[
                    _query("state", {"enum": ["pending", "succeeded", "dead"]}, "Only these"),
                    _query("since", _TS, "Created at or after"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "Page size (default 50)",
                    ),
                    _query("cursor", {"type": "string"}, "nextCursor of the last page"),
                ],
            ),
        },
        "/api/v1/namespaces/{namespace}/deliveries/replay": {
            "parameters": [ns_param],
            "post": _operation(
                "replayDeadDeliveries",
                "Replay the dead deliveries created since a time",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["requeued", "more"],
                            "properties": {
                                "requeued": {"type": "integer"},
                                "more": {"type": "boolean"},
                            },
                        },
                        "How many were requeued; more: call again for the rest",
                    ),
                    "422": _problem("Invalid body"),
                },
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["since"],
                                "additionalProperties": False,
                                "properties": {"since": _TS},
                            }
                        }
                    },
                },
            ),
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store answers",
                "description": "Also a short summary of this node's ring under `cluster`: "
                "`node`, `ring` (a digest: equal on nodes that agree), `members`, "
                "`ownedShards` (of 1024), `settled`.",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "Ready"),
                    "503": _problem("The store does not answer"),
                },
            }
        },
        "/api/v1/cluster": {
            "get": {
                "operationId": "getCluster",
                "summary": "This node's view of the cluster (root admin token)",
                "description": "The ring digest, this node's owned shards, and every "
                "member it knows: URL, weight, source (self, static, dns, announced, "
                "gossip), state (up or down), shards owned, and its last health check.",
                "responses": {
                    "200": _json({"type": "object"}, "The cluster as this node sees it"),
                    "401": _problem("No valid credentials"),
                    "403": _problem("Not the root admin token"),
                },
            }
        },
        "/internal/v1/cluster/ping": {
            "get": {
                "operationId": "clusterPing",
                "summary": "Health check between the members of a cluster",
                "description": "With `AOS_CLUSTER_SECRET` set, callers must send it in "
                "`X-AOS-Cluster-Auth`; they may announce themselves with `X-AOS-Node` and "
                "`X-AOS-Node-URL`, and learn the members.",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "This node's id, URL, weight and ring"),
                    "403": _problem("The cluster secret is missing or wrong"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI")},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Async Output Service",
            "version": __version__,
            "description": "Run long jobs and deliver their output asynchronously.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "AOS_ADMIN_TOKEN, or a namespace key aos.<ns>.<id>.<secret>",
                }
            },
        },
    }
