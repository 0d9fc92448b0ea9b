"""Idle keep-alive connections: kept for ``AOS_KEEPALIVE_TIMEOUT`` (longer than a
load balancer's idle timeout, so a proxy never reuses one the service closed),
then closed."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ..support import Server

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: aos\r\n\r\n"


def _ask(sock: socket.socket) -> bytes:
    sock.sendall(REQUEST)
    return sock.recv(65536)


def test_an_idle_connection_outlives_uvicorns_five_seconds(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert _ask(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # uvicorn's own default would have closed it after 5 s
        assert _ask(sock).startswith(b"HTTP/1.1 200")


def test_an_idle_connection_is_closed_after_the_timeout(tmp_path: Path) -> None:
    running = Server(
        f"sqlite:///{tmp_path}/aos.db", tmp_path, env={"AOS_KEEPALIVE_TIMEOUT": "1"}
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            assert _ask(sock).startswith(b"HTTP/1.1 200")
            time.sleep(2)
            assert sock.recv(1) == b"", "the service closed the idle connection"
    finally:
        running.stop()
