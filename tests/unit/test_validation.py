import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from service.problems import Problem
from service.settings import Settings
from service.validation import (
    Cursor,
    chunk_format,
    parse_list_query,
    parse_new_job,
    parse_status_patch,
)
from storage_adapters import JobStatus, OutputFormat


@given(
    st.integers(min_value=0, max_value=2**62),
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,127}", fullmatch=True),
    st.booleans(),
)
def test_cursor_round_trips(created: int, job_id: str, descending: bool) -> None:
    assert Cursor.decode(Cursor.encode(created, job_id, descending)) == (
        created,
        job_id,
        descending,
    )


@given(st.text(max_size=60))
def test_any_text_is_a_valid_cursor_or_a_400(text: str) -> None:
    try:
        Cursor.decode(text)
    except Problem as problem:
        status = problem.status
    else:
        status = 400
    assert status == 400


@pytest.mark.parametrize(
    ("header", "fmt", "served"),
    [
        (None, OutputFormat.BINARY, "application/octet-stream"),
        ("text/plain", OutputFormat.TEXT, "text/plain; charset=utf-8"),
        ("text/markdown; charset=UTF-8", OutputFormat.TEXT, "text/markdown; charset=utf-8"),
        ("application/json", OutputFormat.JSON, "application/json"),
        ("application/ld+json", OutputFormat.JSON, "application/ld+json"),
        ("image/png", OutputFormat.BINARY, "image/png"),
    ],
)
def test_chunk_format(header: str | None, fmt: OutputFormat, served: str) -> None:
    assert chunk_format(header) == (fmt, served)


def test_text_in_another_charset_is_415() -> None:
    with pytest.raises(Problem) as caught:
        chunk_format("text/plain; charset=latin-1")
    assert caught.value.status == 415


def test_new_job_fingerprint_ignores_spelling_of_the_same_request() -> None:
    settings = Settings()
    _, a = parse_new_job(
        {"metadata": {"b": 1, "a": 2}, "retentionPolicy": {"ttl": "PT1H"}}, settings
    )
    _, b = parse_new_job({"metadata": {"a": 2, "b": 1}, "retentionPolicy": {"ttl": 3600}}, settings)
    _, c = parse_new_job({"metadata": {"a": 2, "b": 1}, "retentionPolicy": {"ttl": 3601}}, settings)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_validation_reports_every_field() -> None:
    with pytest.raises(Problem) as caught:
        parse_new_job({"jobId": "Bad Id", "webhookUrl": "ftp://x", "colour": 1}, Settings())
    pointers = {e["pointer"] for e in caught.value.errors or []}
    assert pointers == {"/jobId", "/webhookUrl", "/colour"}
    assert caught.value.status == 422


def test_status_patch_error_needs_failed() -> None:
    with pytest.raises(Problem) as caught:
        parse_status_patch({"status": "Running", "error": "boom"})
    assert caught.value.errors == [
        {"pointer": "/error", "detail": "can only be sent with status Failed"}
    ]
    patch = parse_status_patch({"status": "Failed", "error": "boom"})
    assert patch.status is JobStatus.FAILED and patch.error == {"message": "boom"}


def test_list_query_parsing() -> None:
    query = parse_list_query(
        QueryParams("status=Queued,Running&tag=x&limit=7&order=asc"), alive_at=5
    )
    assert query.statuses == {JobStatus.QUEUED, JobStatus.RUNNING}
    assert (query.tag, query.limit, query.descending, query.alive_at) == ("x", 7, False, 5)
    cursor = Cursor.encode(1, "a", descending=True)
    with pytest.raises(Problem, match="other order"):
        parse_list_query(QueryParams(f"order=asc&cursor={cursor}"), alive_at=0)
    for bad in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=Done",
        "order=up",
        "createdAfter=yesterday",
        "createdBefore=2026-01-01T00:00:00",
        "tag=a%20b",
    ):
        with pytest.raises(Problem) as caught:
            parse_list_query(QueryParams(bad), alive_at=0)
        assert caught.value.status == 400
