"""Issue 16, case 4: connections that send nothing, trickle their headers, or idle after a response.

Before: 50 silent connections and 50 slowloris header senders were all still open after 40 s.
Now each is closed once its limit passes (``header_timeout_s``, ``keepalive_timeout_s``, lowered
here so the test is short): silent ones without an answer, slowloris ones with a 408, idle
keep-alive ones after their idle time, while the server keeps answering everyone else.
Margins: a close must come after its limit (the deadline is what closes it) and within 4 s of
it (a loaded 2-core machine delays timers by far less).
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.hostile.conftest import HEADER_TIMEOUT_S, KEEPALIVE_S
from tests.hostile.support_net import (
    Ending,
    connect,
    logged_total,
    raw_request,
    read_response,
    read_until_closed,
    status_of,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.hostile

LATE_S = 4.0  # how late after its limit a close may come on a loaded machine
SILENT, SLOW = 20, 20


@pytest.fixture
def server(guarded_server: ServerProcess) -> ServerProcess:
    return guarded_server


def trickle(socks: list, stop: threading.Event) -> None:  # type: ignore[type-arg]
    """A slowloris: a request line, then one header byte per connection every 0.2 s, never the end."""
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    while not stop.wait(0.2):
        for sock in socks:
            try:
                sock.sendall(b"X")
            except OSError:  # answered and closed: this one is done
                continue


def test_silent_and_slowloris_connections_are_closed_at_the_header_deadline(server: ServerProcess) -> None:
    start = time.monotonic()
    silent = [connect(server.url) for _ in range(SILENT)]
    slow = [connect(server.url) for _ in range(SLOW)]
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=(slow, stop), daemon=True)
    sender.start()
    try:
        time.sleep(HEADER_TIMEOUT_S / 2)
        assert httpx.get(f"{server.url}/healthz", timeout=5.0).status_code == 200  # everyone else is served
        endings: list[Ending] = [read_until_closed(s, start, HEADER_TIMEOUT_S + LATE_S) for s in silent + slow]
    finally:
        stop.set()
        sender.join()
        for sock in silent + slow:
            sock.close()
    for ending in endings[:SILENT]:  # nothing sent: closed without an answer
        assert ending.how == "eof" and ending.data == b"", ending
        assert HEADER_TIMEOUT_S - 0.2 <= ending.seconds <= HEADER_TIMEOUT_S + LATE_S, ending
    for ending in endings[SILENT:]:  # part of a request: 408 with the error envelope, then closed
        assert ending.how in ("eof", "reset") and status_of(ending.data) == 408, ending
        body = json.loads(ending.data.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout", body
        assert HEADER_TIMEOUT_S - 0.2 <= ending.seconds <= HEADER_TIMEOUT_S + LATE_S + 1.0, ending
    assert logged_total(server, "silent_timeout", SILENT) >= SILENT
    assert logged_total(server, "header_timeout", SLOW) >= SLOW


def test_a_slow_second_request_on_a_kept_alive_connection_gets_408(server: ServerProcess) -> None:
    sock = connect(server.url)
    with sock:
        sock.sendall(raw_request("/healthz"))
        first = read_response(sock)
        assert status_of(first) == 200 and b"connection: close" not in first.lower(), first
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # begun within the idle time, never finished
        ending = read_until_closed(sock, start, HEADER_TIMEOUT_S + LATE_S)
    assert status_of(ending.data) == 408, ending
    assert HEADER_TIMEOUT_S - 0.2 <= ending.seconds <= HEADER_TIMEOUT_S + LATE_S, ending


def test_an_idle_keep_alive_connection_is_closed_after_its_idle_time(server: ServerProcess) -> None:
    sock = connect(server.url)
    with sock:
        sock.sendall(raw_request("/healthz"))
        assert status_of(read_response(sock)) == 200
        start = time.monotonic()
        ending = read_until_closed(sock, start, KEEPALIVE_S + LATE_S)
    assert ending.how == "eof" and ending.data == b"", ending
    assert KEEPALIVE_S - 0.2 <= ending.seconds <= KEEPALIVE_S + LATE_S, ending

