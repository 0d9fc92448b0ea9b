"""The body recorder that lets a request be forwarded, or served here, after
its handler read a small body."""

from __future__ import annotations

import pytest

from sharding import RecordingReceive
from sharding.forward import _has_body


def client(*parts: bytes) -> tuple[list[dict], object]:  # type: ignore[type-arg]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    sent = list(messages)

    async def receive() -> dict:  # type: ignore[type-arg]
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    return messages, receive


async def test_what_was_read_is_replayed_then_the_rest_follows() -> None:
    _, receive = client(b'{"a":', b"1}", b"tail")
    recorder = RecordingReceive(receive, cap=100)  # type: ignore[arg-type]
    await recorder()
    await recorder()
    assert recorder.parts == [b'{"a":', b"1}"] and not recorder.complete
    replay = recorder.replay()
    first = await replay()
    assert first == {"type": "http.request", "body": b'{"a":1}', "more_body": True}
    assert (await replay())["body"] == b"tail"
    assert (await replay())["type"] == "http.disconnect"


async def test_a_complete_body_replays_as_one_message() -> None:
    _, receive = client(b"whole")
    recorder = RecordingReceive(receive, cap=100)  # type: ignore[arg-type]
    await recorder()
    assert recorder.complete
    assert await recorder.replay()() == {
        "type": "http.request",
        "body": b"whole",
        "more_body": False,
    }


async def test_a_body_past_the_cap_is_not_kept_and_cannot_be_replayed() -> None:
    _, receive = client(b"x" * 60, b"y" * 60)
    recorder = RecordingReceive(receive, cap=100)  # type: ignore[arg-type]
    await recorder()
    await recorder()
    assert recorder.overflow and recorder.parts == []
    with pytest.raises(RuntimeError):
        recorder.replay()


def test_which_requests_have_a_body() -> None:
    assert not _has_body({"headers": []})
    assert not _has_body({"headers": [(b"content-length", b"0")]})
    assert _has_body({"headers": [(b"content-length", b"12")]})
    assert _has_body({"headers": [(b"transfer-encoding", b"chunked")]})
