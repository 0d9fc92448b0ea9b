"""A realistic load test of the Async Output Service, for operators, with Locust.

Producers submit jobs, stream text output into them chunk by chunk, report
progress and finish them; three times as many consumers watch those jobs over
SSE, long-poll their status with ETags, and download their output as JSON and
raw bytes. Run it headless against a running service::

    AOS_TOKEN=$(cat .aos-admin-token) \\
        locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 1m \\
        --stop-timeout 10 --host http://127.0.0.1:8080

``--stop-timeout`` lets the producers finish the jobs they are running when
the time is up; a job that a stop interrupts all the same is cancelled. Add
``--csv results/aos`` to keep the numbers, or leave out ``--headless`` for the
web UI on http://localhost:8089. Settings, all from the environment:

``AOS_TOKEN`` (required)
    the root admin token, or a namespace key with the producer or admin role
    (``aos.<namespace>.<keyId>.<secret>``), sent as ``Authorization: Bearer``.
``AOS_NAMESPACE``
    the namespace the jobs go to. Default: the key's own namespace for a
    namespace key, else ``loadtest``. With the root admin token the namespace
    is created at the start if it does not exist (an existing one is left as
    it is).
``AOS_CHUNKS`` (default 8), ``AOS_CHUNK_BYTES`` (default 512)
    how many text chunks each job gets, and the size of each.
``AOS_CHUNK_PAUSE`` (default 0.2)
    seconds a producer waits between two chunks, as a job that computes its
    output does; consumers that arrive meanwhile follow the job live.
``AOS_POLL_WAIT`` (default 5)
    the ``?wait=`` of the status long-polls, in seconds (1-60).
``AOS_STREAM_SECONDS`` (default 5)
    how long a consumer reads one SSE stream at most if ``end`` does not come.
``AOS_THINK_TIME`` (default ``0.5-2``)
    seconds, drawn at random between the two, that a user waits between two
    tasks: a producer between jobs, a consumer between two jobs it looks at.
``AOS_JOB_TTL`` (default ``PT1H``)
    the retention of the load test's jobs once finished, so that they do not
    stay in the store for the 7-day default; empty for the namespace default.

Users and weights: ``ProducerUser`` (weight 1) and ``ConsumerUser`` (weight 3),
so ``-u 40`` runs 10 producers and 30 consumers. A producer runs one job after
the other: submit, append the chunks, report progress halfway, finish. A
consumer's tasks, by weight: follow a job's SSE stream (3), long-poll the
status of one of the 5 newest jobs until it finishes and then download its
output (2), download the output, JSON then raw, of any recent job (1).
Consumers pick among the last 50 jobs this process's producers submitted (a
bounded in-process deque: with ``--processes`` or workers, each process
watches its own producers' jobs).

Every request is named by its route (``[ns]`` and ``[id]`` stand for the
namespace and the job id), so the statistics have one line per operation. A
failure says what went wrong: the status, the problem's type and ``detail``,
and, in the log, the job and the ``X-Request-ID`` that finds the request in
the service's logs.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import random
import secrets
import time
from typing import Any

import gevent
import locust  # noqa: F401  (before requests: it patches the standard library for gevent)
import requests
from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner

logger = logging.getLogger("aos.locust")


def _env_int(name: str, default: int, low: int, high: int) -> int:
    value = int(os.environ.get(name) or default)
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, not {value}")
    return value


def _env_float(name: str, default: float) -> float:
    value = float(os.environ.get(name) or default)
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


def _env_range(name: str, default: str) -> tuple[float, float]:
    """``MIN-MAX`` seconds (or one number for both) from the environment."""
    text = os.environ.get(name) or default
    low, _, high = text.partition("-")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{name} must be MIN-MAX seconds, 0 <= MIN <= MAX, not {text!r}")
    return bounds


TOKEN = os.environ.get("AOS_TOKEN", "").strip()


def _key_namespace(token: str) -> str | None:
    """The namespace a namespace key (``aos.<ns>.<keyId>.<secret>``) belongs to."""
    parts = token.split(".")
    return parts[1] if len(parts) == 4 and parts[0] == "aos" else None


NAMESPACE = os.environ.get("AOS_NAMESPACE") or _key_namespace(TOKEN) or "loadtest"
#: at least one chunk: the first chunk moves a job from Queued to Running, and
#: only a Running job may become Succeeded
CHUNKS = _env_int("AOS_CHUNKS", 8, 1, 10_000)
CHUNK_BYTES = _env_int("AOS_CHUNK_BYTES", 512, 1, 1024 * 1024)
CHUNK_PAUSE = _env_float("AOS_CHUNK_PAUSE", 0.2)
POLL_WAIT = _env_int("AOS_POLL_WAIT", 5, 1, 60)
STREAM_SECONDS = _env_float("AOS_STREAM_SECONDS", 5)
JOB_TTL = os.environ.get("AOS_JOB_TTL", "PT1H")
THINK_TIME = _env_range("AOS_THINK_TIME", "0.5-2")

FINISHED = frozenset({"Succeeded", "Failed", "Cancelled"})

# Request names, one per operation, by route.
JOBS = f"/api/v1/namespaces/{NAMESPACE}/jobs"
N_SUBMIT = "/api/v1/namespaces/[ns]/jobs"
N_APPEND = "/api/v1/namespaces/[ns]/jobs/[id]/output"
N_STATUS = "/api/v1/namespaces/[ns]/jobs/[id]/status"
N_FINISH = "/api/v1/namespaces/[ns]/jobs/[id]/status (finish)"
N_CANCEL = "/api/v1/namespaces/[ns]/jobs/[id]/cancel"
N_LONG_POLL = "/api/v1/namespaces/[ns]/jobs/[id]/status?wait"
N_STREAM = "/api/v1/namespaces/[ns]/jobs/[id]/stream"
N_OUTPUT = "/api/v1/namespaces/[ns]/jobs/[id]/output"
N_RAW = "/api/v1/namespaces/[ns]/jobs/[id]/output/raw"

#: the jobs producers submitted lately, newest last; consumers pick from them
RECENT_JOBS: collections.deque[str] = collections.deque(maxlen=50)
#: jobs a producer gave up on (after a failure, or at a stop): their output is not the expected one
ABANDONED: set[str] = set()

_RUN = secrets.token_hex(3)  # keeps job ids unique across runs and processes
_job_numbers = itertools.count(1)


def chunk_text(job_id: str, index: int, size: int = CHUNK_BYTES) -> str:
    """The text of chunk ``index`` of a job: ``size`` ASCII bytes, ending in a newline.

    Deterministic, so that the output of any job can be checked:
    ``tests/e2e/test_locust.py`` has the same function.
    """
    head = f"{job_id} chunk {index}: "
    filler = "abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1)
    return (head + filler)[: size - 1] + "\n"


def expected_output(job_id: str) -> bytes:
    return "".join(chunk_text(job_id, i) for i in range(CHUNKS)).encode()


def describe(response: requests.Response) -> str:
    """The status and, for a problem response, its type and detail."""
    if response.status_code == 0:  # no response at all (a ResponseContextManager with the error)
        return f"no response: {getattr(response, 'error', None)!r}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and "type" in body):
        return f"HTTP {response.status_code} {response.text[:200]!r}"
    kind = str(body["type"]).removeprefix("urn:aos:problem:")
    text = f"HTTP {response.status_code} {kind}: {body.get('detail') or body.get('title')}"
    if errors := body.get("errors"):
        text += f" {json.dumps(errors)}"
    return text


def fail(response: ResponseContextManager, job_id: str, message: str) -> None:
    """Report the request as failed, and log which job and request it was.

    The message (what Locust groups failures by) names neither, so that one
    kind of failure is one line of the report; the log gives the job id and
    the ``X-Request-ID`` to look up in the service's logs.
    """
    response.failure(message)
    request_id = response.headers.get("X-Request-ID", "-") if response.status_code else "-"
    logger.warning("%s (job %s, request %s)", message, job_id, request_id)


@events.test_start.add_listener
def create_namespace(environment: Environment, **_: Any) -> None:
    """With the root admin token, create the namespace unless it exists.

    ``PUT /api/v1/namespaces/{ns}`` replaces an existing namespace's whole
    configuration (its retention, webhook URL…) with what the body says, so it
    is sent only after a ``GET`` answered 404. A namespace key gets 403 on
    both: its namespace exists, since the key does.
    """
    if isinstance(environment.runner, WorkerRunner):
        return  # the master does it once
    if problem := _prepare_namespace(environment.host or ""):
        logger.error("%s: stopping the test", problem)
        environment.process_exit_code = 1
        runner = environment.runner
        assert runner is not None
        headless = environment.parsed_options is None or environment.parsed_options.headless
        gevent.spawn(runner.quit if headless else runner.stop)


def _prepare_namespace(host: str) -> str | None:
    """Check the token and create the namespace if need be; what is wrong, if anything."""
    logger.info(
        "namespace %s, %d chunks of %d bytes per job, %.2f s apart",
        NAMESPACE,
        CHUNKS,
        CHUNK_BYTES,
        CHUNK_PAUSE,
    )
    if not TOKEN:
        return "set AOS_TOKEN to the admin token or a producer key"
    key_namespace = _key_namespace(TOKEN)
    if key_namespace is not None and key_namespace != NAMESPACE:
        return (
            f"AOS_TOKEN is a key of namespace {key_namespace!r}, "
            f"which cannot act in AOS_NAMESPACE={NAMESPACE!r}"
        )
    url = f"{host.rstrip('/')}/api/v1/namespaces/{NAMESPACE}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        found = requests.get(url, headers=headers, timeout=10)
        if found.status_code == 404:
            made = requests.put(url, json={}, headers=headers, timeout=10)
            if made.status_code not in (200, 201):
                return f"cannot create namespace {NAMESPACE}: {describe(made)}"
            logger.info("created namespace %s", NAMESPACE)
        elif found.status_code == 401:
            return f"the service refuses AOS_TOKEN: {describe(found)}"
        elif found.status_code not in (200, 403):  # 403: a namespace key, whose namespace exists
            return f"cannot check namespace {NAMESPACE}: {describe(found)}"
    except requests.RequestException as e:
        return f"cannot reach {url}: {e!r}"
    return None


class _ServiceUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {TOKEN}"


class ProducerUser(_ServiceUser):
    """A backend running jobs: submit, append text chunks, report progress, finish.

    One task is one whole job, taking about ``AOS_CHUNKS * AOS_CHUNK_PAUSE``
    seconds; then the producer waits ``AOS_THINK_TIME`` before the next one.
    """

    weight = 1
    wait_time = between(*THINK_TIME)
    #: the job this producer is running, if any
    job_id: str | None = None

    @task
    def run_job(self) -> None:
        self.job_id = job_id = f"lt-{_RUN}-{next(_job_numbers)}"
        self._run_job(job_id)
        self.job_id = None  # not on an exception: on_stop sees a job the stop interrupted

    def on_stop(self) -> None:
        """Cancel the job if the test stops in the middle of it, so that it ends and expires.

        That happens when the run time is up, unless ``--stop-timeout`` gives
        the producers the time to finish their jobs.
        """
        job_id, self.job_id = self.job_id, None
        if job_id is None:
            return
        ABANDONED.add(job_id)
        with self.client.post(f"{JOBS}/{job_id}/cancel", name=N_CANCEL, catch_response=True) as r:
            if r.status_code not in (200, 409, 404):  # 409: finished, 404: not submitted
                fail(r, job_id, f"cancel at the end of the test: {describe(r)}")
            else:
                r.success()

    def _run_job(self, job_id: str) -> None:
        body: dict[str, Any] = {
            "jobId": job_id,
            "metadata": {"title": f"Load test job {job_id}", "tags": ["loadtest"]},
        }
        if JOB_TTL:
            body["retentionPolicy"] = {"ttl": JOB_TTL}
        with self.client.post(JOBS, json=body, name=N_SUBMIT, catch_response=True) as r:
            if r.status_code != 201:
                fail(r, job_id, f"submit: {describe(r)}")
                return
        RECENT_JOBS.append(job_id)
        path = f"{JOBS}/{job_id}"

        progress_after = (CHUNKS - 1) // 2  # the chunk after which half is done
        for index in range(CHUNKS):
            if index:
                gevent.sleep(CHUNK_PAUSE)
            with self.client.post(
                f"{path}/output",
                data=chunk_text(job_id, index).encode(),
                headers={"Content-Type": "text/plain", "X-Chunk-Index": str(index)},
                name=N_APPEND,
                catch_response=True,
            ) as r:
                if r.status_code != 201:
                    fail(r, job_id, f"append: {describe(r)}")
                    self._give_up(path, job_id, "append failed")
                    return
                if r.json().get("index") != index:
                    fail(r, job_id, f"append: chunk {index} stored as {r.text}")
                    self._give_up(path, job_id, "append misplaced")
                    return
            if index == progress_after and CHUNKS > 1:
                progress = round(100 * (index + 1) / CHUNKS)
                with self.client.patch(
                    f"{path}/status",
                    json={"progress": progress},
                    name=N_STATUS,
                    catch_response=True,
                ) as r:
                    if r.status_code != 200:
                        fail(r, job_id, f"progress: {describe(r)}")
                        self._give_up(path, job_id, "progress failed")
                        return

        with self.client.patch(
            f"{path}/status", json={"status": "Succeeded"}, name=N_FINISH, catch_response=True
        ) as r:
            if r.status_code != 200:
                fail(r, job_id, f"finish: {describe(r)}")
                self._give_up(path, job_id, "finish failed")
                return
            if r.json().get("status") != "Succeeded":
                fail(r, job_id, f"finish: answered {r.text}")

    def _give_up(self, path: str, job_id: str, why: str) -> None:
        """Fail the job, so that it ends (and expires) rather than stay Running forever."""
        ABANDONED.add(job_id)
        body = {"status": "Failed", "error": {"message": f"load test producer: {why}"}}
        with self.client.patch(
            f"{path}/status", json=body, name=N_FINISH, catch_response=True
        ) as r:
            if r.status_code not in (200, 409):  # 409: it had finished after all
                fail(r, job_id, f"fail the job after an error: {describe(r)}")


class ConsumerUser(_ServiceUser):
    """A client of finished or running jobs: watches them live, polls them, downloads them.

    Each task picks one of the jobs producers submitted lately, and then waits
    ``AOS_THINK_TIME``. Task weights: SSE stream 3, long-poll the status until
    the job finishes then download its output 2, download an output 1.
    """

    weight = 3
    wait_time = between(*THINK_TIME)

    def _pick(self, newest: int | None = None) -> str | None:
        """One of the jobs producers submitted lately, or of the ``newest`` of them."""
        if not RECENT_JOBS:
            return None
        return random.choice(list(RECENT_JOBS)[-newest:] if newest else RECENT_JOBS)

    @task(3)
    def stream(self) -> None:
        """Read the SSE stream until ``end`` or ``AOS_STREAM_SECONDS``; one request in the stats.

        Its response time is the time to ``end`` (or to the bound) and its
        length the bytes read. A stream that ends is checked: every log entry
        once, in order (ids 1..lastSeq), and all the chunks of a job that
        succeeded.
        """
        job_id = self._pick()
        if job_id is None:
            return
        started = time.perf_counter()
        with self.client.get(
            f"{JOBS}/{job_id}/stream",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=(10, STREAM_SECONDS + 30),
            name=N_STREAM,
            catch_response=True,
        ) as r:
            try:
                if r.status_code == 204:  # finished, and nothing after the cursor
                    r.success()
                    return
                if r.status_code != 200:
                    fail(r, job_id, f"stream: {describe(r)}")
                    return
                if not r.headers.get("Content-Type", "").startswith("text/event-stream"):
                    fail(r, job_id, f"stream: Content-Type {r.headers.get('Content-Type')}")
                    return
                reader = _SSEReader()
                try:
                    with gevent.Timeout(STREAM_SECONDS, False):
                        for block in r.iter_content(chunk_size=None):
                            if reader.feed(block):
                                break
                except requests.RequestException as e:
                    fail(r, job_id, f"stream: broken: {e!r}")
                    return
                r.request_meta["response_time"] = (time.perf_counter() - started) * 1000
                r.request_meta["response_length"] = reader.bytes
                if problem := reader.check(job_id):
                    fail(r, job_id, f"stream: {problem}")
                elif not reader.events:
                    fail(r, job_id, f"stream: no event in {STREAM_SECONDS} s")
                else:
                    r.success()
            finally:
                if r.raw is not None:  # None when the request got no response at all
                    r.close()

    @task(2)
    def wait_then_download(self) -> None:
        """Wait for one of the newest jobs by long-polling its status, then download its output.

        As a client that started a job and waits for its result: it gets the
        status and its ETag, then long-polls (``?wait=AOS_POLL_WAIT`` with
        ``If-None-Match``) until the job finishes or ``max(AOS_STREAM_SECONDS,
        AOS_POLL_WAIT)`` passes; a ``304`` (nothing changed in that time) is a
        success. It long-polls at least once, so a job that has already finished
        holds the request for the whole wait. Once the job has succeeded it
        downloads the output, as ``download`` does.
        """
        job_id = self._pick(newest=5)
        if job_id is None:
            return
        url = f"{JOBS}/{job_id}/status"
        with self.client.get(url, name=N_STATUS, catch_response=True) as r:
            if r.status_code != 200 or not r.headers.get("ETag"):
                fail(r, job_id, f"status: {describe(r)}")
                return
            etag, status = r.headers["ETag"], r.json()["status"]
        deadline = time.monotonic() + max(STREAM_SECONDS, POLL_WAIT)
        while True:
            with self.client.get(
                url,
                params={"wait": POLL_WAIT},
                headers={"If-None-Match": etag},
                timeout=(10, POLL_WAIT + 30),
                name=N_LONG_POLL,
                catch_response=True,
            ) as r:
                if r.status_code == 304:
                    r.success()
                elif r.status_code == 200 and r.headers.get("ETag") not in (None, etag):
                    etag, status = r.headers["ETag"], r.json()["status"]
                    r.success()
                else:
                    fail(r, job_id, f"long-poll: {describe(r)}")
                    return
            if status in FINISHED or time.monotonic() >= deadline:
                break
        if status == "Succeeded":
            self._download(job_id)

    @task(1)
    def download(self) -> None:
        """Download the output of a recent job, finished or still running."""
        job_id = self._pick()
        if job_id is not None:
            self._download(job_id)

    def _download(self, job_id: str) -> None:
        """Get the output as JSON, then raw; a finished job's must be what was appended."""
        with self.client.get(f"{JOBS}/{job_id}/output", name=N_OUTPUT, catch_response=True) as r:
            if r.status_code != 200:
                fail(r, job_id, f"output: {describe(r)}")
                return
            output = r.json()
            # A version is complete once the job ends: then its output is final.
            final = output.get("completedAt") is not None and job_id not in ABANDONED
            if output.get("encoding") != "utf-8":
                fail(r, job_id, f"output: encoding {output.get('encoding')}, not utf-8")
                return
            if final and output["output"].encode() != expected_output(job_id):
                fail(r, job_id, "output: not what the producer appended")
                return
        with self.client.get(f"{JOBS}/{job_id}/output/raw", name=N_RAW, catch_response=True) as r:
            if r.status_code != 200:
                fail(r, job_id, f"raw output: {describe(r)}")
            elif final and r.content != expected_output(job_id):
                fail(r, job_id, "raw output: not the bytes the producer appended")


class _SSEReader:
    """Counts the events of a ``text/event-stream`` body fed to it in pieces."""

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self.ids: list[int] = []
        self.chunks = 0
        self.end: dict[str, Any] | None = None
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, block: bytes) -> bool:
        """Take the next bytes; True once the ``end`` event has come."""
        self.bytes += len(block)
        self._buffer += block
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if self._dispatch():
                    return True
            elif not line.startswith(":"):  # ": ping" heartbeats are comments
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
                elif field == "id":
                    self._id = value
        return False

    def _dispatch(self) -> bool:
        event, data, event_id = self._event or "message", self._data, self._id
        self._event, self._data, self._id = "", [], None
        if not data:
            return False
        self.events += 1
        if event_id is not None:
            self.ids.append(int(event_id))
        if event == "chunk":
            self.chunks += 1
        elif event == "end":
            self.end = json.loads("\n".join(data))
            return True
        return False

    def check(self, job_id: str) -> str | None:
        """What is wrong with a stream that ended, if anything."""
        if self.end is None:
            return None  # cut at the time bound: nothing to compare yet
        last = self.end.get("lastSeq")
        if self.ids != list(range(1, len(self.ids) + 1)) or self.ids[-1:] != [last]:
            return f"event ids {self.ids[:3]}…{self.ids[-3:]} are not 1..{last} in order"
        succeeded = self.end.get("status") == "Succeeded" and job_id not in ABANDONED
        if succeeded and self.chunks != CHUNKS:
            return f"{self.chunks} chunk events, not {CHUNKS}"
        return None
