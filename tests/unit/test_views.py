import orjson
import pytest

from service.views import chunk_payload, etag_matches, event_frame
from storage_adapters import EventKind, EventRecord


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"a1.3"', True),
        ('W/"a1.3"', True),
        ('"x", "a1.3"', True),
        ('"a1.4"', False),
        ("*", True),
        ('"a1.3', False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"a1.3"') is matches


def test_chunk_frame_is_one_sse_event_per_entry() -> None:
    chunk = EventRecord(7, EventKind.CHUNK, 1, b"line one\nline two", 1, 3, "text")
    frame = event_frame(chunk)
    lines = frame.decode().split("\n")
    assert lines[:2] == ["id: 7", "event: chunk"]
    assert lines[2].startswith("data: ") and lines[3:] == ["", ""]
    assert orjson.loads(lines[2][6:]) == {
        "seq": 7,
        "version": 1,
        "index": 3,
        "format": "text",
        "encoding": "utf-8",
        "data": "line one\nline two",
    }


def test_binary_chunks_travel_as_base64() -> None:
    chunk = EventRecord(2, EventKind.CHUNK, 1, b"\x00\xff", 1, 0, "binary")
    assert chunk_payload(chunk)["data"] == "AP8="
    assert chunk_payload(chunk)["encoding"] == "base64"
