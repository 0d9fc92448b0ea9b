"""The state machine, alone: every transition, and what each change logs."""

import orjson
import pytest

from service import lifecycle
from service.lifecycle import Chunk, InvalidChange, StatusPatch
from storage_adapters import EventKind, JobRecord, JobStatus, OutputFormat

as_is = Chunk.stored_as_is

T0 = 1_000_000


def fresh(ttl: int | None = 60) -> JobRecord:
    change = lifecycle.new_job(
        namespace="ns", job_id="j", now=T0, fingerprint="x", metadata={}, webhook_url=None, ttl=ttl
    )
    assert [e.seq for e in change.events] == [1]
    return change.job


def statuses(change: lifecycle.Change) -> list[str]:
    return [orjson.loads(e.data)["status"] for e in change.events if e.kind is EventKind.STATUS]


def test_new_job_is_queued_with_an_empty_first_version() -> None:
    job = fresh()
    assert job.status is JobStatus.QUEUED
    assert job.last_seq == 1 and job.revision == 1
    assert job.current_version == 1 and job.versions[0].chunks == 0


ALLOWED = {
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.CANCELLED),
}


def job_in(status: JobStatus) -> JobRecord:
    job = fresh()
    path = {
        JobStatus.QUEUED: [],
        JobStatus.RUNNING: [JobStatus.RUNNING],
        JobStatus.SUCCEEDED: [JobStatus.RUNNING, JobStatus.SUCCEEDED],
        JobStatus.FAILED: [JobStatus.RUNNING, JobStatus.FAILED],
        JobStatus.CANCELLED: [JobStatus.CANCELLED],
    }[status]
    for step in path:
        job = lifecycle.apply_patch(job, StatusPatch(status=step), job.updated_at + 1).job
    assert job.status is status
    return job


@pytest.mark.parametrize("source", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_transition_table(source: JobStatus, target: JobStatus) -> None:
    job = job_in(source)
    patch = StatusPatch(status=target)
    if (source, target) in ALLOWED:
        change = lifecycle.apply_patch(job, patch, T0 + 100)
        assert change.job.status is target
        assert statuses(change) == [target.value]
        assert change.job.last_seq == change.events[-1].seq == job.last_seq + len(change.events)
        assert change.job.revision == job.revision + 1
    elif source == target and not job.terminal:
        assert lifecycle.apply_patch(job, patch, T0 + 100).events == ()
    else:
        with pytest.raises(InvalidChange) as caught:
            lifecycle.apply_patch(job, patch, T0 + 100)
        expected = "job-terminal" if job.terminal else "invalid-transition"
        assert caught.value.reason == expected


def test_terminal_states_refuse_every_change() -> None:
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        job = job_in(status)
        for attempt in (
            lambda j: lifecycle.cancel(j, T0),
            lambda j: lifecycle.apply_patch(j, StatusPatch(progress=5), T0),
            lambda j: lifecycle.append_chunk(j, as_is(b"x"), OutputFormat.TEXT, "text/plain", T0),
            lambda j: lifecycle.start_version(j, T0, 10),
        ):
            with pytest.raises(InvalidChange, match="final"):
                attempt(job)


def test_first_chunk_starts_the_job_in_the_same_change() -> None:
    job = fresh()
    change = lifecycle.append_chunk(job, as_is(b"abc"), OutputFormat.TEXT, "text/plain", T0 + 5)
    assert [e.kind for e in change.events] == [EventKind.STATUS, EventKind.CHUNK]
    assert statuses(change) == ["Running"]
    assert change.job.started_at == T0 + 5
    version = change.job.versions[0]
    assert (version.size, version.chunks, version.format) == (3, 1, OutputFormat.TEXT)
    assert version.last_chunk_seq == change.events[-1].seq == 3


def test_success_completes_progress_version_and_retention() -> None:
    job = job_in(JobStatus.RUNNING)
    job = lifecycle.apply_patch(job, StatusPatch(progress=40), T0 + 10).job
    change = lifecycle.apply_patch(job, StatusPatch(status=JobStatus.SUCCEEDED), T0 + 20)
    assert [e.kind for e in change.events] == [EventKind.PROGRESS, EventKind.STATUS]
    done = change.job
    assert done.progress == 100
    assert done.completed_at == T0 + 20
    assert done.expires_at == T0 + 20 + 60 * 1_000_000
    assert done.versions[0].completed_at == T0 + 20


def test_no_retention_means_no_expiry() -> None:
    job = lifecycle.cancel(fresh(ttl=None), T0 + 1).job
    assert job.expires_at is None


def test_failure_records_the_error() -> None:
    job = job_in(JobStatus.RUNNING)
    change = lifecycle.apply_patch(
        job, StatusPatch(status=JobStatus.FAILED, error={"message": "boom"}), T0 + 3
    )
    assert change.job.error == {"message": "boom"}
    assert orjson.loads(change.events[-1].data) == {
        "status": "Failed",
        "error": {"message": "boom"},
    }


def test_progress_and_eta_changes_are_logged_once() -> None:
    job = job_in(JobStatus.RUNNING)
    change = lifecycle.apply_patch(job, StatusPatch(progress=10, estimated_completion=T0 * 2), T0)
    assert [e.kind for e in change.events] == [EventKind.PROGRESS]
    assert orjson.loads(change.events[0].data) == {"progress": 10, "estimatedCompletion": T0 * 2}
    same = lifecycle.apply_patch(change.job, StatusPatch(progress=10), T0 + 1)
    assert same.events == ()
    cleared = lifecycle.apply_patch(change.job, StatusPatch(estimated_completion=None), T0 + 2)
    assert cleared.job.estimated_completion is None and cleared.job.progress == 10


def test_chunk_index_rules() -> None:
    job = fresh()
    job = lifecycle.append_chunk(job, as_is(b"a"), OutputFormat.TEXT, "text/plain", T0, index=0).job
    with pytest.raises(lifecycle.ChunkAlreadyStored) as stored:
        lifecycle.append_chunk(job, as_is(b"a"), OutputFormat.TEXT, "text/plain", T0, index=0)
    assert (stored.value.version, stored.value.index) == (1, 0)
    with pytest.raises(InvalidChange) as skipped:
        lifecycle.append_chunk(job, as_is(b"c"), OutputFormat.TEXT, "text/plain", T0, index=2)
    assert skipped.value.reason == "chunk-index-conflict"
    nxt = lifecycle.append_chunk(job, as_is(b"b"), OutputFormat.TEXT, "text/plain", T0, index=1)
    assert nxt.events[-1].index == 1


def test_a_version_keeps_one_format() -> None:
    job = lifecycle.append_chunk(fresh(), as_is(b"a"), OutputFormat.TEXT, "text/plain", T0).job
    with pytest.raises(InvalidChange) as caught:
        lifecycle.append_chunk(
            job, as_is(b"\x00"), OutputFormat.BINARY, "application/octet-stream", T0
        )
    assert caught.value.reason == "format-conflict"
    job = lifecycle.start_version(job, T0 + 1, 10).job
    change = lifecycle.append_chunk(job, as_is(b"\x00"), OutputFormat.BINARY, "image/png", T0 + 2)
    assert change.job.versions[1].format is OutputFormat.BINARY
    assert change.job.versions[1].content_type == "image/png"
    assert change.events[-1].version == 2 and change.events[-1].index == 0


def test_versions_are_limited_and_logged() -> None:
    job = fresh()
    for n in range(2, 4):
        change = lifecycle.start_version(job, T0 + n, 3)
        assert [e.kind for e in change.events] == [EventKind.VERSION]
        assert orjson.loads(change.events[0].data) == {"version": n}
        assert change.job.versions[n - 2].completed_at == T0 + n
        job = change.job
    with pytest.raises(InvalidChange) as caught:
        lifecycle.start_version(job, T0 + 9, 3)
    assert caught.value.reason == "version-limit"


# -- stored chunks, complete versions, digests, expiry ------------------------------


def test_chunks_record_where_they_start_and_how_they_are_stored() -> None:
    job = fresh()
    packed = Chunk(b"z" * 10, 1000, b"d" * 32, "zstd")
    job = lifecycle.append_chunk(job, packed, OutputFormat.TEXT, "text/plain", T0 + 1).job
    change = lifecycle.append_chunk(job, as_is(b"abc"), OutputFormat.TEXT, "text/plain", T0 + 2)
    first_version = change.job.versions[0]
    assert (first_version.size, first_version.stored_size) == (1003, 13)
    assert (first_version.chunks, first_version.raw_chunks, first_version.max_chunk) == (2, 1, 10)
    event = change.events[-1]
    assert (event.offset, event.codec, event.data) == (1000, "", b"abc")
    assert event.digest == as_is(b"abc").digest


def test_a_last_chunk_with_the_digest_completes_the_version() -> None:
    job = fresh()
    change = lifecycle.append_chunk(
        job, as_is(b"all"), OutputFormat.TEXT, "text/plain", T0 + 1, 0, sha256="ab" * 32
    )
    version = change.job.versions[0]
    assert version.completed_at == T0 + 1 and version.sha256 == "ab" * 32
    with pytest.raises(InvalidChange) as caught:
        lifecycle.append_chunk(change.job, as_is(b"more"), OutputFormat.TEXT, "text/plain", T0)
    assert caught.value.reason == "version-complete"
    # The job ending later keeps the time the version was completed.
    done = lifecycle.apply_patch(change.job, StatusPatch(status=JobStatus.SUCCEEDED), T0 + 9)
    assert done.job.versions[0].completed_at == T0 + 1


def test_max_size_bounds_a_version() -> None:
    job = lifecycle.append_chunk(fresh(), as_is(b"12345"), OutputFormat.TEXT, "t", T0).job
    with pytest.raises(InvalidChange) as caught:
        lifecycle.append_chunk(job, as_is(b"678"), OutputFormat.TEXT, "t", T0, max_size=7)
    assert caught.value.reason == "version-too-large"
    lifecycle.append_chunk(job, as_is(b"67"), OutputFormat.TEXT, "t", T0, max_size=7)


def test_sealing_records_a_digest_without_logging() -> None:
    job = lifecycle.append_chunk(fresh(), as_is(b"abc"), OutputFormat.TEXT, "t", T0 + 1).job
    done = lifecycle.apply_patch(job, StatusPatch(status=JobStatus.SUCCEEDED), T0 + 2).job
    assert done.versions[0].sha256 is None
    sealed = lifecycle.seal_version(done, 1, 1, "cd" * 32, T0 + 3)
    assert sealed.events == ()
    assert sealed.job.revision == done.revision + 1
    assert (sealed.job.last_seq, sealed.job.updated_at) == (done.last_seq, done.updated_at)
    assert sealed.job.versions[0].sha256 == "cd" * 32
    # Sealing again with the same digest changes nothing; a changed version is refused.
    assert lifecycle.seal_version(sealed.job, 1, 1, "cd" * 32, T0 + 4).job is sealed.job
    with pytest.raises(InvalidChange, match="changed"):
        lifecycle.seal_version(done, 1, 2, "cd" * 32, T0 + 3)


def test_sealing_an_open_version_completes_it() -> None:
    job = lifecycle.append_chunk(fresh(), as_is(b"abc"), OutputFormat.TEXT, "t", T0 + 1).job
    sealed = lifecycle.seal_version(job, 1, 1, "ef" * 32, T0 + 5).job
    assert sealed.versions[0].completed_at == T0 + 5
    assert sealed.status is JobStatus.RUNNING


def test_an_empty_version_is_digested_when_it_closes() -> None:
    job = lifecycle.start_version(job_in(JobStatus.RUNNING), T0 + 5, 10).job
    assert job.versions[0].sha256 == lifecycle.EMPTY_SHA256
    assert job.versions[1].sha256 is None


def test_expire_applies_to_finished_jobs_only() -> None:
    with pytest.raises(InvalidChange) as caught:
        lifecycle.expire(job_in(JobStatus.RUNNING), T0)
    assert caught.value.reason == "job-not-terminal"
    done = job_in(JobStatus.SUCCEEDED)
    expired = lifecycle.expire(done, T0 + 50)
    assert expired.events == () and expired.job.expires_at == T0 + 50
