"""Helpers for the request-level hostile tests: a real server, its memory, and a client that trickles its body.

The server is ``deltagate serve`` in its own process (:func:`tests.server_process.serving`) on the
dummy engine: the request level is the same for every engine. Its memory is read from ``/proc``:
the peak (``VmHWM``) is reset before an attack (``clear_refs`` 5), so the peak an attack causes is
measured alone.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deltagate.server_process import ServerProcess
from tests.server_process import serving

__all__ = ["dummy_server", "reset_peak_rss_kib", "peak_rss_kib", "SlowSender", "post_timed", "status_line"]


@contextmanager
def dummy_server(log_path: Path, **settings: object) -> Iterator[ServerProcess]:
    """A ready dummy-engine server with these settings (``DELTAGATE_*`` values), stopped after the block."""
    env = {"DELTAGATE_ENGINE": "dummy", "DELTAGATE_BUNDLE_PATH": "/nonexistent", "DELTAGATE_INSTANCES": "1",
           **{f"DELTAGATE_{k.upper()}": str(v) for k, v in settings.items()}}
    with serving(log_path, env) as server:
        yield server


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def reset_peak_rss_kib(pid: int) -> int:
    """Reset the process's peak resident size to its current one (Linux ``clear_refs`` 5); returns it (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmHWM")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident size since the last reset (KiB)."""
    return _status_kib(pid, "VmHWM")


def post_timed(url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    """One POST (a fresh connection); the response and its seconds."""
    start = time.perf_counter()
    response = httpx.post(url, timeout=60.0, **kwargs)  # type: ignore[arg-type]
    return response, time.perf_counter() - start


def status_line(response: bytes) -> int | None:
    """The status of a raw HTTP response, or None when nothing (or no status line) came."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


@dataclass
class SlowSender:
    """A client that sends a request's headers at once, then its body one byte at a time when told.

    Args:
        url: the server's base URL.
        declared: the ``Content-Length`` it announces (never reached by a slow sender).
    """

    url: str
    declared: int = 10_000
    sock: socket.socket = field(init=False)
    opened: float = field(init=False)
    answer: bytes = b""
    answered_after: float | None = None  # seconds from opening to the first byte of the answer
    closed: bool = False  # the server closed the connection (EOF or reset)

    def __post_init__(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        boundary = "hostile"
        head = (f"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {self.declared}\r\n\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n')
        self.opened = time.monotonic()
        self.sock.sendall(head.encode())

    def tick(self) -> None:
        """Send one more body byte (unless the server has answered) and read what has come."""
        self.poll()
        if self.answered_after is None and not self.closed:
            try:
                self.sock.send(b"x")
            except OSError:
                self.closed = True

    def poll(self) -> None:
        """Read whatever the server has sent, without blocking."""
        while not self.closed and select.select([self.sock], [], [], 0)[0]:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            if self.answered_after is None:
                self.answered_after = time.monotonic() - self.opened
            self.answer += chunk

    @property
    def status(self) -> int | None:
        return status_line(self.answer)

    @property
    def error(self) -> dict[str, object]:
        """The JSON error body of the answer."""
        return json.loads(self.answer.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
