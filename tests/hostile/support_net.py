"""Raw-socket clients for the connection-level hostile tests: what an attacker sends, byte by byte.

httpx would send whole, well-formed requests; these helpers open connections that send nothing,
trickle headers, or send too much, and read what (and when) the server answers.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from deltagate.server_process import ServerProcess

__all__ = ["Ending", "address", "connect", "read_until_closed", "raw_request", "status_of", "limited_nofile_argv",
           "logged_total", "read_response", "DUMMY_ENV"]

# A server that needs no bundle and answers at once (the connection level is the same for every engine).
DUMMY_ENV = {"DELTAGATE_ENGINE": "dummy", "DELTAGATE_BUNDLE_PATH": "/nonexistent", "DELTAGATE_LOG_LEVEL": "info"}


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def connect(url: str, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address(url), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Ending:
    """How a connection ended, seen from the client."""

    data: bytes  # everything the server sent
    seconds: float  # from ``since`` to the end (EOF, reset or the timeout)
    how: str  # "eof", "reset" or "timeout"


def read_until_closed(sock: socket.socket, since: float, timeout_s: float) -> Ending:
    """Read until the server closes (EOF or reset) or ``timeout_s`` after ``since`` passed."""
    data = b""
    while True:
        left = since + timeout_s - time.monotonic()
        if left <= 0:
            return Ending(data, time.monotonic() - since, "timeout")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return Ending(data, time.monotonic() - since, "timeout")
        except ConnectionResetError:
            return Ending(data, time.monotonic() - since, "reset")
        if not chunk:
            return Ending(data, time.monotonic() - since, "eof")
        data += chunk


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """One whole response with a ``Content-Length`` (it may come in several segments)."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def raw_request(path: str = "/healthz", method: str = "GET", headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"") -> bytes:
    """An HTTP/1.1 request as bytes (``Content-Length`` added when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(response: bytes) -> int | None:
    """The status code of a response's status line, or None when there is none."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def limited_nofile_argv(nofile: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run with the open-file limit (soft and hard) set to ``nofile``, as ``ulimit -n`` would."""
    setup = ("import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
             "os.execv(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", setup, str(nofile), *argv]


def logged_total(server: ServerProcess, event: str, at_least: int, timeout_s: float = 5.0) -> int:
    """The running total of a connection-level event in the server's log (service.connections logs a
    burst at most once a second, so the last line may come up to a second late): polled until it
    reaches ``at_least`` or ``timeout_s`` passed."""
    end = time.monotonic() + timeout_s
    while True:
        total = max((int(e["total"]) for e in server.log_lines() if e.get("event") == event), default=0)
        if total >= at_least or time.monotonic() > end:
            return total
        time.sleep(0.1)
