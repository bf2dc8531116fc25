"""Issue 16, case 4: more connections than the process has file descriptors for.

Before: with a 1024 open-file limit, 2000 silent connections filled the descriptor table and a
burst of 500 requests was dropped with no response and no log line. Scaled down here (a 256-file
limit, so a cap of 256 - 64 reserved - 64 lingering = 128 connections): 300 silent connections,
more than the whole file limit, then a burst of requests. The connections beyond the cap are
answered 503 (``too_many_connections``, ``Retry-After``) and counted in the log; every request of
the burst gets an HTTP answer; once the silent ones pass their header deadline they are closed and
the server serves everyone again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.connections import FD_RESERVE, MAX_LINGERING
from tests.hostile.support_net import (
    DUMMY_ENV,
    connect,
    limited_nofile_argv,
    logged_total,
    raw_request,
    read_until_closed,
    status_of,
)
from tests.server_process import serving

pytestmark = pytest.mark.hostile

NOFILE = 256
CAP = NOFILE - FD_RESERVE - MAX_LINGERING
SILENT = 300
BURST = 40
HEADER_TIMEOUT_S = 6.0


def burst_request(url: str) -> str:
    """A client that connects, sends its request at once and reads the answer: what it got."""
    with connect(url) as sock:
        start = time.monotonic()
        try:
            sock.sendall(raw_request("/healthz", headers=[("Connection", "close")]))
        except OSError as exc:
            return f"send failed: {type(exc).__name__}"
        ending = read_until_closed(sock, start, 15.0)
    status = status_of(ending.data)
    return f"no answer ({ending.how})" if status is None else str(status)


def test_connections_beyond_the_cap_are_answered_503_and_logged(tmp_path: Path) -> None:
    env = {**DUMMY_ENV, "DELTAGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    with serving(tmp_path / "server.log", env, wrap=lambda argv: limited_nofile_argv(NOFILE, argv)) as server:
        lowered = [e for e in server.log_lines() if e.get("msg", "").startswith("max_connections lowered")]
        assert lowered and lowered[0]["cap"] == CAP and lowered[0]["open_file_limit"] == NOFILE, lowered

        opened = time.monotonic()
        silent = [connect(server.url) for _ in range(SILENT)]  # more than the whole open-file limit
        try:
            time.sleep(0.5)
            answered: Counter[str] = Counter()
            for sock in silent:
                sock.setblocking(False)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    answered["held"] += 1
                    continue
                data += read_until_closed(sock, time.monotonic(), 5.0).data  # answered: the rest, then EOF
                answered[str(status_of(data))] += 1
                if status_of(data) == 503:
                    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
                    assert body["error"]["code"] == "too_many_connections" and b"retry-after: 1" in data.lower()
            assert answered == {"held": CAP, "503": SILENT - CAP}, answered
            assert logged_total(server, "refused", SILENT - CAP) >= SILENT - CAP

            with ThreadPoolExecutor(BURST) as pool:  # a burst while the cap is full: each gets an answer
                outcomes = Counter(pool.map(lambda _: burst_request(server.url), range(BURST)))
            assert set(outcomes) <= {"503", "200"} and outcomes["503"] > 0, outcomes
            assert logged_total(server, "refused", SILENT - CAP + outcomes["503"]) >= SILENT - CAP + outcomes["503"]

            for sock in silent:  # the held ones end at their header deadline
                sock.setblocking(True)
            endings = [read_until_closed(s, opened, HEADER_TIMEOUT_S + 6.0) for s in silent]
            assert Counter(e.how for e in endings) == {"eof": SILENT}, Counter(e.how for e in endings)
        finally:
            for sock in silent:
                sock.close()
        with ThreadPoolExecutor(8) as pool:  # and the server serves everyone again
            statuses = Counter(pool.map(lambda _: httpx.get(f"{server.url}/readyz", timeout=10.0).status_code,
                                        range(BURST)))
        assert statuses == {200: BURST}, statuses
        metrics = httpx.get(f"{server.url}/metrics", timeout=10.0).text
        name = 'deltagate_connection_events_total{event="refused"}'
        refused = [line for line in metrics.splitlines() if line.startswith(name)]
        assert refused and float(refused[0].split()[-1]) == SILENT - CAP + outcomes["503"], refused
