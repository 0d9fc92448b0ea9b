"""Properties of the parsers of client input: durations, list cursors,
``Last-Event-ID`` and ``Range``.

Each parser must answer any input with a value or a ``4xx`` problem, never
another exception; what it accepts must mean what it says (a duration its
seconds, a cursor the position it was made from, a byte range Python's
slicing of the output). The parsers are checked alone, and end to end
through the app on ``memory://`` and SQLite, where a value a store cannot
hold (a 100-digit seq, a cursor past 64 bits) must be refused before it
reaches a query.
"""

from __future__ import annotations

import base64
import json
import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from service.durations import parse_duration
from service.output_api import requested_range
from service.problems import Problem
from service.validation import Cursor, is_count, is_int64

from ..fuzz.portal import SyncClient, app_on
from ..support import ADMIN_TOKEN

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
JOB_IDS = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,127}", fullmatch=True)
#: what a header value can carry: Latin-1 text without control characters but tab
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.just("\t"),
    max_size=40,
)
#: numbers in every spelling a client might try
NUMBERISH = st.one_of(
    st.integers(min_value=0, max_value=10**100).map(str),
    st.integers(min_value=-(10**20), max_value=-1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["²", "١٢", "٣", "0x10", "1e3", "1_000", "+5", " 7", "7 ", "\t7", "", "-0"]),
    st.integers(min_value=4000, max_value=6000).map(lambda n: "9" * n),
)


# -- durations ----------------------------------------------------------------------


@st.composite
def iso_durations(draw: st.DrawFn) -> tuple[str, float]:
    """An ISO-8601 duration of weeks, days, hours, minutes and (fractional)
    seconds, and the seconds it means."""
    parts = {
        unit: draw(st.none() | st.integers(min_value=0, max_value=10**6))
        for unit in ("W", "D", "H", "M")
    }
    whole = draw(st.none() | st.integers(min_value=0, max_value=10**6))
    fraction = draw(st.none() | st.integers(min_value=0, max_value=999))
    seconds = (
        None if whole is None else f"{whole}.{fraction:03d}" if fraction is not None else str(whole)
    )
    date = "".join(f"{parts[u]}{u}" for u in ("W", "D") if parts[u] is not None)
    time = "".join(f"{parts[u]}{u}" for u in ("H", "M") if parts[u] is not None)
    time += f"{seconds}S" if seconds is not None else ""
    assume(date or time)
    text = "P" + date + (f"T{time}" if time else "")
    total = 0.0
    for unit, factor in (("W", 604_800), ("D", 86_400), ("H", 3_600), ("M", 60)):
        total += (parts[unit] or 0) * factor
    total += float(seconds) if seconds is not None else 0.0
    return text, total


@given(iso_durations(), st.sampled_from([str, str.lower]), st.sampled_from(["", " ", "\t "]))
def test_an_iso_duration_means_the_sum_of_its_parts(
    duration: tuple[str, float], case: Any, padding: str
) -> None:
    text, seconds = duration
    assert parse_duration(padding + case(text) + padding) == pytest.approx(seconds)


@given(st.integers(min_value=0, max_value=10**15) | st.floats(min_value=0, allow_infinity=False))
def test_a_non_negative_number_is_its_own_seconds(value: float) -> None:
    assert parse_duration(value) == float(value)


@given(st.integers(min_value=0, max_value=10**60), st.none() | st.integers(min_value=0))
def test_a_decimal_string_is_that_many_seconds(whole: int, fraction: int | None) -> None:
    text = str(whole) if fraction is None else f"{whole}.{fraction}"
    assume(len(text) <= 64)
    assert parse_duration(text) == float(text)


@given(
    st.floats(max_value=-1e-300)
    | st.integers(max_value=-1)
    | st.sampled_from([math.nan, math.inf, -math.inf, True, False, None, [], {}])
)
def test_negative_infinite_and_other_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@given(
    st.text(max_size=80)
    | NUMBERISH
    | st.from_regex(r"\s*[Pp][0-9WwDdTtHhMmSsYy.,]{0,30}\s*", fullmatch=True)
)
@example("P" + "1" * 60_000 + "X")  # once a quadratic backtrack: tens of seconds
@example("PT" + "9" * 400 + "S")  # once float('inf') seconds
@example("9" * 400)
def test_any_text_is_finite_non_negative_seconds_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
        assert message  # for the client
        return
    assert math.isfinite(seconds) and seconds >= 0


@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(["Y", "M"]))
def test_years_and_months_are_refused_not_guessed(amount: int, unit: str) -> None:
    with pytest.raises(ValueError, match="years and months"):
        parse_duration(f"P{amount}{unit}")


# -- counts (Last-Event-ID, X-Chunk-Index, ?version, ?limit) ---------------------------


@given(st.text(max_size=25) | NUMBERISH)
@example("²")  # str.isdigit says yes; int() says no
@example("9223372036854775807")
@example("9223372036854775808")
def test_a_count_is_ascii_digits_that_fit_64_bits(text: str) -> None:
    expected = (
        text != ""
        and all(c in string.digits for c in text)
        and len(text) <= 19
        and int(text) < 2**63
    )
    assert is_count(text) is expected


@given(st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=3))
def test_an_int64_is_an_integer_in_range_not_a_bool(value: object) -> None:
    expected = type(value) is int and -(2**63) <= value < 2**63  # type: ignore[operator]
    assert is_int64(value) is expected


# -- list cursors --------------------------------------------------------------------


@given(INT64, JOB_IDS, st.booleans())
def test_a_cursor_decodes_to_the_position_it_encodes(
    created_at: int, job_id: str, descending: bool
) -> None:
    assert Cursor.decode(Cursor.encode(created_at, job_id, descending)) == (
        created_at,
        job_id,
        descending,
    )


def _outcome(parse: Any, *args: Any) -> tuple[Any, Problem | None]:
    """What ``parse(*args)`` returns, or the problem it raises."""
    try:
        return parse(*args), None
    except Problem as problem:
        return None, problem


def _cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


#: JSON that is almost a cursor: three items of nearly the right kinds
ALMOST_CURSORS = st.tuples(
    st.integers(min_value=-(2**80), max_value=2**80) | st.floats(allow_nan=False) | st.booleans(),
    JOB_IDS | st.text(max_size=10),
    st.sampled_from([0, 1, 2, -1, True, False, 0.0, 1.5, "1", None]),
).map(list)


@given(ALMOST_CURSORS | st.recursive(st.none() | st.integers() | st.text(), st.lists))
@example([2**64 - 1, "a", 1])  # once passed to the store, which could not hold it
@example([2**63, "a", 0])
@example([5, "a\x00b", 1])  # PostgreSQL refuses NUL; MariaDB non-ASCII against an ASCII column
@example([5, "é", 1])
def test_any_json_is_a_cursor_position_or_a_400(value: object) -> None:
    position, problem = _outcome(Cursor.decode, _cursor_of(value))
    if problem is not None:
        assert problem.status == 400
        return
    created_at, job_id, descending = position
    assert is_int64(created_at) and isinstance(descending, bool)
    assert Cursor.decode(Cursor.encode(created_at, job_id, descending)) == position


# -- Range ---------------------------------------------------------------------------

ETAG = '"o1.1.5"'


def _number(digits: str) -> int:
    """A position as written, even past the 4300 digits ``int()`` reads."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) < 100 else 10**100


def _expected_slice(spec: tuple[str, str], data: bytes) -> bytes | None:
    """What ``bytes=first-last`` selects, by Python's slicing; ``None``: nothing (416)."""
    first, last = spec
    size = len(data)
    if first == "":
        n = _number(last)
        return data[-n:] if n > 0 and size > 0 else None
    start = _number(first)
    if start >= size or (last != "" and _number(last) < start):
        return None
    return data[start:] if last == "" else data[start : _number(last) + 1]


POSITIONS = st.integers(min_value=0, max_value=600).map(str) | st.sampled_from(
    ["0", "00007", "9" * 30, "1" + "0" * 5000]
)
RANGE_SPECS = st.one_of(
    st.tuples(POSITIONS, POSITIONS),
    st.tuples(POSITIONS, st.just("")),
    st.tuples(st.just(""), POSITIONS),
)


#: what a Range header of this unit looks like, spaces, lists and all
RANGE_LIKE = st.from_regex(r"(?i)[ \t]*bytes[ \t]*=[ \t0-9,-]{0,12}", fullmatch=True)


@given(RANGE_SPECS, st.integers(min_value=0, max_value=500))
def test_a_byte_range_selects_what_slicing_selects(spec: tuple[str, str], size: int) -> None:
    data = bytes(range(256)) * 2
    data = data[:size]
    expected = _expected_slice(spec, data)
    span, problem = _outcome(requested_range, f"bytes={spec[0]}-{spec[1]}", None, ETAG, size)
    if problem is not None:
        assert expected is None
        assert problem.status == 416
        assert problem.headers["Content-Range"] == f"bytes */{size}"
        return
    assert span is not None and expected is not None
    start, end = span
    assert data[start : end + 1] == expected
    assert 0 <= start <= end < size


@given(HEADER_TEXT | RANGE_LIKE)
def test_any_range_header_is_a_span_the_whole_output_or_a_416(header: str) -> None:
    span, problem = _outcome(requested_range, header, None, ETAG, 100)
    if problem is not None:
        assert problem.status == 416
    else:
        assert span is None or 0 <= span[0] <= span[1] < 100


# -- end to end: the app on memory:// and SQLite -------------------------------------------------


@dataclass
class Served:
    client: SyncClient
    store: str
    #: the finished job streams replay: its last seq
    last_seq: int = 0
    #: the bytes of job "bytes", stored as chunks of uneven sizes
    output: bytes = b""
    #: job ids of the namespace, and delivery ids, as listed at the start
    jobs: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)


ROOT = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BASE = "/api/v1/namespaces/p"


def _seed(client: SyncClient, served: Served) -> None:
    r = client.put(BASE, json={"webhookUrl": "https://hooks.example/p"}, headers=ROOT)
    assert r.status_code == 201, r.text
    for i in range(7):
        assert client.post(f"{BASE}/jobs", json={"jobId": f"list-{i}"}, headers=ROOT).is_success
    assert client.post(f"{BASE}/jobs", json={"jobId": "done"}, headers=ROOT).is_success
    assert client.patch(f"{BASE}/jobs/done/status", json={"status": "Running"}, headers=ROOT)
    for i in range(3):
        r = client.post(
            f"{BASE}/jobs/done/output",
            content=f"line {i}\n".encode(),
            headers={**ROOT, "Content-Type": "text/plain"},
        )
        assert r.status_code == 201, r.text
    r = client.patch(f"{BASE}/jobs/done/status", json={"status": "Succeeded"}, headers=ROOT)
    assert r.status_code == 200, r.text
    served.last_seq = r.json()["lastSeq"]
    assert client.post(f"{BASE}/jobs", json={"jobId": "bytes"}, headers=ROOT).is_success
    rng = random.Random(9)
    for size in (1, 7, 64, 100, 3, 250, 2, 90):
        chunk = rng.randbytes(size)
        r = client.post(
            f"{BASE}/jobs/bytes/output",
            content=chunk,
            headers={**ROOT, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        served.output += chunk
    listed = client.get(f"{BASE}/jobs?limit=1000&order=asc", headers=ROOT).json()["items"]
    served.jobs = [job["jobId"] for job in listed]
    page = client.get(f"{BASE}/deliveries?limit=1000", headers=ROOT).json()["items"]
    served.deliveries = [d["deliveryId"] for d in page]
    assert len(served.jobs) == 9 and len(served.deliveries) >= 9


@pytest.fixture(scope="module", params=["memory", "sqlite", "postgresql", "mysql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The app on each store: PostgreSQL refuses NUL in text, MariaDB compares
    ASCII columns with non-ASCII text by an error, SQLite integers past 64 bits."""
    store: str = request.param
    with app_on(store, tmp_path_factory.mktemp(store)) as client:
        served = Served(client, store)
        _seed(served.client, served)
        yield served


E2E = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def _events(text: str) -> list[tuple[str, str | None]]:
    """``(event, id)`` of each frame of an SSE body (comments skipped)."""
    frames = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if fields:
            frames.append((fields.get("event", "message"), fields.get("id")))
    return frames


def _check_replay(served: Served, response: Any, cursor: int) -> None:
    """What a stream of the finished job sends after ``cursor``."""
    last = served.last_seq
    if cursor == last:
        assert response.status_code == 204, response.text
        return
    assert response.status_code == 200, response.text
    frames = _events(response.text)
    if cursor > last:  # a cursor from the future: said so, then the whole log
        assert frames[0][0] == "reset"
        frames, cursor = frames[1:], 0
    assert [int(i) for _, i in frames[:-1] if i is not None] == list(range(cursor + 1, last + 1))
    assert frames[-1][0] == "end"


@E2E
@given(
    st.integers(min_value=0, max_value=40) | st.integers(min_value=0, max_value=2**63 - 1),
    st.sampled_from(["", " ", "\t", "  "]),
)
@example(cursor=0, padding="")
@example(cursor=2**63 - 1, padding=" ")
def test_a_last_event_id_resumes_after_that_seq(served: Served, cursor: int, padding: str) -> None:
    r = served.client.get(
        f"{BASE}/jobs/done/stream",
        headers={**ROOT, "Last-Event-ID": f"{padding}{cursor}{padding}"},
    )
    _check_replay(served, r, cursor)
    r = served.client.get(f"{BASE}/jobs/done/stream?lastEventId={cursor}", headers=ROOT)
    _check_replay(served, r, cursor)


@E2E
@given(HEADER_TEXT | NUMBERISH.filter(lambda t: len(t) < 8000))
@example("1" + "0" * 100)  # 10^100: refused before it reaches a query
@example("²")
@example("18446744073709551616")
def test_any_last_event_id_resumes_or_is_a_400(served: Served, raw: str) -> None:
    text = raw.strip()
    requests = [(f"{BASE}/jobs/done/stream?lastEventId={quote(raw, safe='')}", {})]
    if all(" " <= c <= "\xff" or c == "\t" for c in raw):  # what a header can carry
        headers = {"Last-Event-ID": raw.encode("latin-1")}
        requests.append((f"{BASE}/jobs/done/stream", headers))
    for url, headers in requests:
        r = served.client.get(url, headers={**ROOT, **headers})
        if text == "":
            _check_replay(served, r, 0)  # no cursor: the whole log
        elif is_count(text):
            _check_replay(served, r, int(text))
        else:
            _problem(r, 400)


def _raw(served: Served, headers: dict[str, Any]) -> Any:
    return served.client.get(f"{BASE}/jobs/bytes/output/raw", headers={**ROOT, **headers})


@E2E
@given(RANGE_SPECS)
def test_a_range_of_the_output_is_that_slice_of_it(served: Served, spec: tuple[str, str]) -> None:
    data = served.output
    r = _raw(served, {"Range": f"bytes={spec[0]}-{spec[1]}"})
    expected = _expected_slice(spec, data)
    if expected is None:
        _problem(r, 416)
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"
        return
    assert r.status_code == 206, r.text
    assert r.content == expected
    size = len(data)
    if spec[0] == "":
        first, last = max(0, size - _number(spec[1])), size - 1
    else:
        first = _number(spec[0])
        last = size - 1 if spec[1] == "" else min(_number(spec[1]), size - 1)
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert r.headers["Content-Length"] == str(len(expected))


@E2E
@given(HEADER_TEXT | RANGE_LIKE)
def test_any_range_header_is_a_slice_the_whole_or_a_416(served: Served, header: str) -> None:
    data = served.output
    r = _raw(served, {"Range": header.encode("latin-1")})
    if r.status_code == 200:
        assert r.content == data
    elif r.status_code == 206:
        first, last = (
            int(n) for n in r.headers["Content-Range"].split()[1].split("/")[0].split("-")
        )
        assert r.content == data[first : last + 1]
    else:
        _problem(r, 416)
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"


@E2E
@given(st.integers(min_value=1, max_value=10), st.sampled_from(["asc", "desc"]))
def test_following_next_cursors_lists_every_job_once(
    served: Served, limit: int, order: str
) -> None:
    seen: list[str] = []
    cursor = ""
    for _ in range(len(served.jobs) + 1):
        r = served.client.get(f"{BASE}/jobs?limit={limit}&order={order}{cursor}", headers=ROOT)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        seen += [job["jobId"] for job in page["items"]]
        if page["nextCursor"] is None:
            break
        cursor = f"&cursor={page['nextCursor']}"
    expected = served.jobs if order == "asc" else served.jobs[::-1]
    assert seen == expected


@E2E
@given(st.integers(min_value=1, max_value=10))
def test_following_next_cursors_lists_every_delivery_once(served: Served, limit: int) -> None:
    seen: list[str] = []
    cursor = ""
    for _ in range(len(served.deliveries) + 1):
        r = served.client.get(f"{BASE}/deliveries?limit={limit}{cursor}", headers=ROOT)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [d["deliveryId"] for d in page["items"]]
        if page["nextCursor"] is None:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert seen == served.deliveries


@E2E
@given(ALMOST_CURSORS, st.sampled_from(["jobs", "deliveries"]))
@example([2**64 - 1, "a", 1], "jobs")  # once a 500 on SQLite: too large for an INTEGER
@example([2**63, "msg_a", 1], "deliveries")
@example([5, "a\x00b", 1], "jobs")  # PostgreSQL refuses NUL in text
@example([5, "a\x00b"], "deliveries")
@example([5, "é", 1], "jobs")  # MariaDB: an ASCII column compared with non-ASCII text
@example([5, "é"], "deliveries")
def test_any_cursor_lists_or_is_a_400(served: Served, value: list[Any], listing: str) -> None:
    r = served.client.get(f"{BASE}/{listing}?cursor={_cursor_of(value)}", headers=ROOT)
    if r.status_code != 200:
        _problem(r, 400)


@E2E
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**30), max_value=10**30),
        NUMBERISH.filter(lambda t: len(t) < 8000),
        st.builds("P{}D".format, st.integers(min_value=0, max_value=10**400)),
        st.builds("PT{}S".format, st.integers(min_value=0, max_value=10**70)),
    )
)
@example(1.3993911336230228e308)  # once int(inf) in the secret's expiry: a 500
@example("P30D")
@example("P31D")
def test_a_grace_period_rotates_or_is_a_422(served: Served, grace: object) -> None:
    r = served.client.post(f"{BASE}/webhook-secrets", json={"gracePeriod": grace}, headers=ROOT)
    try:
        seconds: float | None = parse_duration(grace)
    except ValueError:
        seconds = None
    if seconds is not None and seconds <= 30 * 86_400:
        assert r.status_code == 201, r.text
    else:
        _problem(r, 422)
