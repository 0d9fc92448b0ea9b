#!/usr/bin/env python3
"""Prove that the benchmark peers (Nchan, Centrifugo) really deliver SSE to a subscriber.

    python3 loadtests/peers/check_peers.py [--peers nchan,centrifugo] [--fanout N]

Stdlib only. Start the peers first (loadtests/peers/nchan.sh start, centrifugo.sh start).
For each peer, on a fresh channel:

  subscribe   an SSE subscription is accepted (200, text/event-stream)
  live        3 published messages arrive in order, each with an id
              (nchan: the SSE `id:` field; Centrifugo: the publication offset)
  resume      after a disconnect, 2 more messages are published; a reconnect that names
              the last id seen (nchan: `Last-Event-ID`; Centrifugo: cf_connect
              subs.<ch>.recover/offset/epoch, uni_sse has no Last-Event-ID) gets exactly
              those 2, in order, no duplicates, and then live messages again
  history     (nchan) /sub/<ch>?history=1 replays all 5 then follows live
  fanout      (--fanout N) N concurrent subscribers on one channel, one publish, all N
              receive it; RSS/PSS of the peer's processes before and after

One JSON line per check on stdout; exit status 1 if any check failed.
Config: AOS_BENCH_NCHAN_URL, AOS_BENCH_CENTRIFUGO_URL, AOS_BENCH_CENTRIFUGO_API_KEY,
AOS_BENCH_*_PIDFILE; whatever is unset is taken from `<peer>.sh env`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAILED = False


class CheckError(Exception):
    pass


def emit(peer: str, check: str, ok: bool, started: float, **detail) -> None:
    global FAILED
    FAILED |= not ok
    rec = {
        "peer": peer,
        "check": check,
        "ok": ok,
        "ms": round((time.monotonic() - started) * 1000, 1),
    }
    rec.update(detail)
    print(json.dumps(rec, sort_keys=False), flush=True)


def peer_env(name: str) -> dict[str, str]:
    """AOS_BENCH_* variables from the environment, completed from `<name>.sh env`."""
    env = {k: v for k, v in os.environ.items() if k.startswith(f"AOS_BENCH_{name.upper()}_")}
    try:
        out = subprocess.run(
            ["bash", str(HERE / f"{name}.sh"), "env"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        raise CheckError(f"{name}.sh env failed: {exc}") from exc
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, val = line[len("export ") :].split("=", 1)
            env.setdefault(key, val.strip("'\""))
    return env


# ----------------------------------------------------------------------------- HTTP


def http_request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def ahttp(*args, **kw) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_request, *args, **kw)


class SSE:
    """One SSE subscription over a raw asyncio connection (HTTP/1.1, chunked or not).

    A reader task parses the stream into events {"id", "event", "data"} on a queue, so
    waiting with a timeout never loses stream state.
    """

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.comments = 0
        self.closed = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(
        cls, base: str, path: str, headers: dict[str, str] | None = None, within: float = 10
    ) -> SSE:
        self = cls()
        u = urllib.parse.urlsplit(base)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(u.hostname, u.port or 80, limit=1 << 20), within
        )
        self._writer = writer
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {u.hostname}:{u.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()

        async def head() -> None:
            status_line = (await reader.readline()).decode("latin-1").strip()
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise CheckError(f"bad status line {status_line!r}")
            self.status = int(parts[1])
            while True:
                line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()

        await asyncio.wait_for(head(), within)
        if self.status != 200:
            body = b""
            try:
                body = await asyncio.wait_for(reader.read(2000), 1)
            except TimeoutError:
                pass
            self.close()
            raise CheckError(f"GET {path} answered {self.status}: {body[:300]!r}")
        self._task = asyncio.create_task(self._pump(reader))
        return self

    async def _body(self, reader: asyncio.StreamReader):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                yield data

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        buf = b""
        ev: dict[str, str] = {}
        data: list[str] = []
        try:
            async for piece in self._body(reader):
                buf += piece
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line = buf[:nl].rstrip(b"\r").decode("utf-8")
                    buf = buf[nl + 1 :]
                    if line == "":
                        if data or ev:
                            if data:
                                ev["data"] = "\n".join(data)
                            self.events.put_nowait(ev)
                        ev, data = {}, []
                    elif line.startswith(":"):
                        self.comments += 1
                    else:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "data":
                            data.append(value)
                        elif field in ("id", "event", "retry"):
                            ev[field] = value
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()

    async def next(self, within: float) -> dict[str, str]:
        try:
            return await asyncio.wait_for(self.events.get(), within)
        except TimeoutError:
            raise CheckError(
                f"no event within {within}s (stream closed: {self.closed.is_set()})"
            ) from None

    async def drain(self, quiet: float) -> list[dict[str, str]]:
        """Every event that arrives until nothing has come for `quiet` seconds."""
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(self.events.get(), quiet))
            except TimeoutError:
                return got

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._writer:
            self._writer.close()


# ----------------------------------------------------------------------------- process memory


def peer_pids(pidfile: str) -> list[int]:
    """The pid in pidfile plus its direct children (nginx workers)."""
    try:
        main = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [main]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == main:
            pids.append(int(stat.parent.name))
    return pids


def memory(pidfile: str) -> dict:
    rss = pss = 0
    per = {}
    for pid in peer_pids(pidfile):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb = int(line.split()[1])
                    rss += kb
                    per[pid] = kb
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1), "rss_kib_by_pid": per}


# ----------------------------------------------------------------------------- peers


class Nchan:
    name = "nchan"

    def __init__(self) -> None:
        env = peer_env("nchan")
        self.base = env.get("AOS_BENCH_NCHAN_URL", "http://127.0.0.1:8091")
        self.pidfile = env.get("AOS_BENCH_NCHAN_PIDFILE", "")

    async def publish(self, ch: str, text: str) -> str:
        status, body = await ahttp(
            self.base,
            "POST",
            f"/pub/{ch}",
            text.encode(),
            {"Accept": "application/json", "Content-Type": "text/plain"},
        )
        if status not in (201, 202):
            raise CheckError(f"publish answered {status}: {body[:200]!r}")
        return json.loads(body)["last_message_id"]

    async def subscribers(self, ch: str) -> int:
        status, body = await ahttp(
            self.base, "GET", f"/pub/{ch}", headers={"Accept": "application/json"}
        )
        return json.loads(body)["subscribers"] if status == 200 else 0

    async def wait_subscribers(self, ch: str, n: int, within: float = 30) -> None:
        # The HTTP 200 comes before the subscriber is registered with the channel's owner
        # worker; publish only once nchan counts them all.
        deadline = time.monotonic() + within
        while (have := await self.subscribers(ch)) < n:
            if time.monotonic() > deadline:
                raise CheckError(f"only {have}/{n} subscribers registered after {within}s")
            await asyncio.sleep(0.05)

    async def subscribe(self, ch: str, query: str = "", last_id: str | None = None) -> SSE:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        return await SSE.open(self.base, f"/sub/{ch}{query}", headers)

    @staticmethod
    def id_key(msg_id: str) -> tuple[int, ...]:
        # "time:tag" (a single channel's id); compare numerically
        return tuple(int(p) for p in msg_id.replace("[", "").replace("]", "").split(":"))

    async def run(self) -> None:
        ch = f"check-{uuid.uuid4().hex[:12]}"
        t = time.monotonic()
        try:
            sub = await self.subscribe(ch)
            ctype = sub.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise CheckError(f"content-type {ctype!r}")
            await self.wait_subscribers(ch, 1)
            emit(self.name, "subscribe", True, t, channel=ch, content_type=ctype)
        except (CheckError, OSError) as exc:
            emit(self.name, "subscribe", False, t, channel=ch, error=str(exc))
            return

        t = time.monotonic()
        seen: list[dict[str, str]] = []
        try:
            pub_ids = [await self.publish(ch, f"msg-{i}") for i in (1, 2, 3)]
            for _ in range(3):
                seen.append(await sub.next(5))
            extra = await sub.drain(0.3)
            datas = [e.get("data") for e in seen]
            ids = [e.get("id") for e in seen]
            if datas != ["msg-1", "msg-2", "msg-3"] or extra:
                raise CheckError(f"got {datas} then {[e.get('data') for e in extra]}")
            if None in ids or ids != pub_ids:
                raise CheckError(f"ids {ids} != published ids {pub_ids}")
            if sorted(ids, key=self.id_key) != ids or len(set(ids)) != 3:
                raise CheckError(f"ids not strictly increasing: {ids}")
            emit(self.name, "live", True, t, ids=ids)
        except (CheckError, OSError, KeyError, ValueError) as exc:
            emit(self.name, "live", False, t, error=str(exc), seen=seen)
            sub.close()
            return
        finally:
            sub.close()

        t = time.monotonic()
        last = seen[-1]["id"]
        try:
            missed = [await self.publish(ch, f"msg-{i}") for i in (4, 5)]
            sub = await self.subscribe(ch, last_id=last)
            try:
                got = [await sub.next(5) for _ in range(2)]
                got += await sub.drain(0.3)
                if [e.get("data") for e in got] != ["msg-4", "msg-5"] or [
                    e.get("id") for e in got
                ] != missed:
                    raise CheckError(
                        f"resumed after {last}, got {[(e.get('id'), e.get('data')) for e in got]}"
                    )
                await self.wait_subscribers(ch, 1)
                live_id = await self.publish(ch, "msg-6")
                ev = await sub.next(5)
                if (ev.get("id"), ev.get("data")) != (live_id, "msg-6") or await sub.drain(0.3):
                    raise CheckError(f"after resume, live message wrong: {ev}")
            finally:
                sub.close()
            emit(
                self.name,
                "resume",
                True,
                t,
                last_event_id=last,
                recovered=missed,
                then_live=live_id,
            )
        except (CheckError, OSError, KeyError, ValueError) as exc:
            emit(self.name, "resume", False, t, last_event_id=last, error=str(exc))

        t = time.monotonic()
        try:
            sub = await self.subscribe(ch, "?history=1")
            try:
                got = [await sub.next(5) for _ in range(6)]
                got += await sub.drain(0.3)
            finally:
                sub.close()
            datas = [e.get("data") for e in got]
            if datas != [f"msg-{i}" for i in range(1, 7)]:
                raise CheckError(f"history replay gave {datas}")
            emit(self.name, "history", True, t, replayed=len(got))
        except (CheckError, OSError) as exc:
            emit(self.name, "history", False, t, error=str(exc))

    async def fanout(self, n: int) -> None:
        ch = f"fanout-{uuid.uuid4().hex[:12]}"
        subs: list[SSE] = []
        t = time.monotonic()
        before = memory(self.pidfile)
        try:
            subs = await open_many(n, lambda: self.subscribe(ch))
            t_conn = time.monotonic() - t
            await self.wait_subscribers(ch, n, 60)
            connected = memory(self.pidfile)
            msg = f"fanout-{time.time_ns()}"
            t_pub = time.monotonic()
            await self.publish(ch, msg)
            ok, lat = await receive_all(subs, lambda e: e.get("data") == msg, t_pub)
            after = memory(self.pidfile)
            emit(
                self.name,
                "fanout",
                ok == n,
                t,
                subscribers=n,
                received=ok,
                connect_s=round(t_conn, 2),
                **lat,
                mem_before=before,
                mem_connected=connected,
                mem_after_delivery=after,
            )
        except (CheckError, OSError) as exc:
            emit(self.name, "fanout", False, t, subscribers=n, opened=len(subs), error=str(exc))
        finally:
            for s in subs:
                s.close()


class Centrifugo:
    name = "centrifugo"

    def __init__(self) -> None:
        env = peer_env("centrifugo")
        self.base = env.get("AOS_BENCH_CENTRIFUGO_URL", "http://127.0.0.1:8092")
        self.key = env.get("AOS_BENCH_CENTRIFUGO_API_KEY", "")
        self.ns = env.get("AOS_BENCH_CENTRIFUGO_NAMESPACE", "bench")
        self.pidfile = env.get("AOS_BENCH_CENTRIFUGO_PIDFILE", "")

    async def publish(self, ch: str, data) -> dict:
        status, body = await ahttp(
            self.base,
            "POST",
            "/api/publish",
            json.dumps({"channel": ch, "data": data}).encode(),
            {"X-API-Key": self.key, "Content-Type": "application/json"},
        )
        if status != 200:
            raise CheckError(f"publish answered {status}: {body[:200]!r}")
        reply = json.loads(body)
        if "error" in reply:
            raise CheckError(f"publish error {reply['error']}")
        return reply["result"]  # {"offset": n, "epoch": "..."}

    async def subscribe(self, ch: str, recover: dict | None = None) -> tuple[SSE, dict]:
        """Open uni_sse subscribed to ch; returns the stream and the connect reply."""
        connect = {"subs": {ch: recover or {}}}
        q = urllib.parse.urlencode({"cf_connect": json.dumps(connect, separators=(",", ":"))})
        sub = await SSE.open(self.base, f"/connection/uni_sse?{q}")
        try:
            first = json.loads((await sub.next(5))["data"])
            if "connect" not in first:
                raise CheckError(f"first message is not a connect reply: {first}")
            return sub, first["connect"]
        except BaseException:
            sub.close()
            raise

    @staticmethod
    async def pubs(sub: SSE, count: int, within: float = 5) -> list[dict]:
        """The next `count` publications, skipping pings ({})."""
        got = []
        while len(got) < count:
            msg = json.loads((await sub.next(within))["data"])
            if "pub" in msg:
                got.append(msg)
        return got

    @staticmethod
    async def more_pubs(sub: SSE, quiet: float = 0.3) -> list[dict]:
        return [m for m in (json.loads(e["data"]) for e in await sub.drain(quiet)) if "pub" in m]

    async def run(self) -> None:
        ch = f"{self.ns}:check-{uuid.uuid4().hex[:12]}"
        t = time.monotonic()
        try:
            sub, conn = await self.subscribe(ch)
            info = conn.get("subs", {}).get(ch)
            if info is None or not info.get("recoverable"):
                sub.close()
                raise CheckError(f"connect reply has no recoverable subscription to {ch}: {conn}")
            emit(
                self.name,
                "subscribe",
                True,
                t,
                channel=ch,
                content_type=sub.headers.get("content-type"),
                epoch=info.get("epoch"),
            )
        except (CheckError, OSError, ValueError) as exc:
            emit(self.name, "subscribe", False, t, channel=ch, error=str(exc))
            return

        t = time.monotonic()
        try:
            results = [await self.publish(ch, {"n": i}) for i in (1, 2, 3)]
            got = await self.pubs(sub, 3)
            extra = await self.more_pubs(sub)
            ns = [m["pub"]["data"]["n"] for m in got]
            offsets = [m["pub"].get("offset") for m in got]
            if ns != [1, 2, 3] or extra:
                raise CheckError(f"got {ns} then {extra}")
            if offsets != [r["offset"] for r in results] or offsets != sorted(set(offsets)):
                raise CheckError(f"offsets {offsets} vs published {results}")
            epoch = results[-1]["epoch"]
            emit(self.name, "live", True, t, offsets=offsets, epoch=epoch)
        except (CheckError, OSError, KeyError, ValueError) as exc:
            emit(self.name, "live", False, t, error=str(exc))
            return
        finally:
            sub.close()

        t = time.monotonic()
        last = offsets[-1]
        try:
            missed = [await self.publish(ch, {"n": i}) for i in (4, 5)]
            sub, conn = await self.subscribe(ch, {"recover": True, "offset": last, "epoch": epoch})
            try:
                info = conn["subs"][ch]
                recovered = [p["data"]["n"] for p in info.get("publications", [])]
                rec_offsets = [p.get("offset") for p in info.get("publications", [])]
                extra = await self.more_pubs(sub)
                if not info.get("recovered") or recovered != [4, 5] or extra:
                    raise CheckError(
                        f"recovered={info.get('recovered')} publications={recovered} then {extra}"
                    )
                if rec_offsets != [m["offset"] for m in missed]:
                    raise CheckError(f"recovered offsets {rec_offsets} vs published {missed}")
                live = await self.publish(ch, {"n": 6})
                got = await self.pubs(sub, 1)
                if (
                    got[0]["pub"]["data"] != {"n": 6}
                    or got[0]["pub"].get("offset") != live["offset"]
                    or await self.more_pubs(sub)
                ):
                    raise CheckError(f"after recovery, live publication wrong: {got}")
            finally:
                sub.close()
            emit(
                self.name,
                "resume",
                True,
                t,
                from_offset=last,
                recovered_offsets=rec_offsets,
                then_live=live["offset"],
            )
        except (CheckError, OSError, KeyError, ValueError) as exc:
            emit(self.name, "resume", False, t, from_offset=last, error=str(exc))

    async def fanout(self, n: int) -> None:
        ch = f"{self.ns}:fanout-{uuid.uuid4().hex[:12]}"
        subs: list[SSE] = []
        t = time.monotonic()
        before = memory(self.pidfile)
        try:
            # The connect reply comes after the server-side subscription is in place.
            pairs = await open_many(n, lambda: self.subscribe(ch))
            subs = [s for s, _ in pairs]
            t_conn = time.monotonic() - t
            connected = memory(self.pidfile)
            t_pub = time.monotonic()
            res = await self.publish(ch, {"fanout": True})

            def match(e):
                m = json.loads(e["data"])
                return "pub" in m and m["pub"].get("offset") == res["offset"]

            ok, lat = await receive_all(subs, match, t_pub)
            after = memory(self.pidfile)
            emit(
                self.name,
                "fanout",
                ok == n,
                t,
                subscribers=n,
                received=ok,
                connect_s=round(t_conn, 2),
                **lat,
                mem_before=before,
                mem_connected=connected,
                mem_after_delivery=after,
            )
        except (CheckError, OSError) as exc:
            emit(self.name, "fanout", False, t, subscribers=n, opened=len(subs), error=str(exc))
        finally:
            for s in subs:
                s.close()


async def open_many(n: int, factory, concurrency: int = 200) -> list:
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            return await factory()

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                (r[0] if isinstance(r, tuple) else r).close()
        raise CheckError(f"{len(errors)}/{n} subscriptions failed, first: {errors[0]!r}")
    return results


async def receive_all(subs: list[SSE], match, t_pub: float, within: float = 30) -> tuple[int, dict]:
    lat: list[float] = []

    async def wait_one(s: SSE) -> bool:
        deadline = time.monotonic() + within
        while True:
            e = await s.next(max(0.01, deadline - time.monotonic()))
            if match(e):
                lat.append(time.monotonic() - t_pub)
                return True

    results = await asyncio.gather(*(wait_one(s) for s in subs), return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    lat.sort()
    pct = (
        (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1))
        if lat
        else (lambda q: None)
    )
    return ok, {
        "delivery_ms_p50": pct(0.5),
        "delivery_ms_p99": pct(0.99),
        "delivery_ms_max": pct(1.0),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", default="nchan,centrifugo")
    ap.add_argument(
        "--fanout",
        type=int,
        default=0,
        metavar="N",
        help="also open N concurrent subscribers to one channel per peer",
    )
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.fanout + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))

    classes = {"nchan": Nchan, "centrifugo": Centrifugo}
    for name in [p.strip() for p in args.peers.split(",") if p.strip()]:
        t = time.monotonic()
        if name not in classes:
            emit(name, "setup", False, t, error=f"unknown peer (known: {', '.join(classes)})")
            continue
        try:
            peer = classes[name]()
            await ahttp(peer.base, "GET", "/")
        except (CheckError, OSError) as exc:
            emit(name, "setup", False, t, error=f"peer not reachable: {exc}")
            continue
        await peer.run()
        if args.fanout:
            await peer.fanout(args.fanout)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
