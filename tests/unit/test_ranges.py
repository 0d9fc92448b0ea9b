"""Parsing of Range, If-Range and Accept-Encoding for raw output."""

from __future__ import annotations

import pytest

from service.output_api import accepts_zstd, requested_range
from service.problems import Problem

ETAG = '"o1.1.5"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=95-1000", (95, 99)),
        ("bytes=99-99", (99, 99)),
        ("BYTES = 1 - 2", (1, 2)),
        (None, None),
        ("bytes=0-1,5-6", None),  # several ranges: the whole output
        ("items=0-5", None),  # another unit: ignored
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert requested_range(header, None, ETAG, 100) == expected


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=100-200", "bytes=5-2", "bytes=-0", "bytes=-", "bytes=x-1"]
)
def test_unsatisfiable_or_malformed_ranges_are_416(header: str) -> None:
    with pytest.raises(Problem) as caught:
        requested_range(header, None, ETAG, 100)
    assert caught.value.status == 416
    assert caught.value.headers["Content-Range"] == "bytes */100"


def test_an_empty_output_has_no_range() -> None:
    with pytest.raises(Problem):
        requested_range("bytes=-5", None, ETAG, 0)


def test_if_range_must_match_the_current_etag() -> None:
    assert requested_range("bytes=0-1", ETAG, ETAG, 100) == (0, 1)
    assert requested_range("bytes=0-1", '"o1.1.4"', ETAG, 100) is None
    assert requested_range("bytes=0-1", "Tue, 01 Dec 2026 00:00:00 GMT", ETAG, 100) is None


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("zstd", True),
        ("gzip, deflate, br, zstd", True),
        ("ZSTD;q=0.5", True),
        ("zstd;q=0", False),
        ("zstd;q=bad", False),
        ("gzip", False),
        ("*", False),
        (None, False),
    ],
)
def test_accepts_zstd(header: str | None, accepted: bool) -> None:
    assert accepts_zstd(header) is accepted
