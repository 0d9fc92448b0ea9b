#!/usr/bin/env python3
"""Minimal CQL health probe (stdlib only, native protocol v4).

Connects to HOST:PORT, sends STARTUP, runs
  SELECT release_version FROM system.local
and prints the release version. Exit 0 on success, 1 otherwise (reason on
stderr). Used by scripts/testenv/cassandra.sh so that `status`/`start` need no
pip packages.

usage: cql_probe.py [HOST] [PORT] [TIMEOUT_SECONDS]
"""

import socket
import struct
import sys

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE, OP_QUERY, OP_RESULT = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x07,
    0x08,
)
CONSISTENCY_ONE = 0x0001


def _string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _long_string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def _frame(stream, opcode, body):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


def _read_frame(sock):
    header = _recv_exact(sock, 9)
    _version, _flags, stream, opcode, length = struct.unpack(">BBhBi", header)
    return stream, opcode, _recv_exact(sock, length)


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode()

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)


def _error_text(body):
    r = _Reader(body)
    code = r.int()
    return f"server error 0x{code:04x}: {r.string()}"


def probe(host, port, timeout):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        sock.sendall(_frame(1, OP_STARTUP, body))
        _, opcode, body = _read_frame(sock)
        if opcode == OP_ERROR:
            raise RuntimeError(_error_text(body))
        if opcode == OP_AUTHENTICATE:
            # The server is up and speaking CQL; the test server uses no auth,
            # but treat an auth-enabled server as alive, too.
            return "auth-required"
        if opcode != OP_READY:
            raise RuntimeError(f"unexpected STARTUP response opcode 0x{opcode:02x}")

        query = "SELECT release_version FROM system.local"
        body = _long_string(query) + struct.pack(">HB", CONSISTENCY_ONE, 0)
        sock.sendall(_frame(2, OP_QUERY, body))
        _, opcode, body = _read_frame(sock)
        if opcode == OP_ERROR:
            raise RuntimeError(_error_text(body))
        if opcode != OP_RESULT:
            raise RuntimeError(f"unexpected QUERY response opcode 0x{opcode:02x}")
        r = _Reader(body)
        if r.int() != 0x0002:  # Rows
            raise RuntimeError("query did not return rows")
        flags, ncols = r.int(), r.int()
        if flags & 0x0002:  # has_more_pages
            r.bytes()
        if flags & 0x0004:  # no_metadata
            raise RuntimeError("unexpected no_metadata result")
        if flags & 0x0001:  # global_tables_spec
            r.string(), r.string()
        if ncols != 1:
            raise RuntimeError(f"expected 1 column, got {ncols}")
        if not flags & 0x0001:
            r.string(), r.string()
        r.string()  # column name
        r.short()  # type id (varchar; no type options)
        if r.int() < 1:
            raise RuntimeError("system.local returned no rows")
        value = r.bytes()
        return value.decode() if value is not None else "?"


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9042
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    try:
        print(probe(host, port, timeout))
    except Exception as exc:
        print(f"cql probe {host}:{port} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
