"""Reading and checking request input, with a problem for everything wrong.

Byte-size limits answer ``413``; everything else that is wrong with a body
answers ``422`` with one entry per field in ``errors``; a wrong query
parameter or header answers ``400``. Nothing is written before a request has
passed these checks.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request

from storage_adapters import AuditQuery, JobQuery, JobStatus, OutputFormat

from . import tokens
from .auth import KEY_ROLES, Role
from .clock import parse_timestamp
from .durations import parse_duration
from .ids import valid_job_id, valid_namespace
from .jobs import NewJob
from .lifecycle import UNSET, StatusPatch
from .problems import Problem
from .settings import Settings

__all__ = [
    "AuditCursor",
    "Cursor",
    "chunk_format",
    "is_count",
    "is_int64",
    "parse_audit_query",
    "parse_chunk_index",
    "parse_grace_period",
    "parse_key_request",
    "parse_list_query",
    "parse_namespace_config",
    "parse_new_job",
    "parse_status_patch",
    "parse_token_request",
    "read_body",
    "read_json",
]

MAX_TTL_SECONDS = 10 * 366 * 86_400
MAX_URL_LENGTH = 2048
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_ERROR_MESSAGE = 4096
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 50
TAG_RE = re.compile(r"[A-Za-z0-9._:/=+@-]{1,64}")


class _Errors:
    """Collects field errors; :meth:`raise_if_any` turns them into one 422."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, pointer: str, detail: str) -> None:
        self.items.append({"pointer": pointer, "detail": detail})

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            where = first["pointer"] or "the body"
            raise Problem("validation-failed", f"{where}: {first['detail']}", errors=self.items)


# -- bodies ---------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Problem("bad-request", "Content-Length is not a number") from None
        if size > limit:
            raise Problem("payload-too-large", f"the body is {size} bytes; the limit is {limit}")
    parts: list[bytes] = []
    received = 0
    async for part in request.stream():
        received += len(part)
        if received > limit:
            raise Problem("payload-too-large", f"the body passes the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def read_json(request: Request, limit: int, *, allow_empty: bool = False) -> dict[str, Any]:
    """A JSON object body; ``{}`` for an empty body when ``allow_empty``."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if allow_empty:
            return {}
        raise Problem("malformed-json", "the body is empty; send a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem("malformed-json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Problem(
            "validation-failed",
            "the body must be a JSON object",
            errors=[{"pointer": "", "detail": "must be an object"}],
        )
    return value


def _unknown_fields(
    body: Mapping[str, Any], allowed: set[str], errors: _Errors, prefix: str = ""
) -> None:
    for name in body:
        if name not in allowed:
            errors.add(f"{prefix}/{name}", f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _url(value: Any, pointer: str, errors: _Errors) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(pointer, "must be a URL string")
        return None
    if len(value) > MAX_URL_LENGTH:
        errors.add(pointer, f"must be at most {MAX_URL_LENGTH} characters")
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        errors.add(pointer, "must not contain spaces or control characters")
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        errors.add(pointer, "must be an absolute http:// or https:// URL")
        return None
    return value


def _ttl(value: Any, pointer: str, errors: _Errors) -> int | None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        errors.add(pointer, str(exc))
        return None
    if seconds < 1 or seconds > MAX_TTL_SECONDS:
        errors.add(pointer, f"must be between 1 second and {MAX_TTL_SECONDS} seconds")
        return None
    return math.ceil(seconds)


def _retention(value: Any, pointer: str, errors: _Errors) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add(pointer, 'must be an object like {"ttl": "P7D"}')
        return None
    _unknown_fields(value, {"ttl"}, errors, pointer)
    if "ttl" not in value:
        errors.add(f"{pointer}/ttl", "is required")
        return None
    return _ttl(value["ttl"], f"{pointer}/ttl", errors)


def _metadata(value: Any, settings: Settings, errors: _Errors) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add("/metadata", "must be an object")
        return {}
    size = len(orjson.dumps(value))
    if size > settings.max_metadata_bytes:
        raise Problem(
            "payload-too-large",
            f"metadata is {size} bytes; the limit is {settings.max_metadata_bytes}",
        )
    for name, limit in (("title", MAX_TITLE), ("description", MAX_DESCRIPTION)):
        text = value.get(name)
        if text is not None and (not isinstance(text, str) or len(text) > limit):
            errors.add(f"/metadata/{name}", f"must be a string of at most {limit} characters")
    tags = value.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            errors.add("/metadata/tags", "must be an array of strings")
        elif len(tags) > settings.max_tags:
            errors.add("/metadata/tags", f"at most {settings.max_tags} tags")
        else:
            for i, tag in enumerate(tags):
                if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
                    errors.add(
                        f"/metadata/tags/{i}",
                        "must be 1-64 characters of letters, digits and ._:/=+@-",
                    )
    return value


def parse_new_job(body: Mapping[str, Any], settings: Settings) -> tuple[str | None, NewJob]:
    """``(namespace named in the body, request)`` of a ``POST /jobs`` body."""
    errors = _Errors()
    _unknown_fields(
        body, {"namespace", "jobId", "metadata", "webhookUrl", "retentionPolicy"}, errors
    )
    namespace = body.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not valid_namespace(namespace)):
        errors.add("/namespace", "must match ^[a-z0-9][a-z0-9._-]{0,62}$")
        namespace = None
    job_id = body.get("jobId")
    if job_id is not None and (not isinstance(job_id, str) or not valid_job_id(job_id)):
        errors.add("/jobId", "must match ^[a-z0-9][a-z0-9._-]{0,127}$")
        job_id = None
    metadata = _metadata(body.get("metadata"), settings, errors)
    webhook_url = _url(body.get("webhookUrl"), "/webhookUrl", errors)
    ttl = _retention(body.get("retentionPolicy"), "/retentionPolicy", errors)
    errors.raise_if_any()
    return namespace, NewJob(job_id=job_id, metadata=metadata, webhook_url=webhook_url, ttl=ttl)


def _error_object(value: Any, errors: _Errors) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"message": value}
    if not isinstance(value, dict):
        errors.add("/error", "must be a string or an object with a message")
        return None
    _unknown_fields(value, {"message", "code", "details"}, errors, "/error")
    message = value.get("message")
    if not isinstance(message, str) or not message or len(message) > MAX_ERROR_MESSAGE:
        errors.add("/error/message", f"must be a string of 1-{MAX_ERROR_MESSAGE} characters")
    code = value.get("code")
    if code is not None and (not isinstance(code, str) or len(code) > 128):
        errors.add("/error/code", "must be a string of at most 128 characters")
    return {k: v for k, v in value.items() if v is not None}


def parse_status_patch(body: Mapping[str, Any]) -> StatusPatch:
    errors = _Errors()
    _unknown_fields(body, {"status", "progress", "estimatedCompletion", "error"}, errors)
    if not body:
        errors.add("", "send at least one of status, progress, estimatedCompletion, error")
    status = None
    if "status" in body:
        try:
            status = JobStatus(body["status"])
        except ValueError:
            errors.add("/status", f"must be one of {', '.join(s.value for s in JobStatus)}")
    progress = body.get("progress")
    if progress is not None:
        if (
            isinstance(progress, bool)
            or not isinstance(progress, int | float)
            or not (0 <= progress <= 100)
        ):
            errors.add("/progress", "must be a number from 0 to 100")
            progress = None
        elif isinstance(progress, float) and progress.is_integer():
            progress = int(progress)
    eta: Any = UNSET
    if "estimatedCompletion" in body:
        raw = body["estimatedCompletion"]
        if raw is None:
            eta = None
        elif not isinstance(raw, str):
            errors.add("/estimatedCompletion", "must be an RFC 3339 timestamp or null")
        else:
            try:
                eta = parse_timestamp(raw)
            except ValueError as exc:
                errors.add("/estimatedCompletion", str(exc))
    error = _error_object(body.get("error"), errors)
    if error is not None and status is not JobStatus.FAILED:
        errors.add("/error", "can only be sent with status Failed")
    errors.raise_if_any()
    return StatusPatch(status=status, progress=progress, estimated_completion=eta, error=error)


MAX_RETRIES = 20
MAX_RETRY_DELAY = 7 * 86_400
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/]{32,256}={0,2}")


def _schedule(value: Any, errors: _Errors) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_RETRIES:
        errors.add("/webhookRetrySchedule", f"must be a list of at most {MAX_RETRIES} durations")
        return None
    delays = []
    for i, item in enumerate(value):
        try:
            seconds = parse_duration(item)
        except ValueError as exc:
            errors.add(f"/webhookRetrySchedule/{i}", str(exc))
            continue
        if not 1 <= seconds <= MAX_RETRY_DELAY:
            errors.add(f"/webhookRetrySchedule/{i}", "must be from 1 second to 7 days")
        delays.append(seconds)
    return delays


#: the most anyone may configure: sanity bounds, not defaults
MAX_RATE = 1_000_000.0
#: a request an hour: slower buckets would stay not-full (unforgettable) for ages
MIN_RATE = 1 / 3600
MAX_QUOTA = 1 << 62
QUOTAS = ("maxJobs", "maxStoredBytes", "maxConcurrentStreams", "maxOutputBytes")
RATE_LIMITS = ("namespace", "perKey", "statusPolls")
MAX_SUBSCRIBER_KEYS = 20


def _rate_limits(value: Any, errors: _Errors) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add("/rateLimits", f"must be an object with any of {', '.join(RATE_LIMITS)}")
        return None
    _unknown_fields(value, set(RATE_LIMITS), errors, "/rateLimits")
    limits: dict[str, Any] = {}
    for name in RATE_LIMITS:
        entry, pointer = value.get(name), f"/rateLimits/{name}"
        if entry is None:
            continue
        if not isinstance(entry, dict) or set(entry) != {"rate", "burst"}:
            errors.add(pointer, 'must be {"rate": <per second>, "burst": <requests>}')
            continue
        rate, burst = entry["rate"], entry["burst"]
        if not _number(rate) or not MIN_RATE <= rate <= MAX_RATE:
            errors.add(f"{pointer}/rate", f"must be a number from {MIN_RATE:g} to {MAX_RATE:g}")
        elif not _number(burst) or not 1 <= burst <= MAX_RATE:
            errors.add(f"{pointer}/burst", f"must be a number from 1 to {MAX_RATE:g}")
        else:
            limits[name] = {"rate": rate, "burst": burst}
    return limits or None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _quotas(value: Any, errors: _Errors) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add("/quotas", f"must be an object with any of {', '.join(QUOTAS)}")
        return None
    _unknown_fields(value, set(QUOTAS), errors, "/quotas")
    quotas: dict[str, int] = {}
    for name in QUOTAS:
        entry = value.get(name)
        if entry is None:
            continue
        if not isinstance(entry, int) or isinstance(entry, bool) or not 0 <= entry <= MAX_QUOTA:
            errors.add(f"/quotas/{name}", "must be a whole number from 0, or null for no quota")
        else:
            quotas[name] = entry
    return quotas or None


def _subscriber_keys(value: Any, errors: _Errors) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_SUBSCRIBER_KEYS:
        errors.add("/subscriberKeys", f"must be a list of at most {MAX_SUBSCRIBER_KEYS} keys")
        return None
    keys: list[dict[str, Any]] = []
    for i, entry in enumerate(value):
        try:
            keys.append(tokens.parse_key_config(entry))
        except ValueError as exc:
            errors.add(f"/subscriberKeys/{i}", str(exc))
    if len({k["kid"] for k in keys}) != len(keys):
        errors.add("/subscriberKeys", "kids must be unique")
    return keys


def _audit_retention(value: Any, errors: _Errors) -> int | None:
    if value is None:
        return None
    return _ttl(value, "/auditRetention", errors)


def parse_namespace_config(body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The settings of ``PUT /namespaces/{ns}`` (``{}`` means defaults), and
    the signing secret it sets, if it sets one. ``subscriberKeys`` and
    ``auditRetention`` are in the settings only when the body has them (an
    omitted one keeps its value)."""
    errors = _Errors()
    _unknown_fields(
        body,
        {
            "defaultRetentionPolicy",
            "webhookUrl",
            "webhookRetrySchedule",
            "webhookSecret",
            "quotas",
            "rateLimits",
            "subscriberKeys",
            "auditRetention",
        },
        errors,
    )
    ttl = _retention(body.get("defaultRetentionPolicy"), "/defaultRetentionPolicy", errors)
    webhook_url = _url(body.get("webhookUrl"), "/webhookUrl", errors)
    schedule = _schedule(body.get("webhookRetrySchedule"), errors)
    secret = body.get("webhookSecret")
    if secret is not None and (not isinstance(secret, str) or not SECRET_RE.fullmatch(secret)):
        errors.add("/webhookSecret", "must be whsec_ followed by base64 of 24 or more bytes")
        secret = None
    quotas = _quotas(body.get("quotas"), errors)
    rate_limits = _rate_limits(body.get("rateLimits"), errors)
    subscriber_keys = _subscriber_keys(body.get("subscriberKeys"), errors)
    audit_retention = _audit_retention(body.get("auditRetention"), errors)
    errors.raise_if_any()
    settings: dict[str, Any] = {
        "defaultRetentionPolicy": {"ttl": ttl} if ttl is not None else None,
        "webhookUrl": webhook_url,
        "webhookRetrySchedule": schedule,
        "quotas": quotas,
        "rateLimits": rate_limits,
    }
    if "subscriberKeys" in body:
        settings["subscriberKeys"] = subscriber_keys or []
    if "auditRetention" in body:
        settings["auditRetention"] = audit_retention
    return settings, secret


MAX_KEY_NAME = 128


def _expiry(body: Mapping[str, Any], now: int, errors: _Errors) -> int | None:
    """``expiresIn`` (a duration) or ``expiresAt`` (a timestamp), as µs."""
    if body.get("expiresIn") is not None and body.get("expiresAt") is not None:
        errors.add("/expiresAt", "give expiresIn or expiresAt, not both")
        return None
    if body.get("expiresIn") is not None:
        seconds = _ttl(body["expiresIn"], "/expiresIn", errors)
        return now + seconds * 1_000_000 if seconds is not None else None
    raw = body.get("expiresAt")
    if raw is None:
        return None
    try:
        at = parse_timestamp(raw) if isinstance(raw, str) else None
    except ValueError:
        at = None
    if at is None:
        errors.add("/expiresAt", "must be an RFC 3339 timestamp")
    elif at <= now:
        errors.add("/expiresAt", "is in the past")
    elif at > now + MAX_TTL_SECONDS * 1_000_000:
        errors.add("/expiresAt", f"is more than {MAX_TTL_SECONDS} seconds away")
    else:
        return at
    return None


def parse_key_request(body: Mapping[str, Any], now: int) -> tuple[Role, str | None, int | None]:
    """``(role, name, expires_at)`` of ``POST /namespaces/{ns}/keys``."""
    errors = _Errors()
    _unknown_fields(body, {"role", "name", "expiresIn", "expiresAt"}, errors)
    try:
        role = Role(str(body.get("role")))
        if role not in KEY_ROLES:
            raise ValueError(role)
    except ValueError:
        errors.add("/role", "must be one of admin, producer, consumer")
        role = Role.CONSUMER
    name = body.get("name")
    if name is not None and (
        not isinstance(name, str) or not 1 <= len(name) <= MAX_KEY_NAME or not name.isprintable()
    ):
        errors.add("/name", f"must be a string of 1 to {MAX_KEY_NAME} printable characters")
    expires_at = _expiry(body, now, errors)
    errors.raise_if_any()
    return role, name, expires_at


#: the longest a rotated key or signing secret keeps working
MAX_GRACE = 30 * 86_400


def parse_grace_period(body: Mapping[str, Any], default: float) -> float:
    """The ``{"gracePeriod"}`` body of a rotation (keys, webhook secrets): how
    long (seconds) the old one keeps working; 0 ends it at once."""
    errors = _Errors()
    _unknown_fields(body, {"gracePeriod"}, errors)
    raw = body.get("gracePeriod")
    grace = default
    if raw is not None:
        try:
            grace = parse_duration(raw)
        except ValueError as exc:
            errors.add("/gracePeriod", str(exc))
        else:
            if not 0 <= grace <= MAX_GRACE:
                errors.add("/gracePeriod", "must be from 0 to 30 days")
    errors.raise_if_any()
    return grace


def parse_token_request(
    body: Mapping[str, Any], default_ttl: float, max_ttl: float
) -> tuple[str | None, str | None, int]:
    """``(job_id, subject, ttl seconds)`` of ``POST …/subscriber-tokens``."""
    errors = _Errors()
    _unknown_fields(body, {"jobId", "subject", "ttl"}, errors)
    job_id = body.get("jobId")
    if job_id is not None and (not isinstance(job_id, str) or not valid_job_id(job_id)):
        errors.add("/jobId", "must be a job id: ^[a-z0-9][a-z0-9._-]{0,127}$")
    subject = body.get("subject")
    if subject is not None and (not isinstance(subject, str) or not 1 <= len(subject) <= 128):
        errors.add("/subject", "must be a string of 1 to 128 characters")
    ttl = math.ceil(default_ttl)
    if body.get("ttl") is not None:
        try:
            ttl = math.ceil(parse_duration(body["ttl"]))
        except ValueError as exc:
            errors.add("/ttl", str(exc))
        else:
            if not 1 <= ttl <= max_ttl:
                errors.add("/ttl", f"must be from 1 to {max_ttl:g} seconds")
    errors.raise_if_any()
    return job_id, subject, ttl


class AuditCursor:
    """The opaque ``cursor`` of an audit listing: the last entry id of the page."""

    @staticmethod
    def encode(entry_id: str) -> str:
        return base64.urlsafe_b64encode(b"a:" + entry_id.encode()).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raw = ""
        entry_id = raw[2:]
        if not raw.startswith("a:") or len(entry_id) != 24 or not _HEX.fullmatch(entry_id):
            raise _bad_query("cursor", "is not one this service issued")
        return entry_id


_HEX = re.compile(r"[0-9a-f]+")


def parse_audit_query(params: QueryParams, alive_at: int) -> tuple[AuditQuery, str | None]:
    """The store query of ``GET …/audit`` and its ``action`` filter (a prefix)."""
    raw_limit = params.get("limit", str(DEFAULT_LIST_LIMIT))
    if not is_count(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
        raise _bad_query("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        raw = params.get(name)
        try:
            bounds[name] = f"{max(0, parse_timestamp(raw)):016x}" if raw else None
        except ValueError as exc:
            raise _bad_query(name, str(exc)) from None
        except OverflowError:
            raise _bad_query(name, "is out of range") from None
    max_id = bounds["until"]
    if params.get("cursor"):
        after = AuditCursor.decode(params["cursor"])
        max_id = after if max_id is None else min(max_id, after)
    action = params.get("action") or None
    if action is not None and not re.fullmatch(r"[a-z.]{1,64}", action):
        raise _bad_query("action", "is an action name or prefix such as job. or key.revoke")
    query = AuditQuery(
        limit=int(raw_limit), min_id=bounds["since"], max_id=max_id, alive_at=alive_at
    )
    return query, action


# -- chunks -------------------------------------------------------------------


def chunk_format(content_type: str | None) -> tuple[OutputFormat, str]:
    """The chunk format a ``Content-Type`` selects, and the type to serve it back with."""
    if not content_type:
        return OutputFormat.BINARY, "application/octet-stream"
    media_type, *params = (p.strip() for p in content_type.split(";"))
    media_type = media_type.lower()
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type.startswith("text/"):
        fmt = OutputFormat.TEXT
    elif media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        fmt = OutputFormat.JSON
    else:
        return OutputFormat.BINARY, media_type or "application/octet-stream"
    if charset not in (None, "utf-8", "utf8"):
        raise Problem(
            "unsupported-media-type",
            f"text and JSON chunks must be UTF-8, not {charset}; send them as "
            "application/octet-stream to store them as bytes",
        )
    return fmt, f"{media_type}; charset=utf-8" if fmt is OutputFormat.TEXT else media_type


def check_chunk(data: bytes, fmt: OutputFormat) -> None:
    errors = _Errors()
    if not data:
        errors.add("", "a chunk cannot be empty")
    elif fmt is not OutputFormat.BINARY:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.add("", f"a {fmt.value} chunk must be UTF-8 (byte {exc.start} is not)")
    errors.raise_if_any()


def is_int64(value: object) -> bool:
    """Whether ``value`` (from JSON) is an integer a 64-bit column holds."""
    return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63


def is_count(text: str) -> bool:
    """Whether ``text`` is a non-negative integer a 64-bit column holds, in ASCII
    digits: ``str.isdigit`` takes ``²`` too, which ``int`` refuses, and ``int``
    refuses more than 4300 digits."""
    return len(text) <= 19 and text.isascii() and text.isdigit() and int(text) < 1 << 63


def parse_chunk_index(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not is_count(raw.strip()):
        raise Problem("bad-request", "X-Chunk-Index must be a non-negative integer")
    return int(raw)


# -- query parameters -----------------------------------------------------------


class Cursor:
    """The opaque ``cursor`` of a job listing: the last position of the page."""

    @staticmethod
    def encode(created_at: int, job_id: str, descending: bool) -> str:
        raw = orjson.dumps([created_at, job_id, int(descending)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> tuple[int, str, bool]:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, job_id, descending = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
            raise Problem("bad-request", "cursor is not one this service issued") from None
        if (
            not is_int64(created_at)
            or not isinstance(job_id, str)
            or not valid_job_id(job_id)  # else a store may refuse it (NUL, non-ASCII)
            or descending not in (0, 1)
        ):
            raise Problem("bad-request", "cursor is not one this service issued")
        return created_at, job_id, bool(descending)


def _bad_query(name: str, detail: str) -> Problem:
    return Problem(
        "bad-request", f"?{name}: {detail}", errors=[{"pointer": f"?{name}", "detail": detail}]
    )


def parse_list_query(params: QueryParams, alive_at: int) -> JobQuery:
    statuses = None
    if params.get("status"):
        try:
            statuses = frozenset(JobStatus(s.strip()) for s in params["status"].split(","))
        except ValueError:
            raise _bad_query(
                "status", f"each status must be one of {', '.join(s.value for s in JobStatus)}"
            ) from None
    tag = params.get("tag") or None
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise _bad_query("tag", "is not a valid tag")
    bounds: dict[str, int | None] = {}
    for name in ("createdAfter", "createdBefore"):
        raw = params.get(name)
        try:
            bounds[name] = parse_timestamp(raw) if raw else None
        except ValueError as exc:
            raise _bad_query(name, str(exc)) from None
    raw_limit = params.get("limit", str(DEFAULT_LIST_LIMIT))
    if not is_count(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
        raise _bad_query("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    order = params.get("order", "desc")
    if order not in {"asc", "desc"}:
        raise _bad_query("order", "must be asc or desc")
    descending = order == "desc"
    after = None
    if params.get("cursor"):
        created_at, job_id, cursor_descending = Cursor.decode(params["cursor"])
        if cursor_descending != descending:
            raise _bad_query("cursor", "was issued for the other order")
        after = (created_at, job_id)
    return JobQuery(
        limit=int(raw_limit),
        statuses=statuses,
        tag=tag,
        created_after=bounds["createdAfter"],
        created_before=bounds["createdBefore"],
        after=after,
        descending=descending,
        alive_at=alive_at,
    )
