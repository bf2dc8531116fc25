"""Issue 16, cases 7 and 8: ``--workers 2`` when the supervisor is killed, and when it is stopped.

Before: after SIGKILL of the supervisor the workers were orphaned and kept serving, so a restart
failed with "address already in use"; on SIGTERM, requests arriving during the shutdown were reset
after up to 2.4 s. Now the workers die with their supervisor (and the port is free again), and on
SIGTERM every new request is answered (200, or 503 with ``Retry-After`` while draining) or its
connection is refused, never reset. A worker that is itself SIGKILLed loses only its in-flight
requests; the supervisor replaces it (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from deltagate.server_process import LOCALHOST
from service.supervision import SETTLE_S, stop_new_connections
from tests.hostile.support_net import DUMMY_ENV, connect, logged_total, raw_request, read_until_closed, status_of
from tests.server_process import ServerProcess, start_server
from tests.service_support import noise_image

pytestmark = pytest.mark.hostile

WORKERS = 2
CLIENTS = 6  # concurrent clients of the SIGTERM test


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def worker_pids(server: ServerProcess, count: int = WORKERS, timeout_s: float = 120.0) -> set[int]:
    """The pids of the workers that have logged "ready", once ``count`` have."""
    end = time.monotonic() + timeout_s
    while len(pids := {int(e["pid"]) for e in server.log_lines() if e.get("msg") == "ready"}) < count:
        assert time.monotonic() < end and server.proc.poll() is None, server.log_tail()
        time.sleep(0.1)
    return pids


def start_workers(tmp_path: Path, **extra: str) -> ServerProcess:
    server = start_server(tmp_path / "server.log", {**DUMMY_ENV, **extra}, ("--workers", str(WORKERS)))
    server.wait_ready()
    return server


def test_a_killed_worker_is_replaced_and_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    server = start_workers(tmp_path)
    try:
        first = worker_pids(server)
        assert server.proc.pid not in first
        os.kill(min(first), signal.SIGKILL)  # a worker dies (OOM kill, crash): the supervisor replaces it
        workers = worker_pids(server, count=WORKERS + 1) - {min(first)}
        files = [("file", ("a.png", noise_image(0, (32, 32)), "image/png"))]
        statuses = Counter(httpx.post(f"{server.url}/classify", files=files, timeout=30.0).status_code
                           for _ in range(6))
        assert statuses == {200: 6}, statuses
        assert all(alive(pid) for pid in workers), workers

        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        end = time.monotonic() + 15.0
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < end, f"orphaned workers still running: {[p for p in workers if alive(p)]}"
            time.sleep(0.1)
        with socket.socket() as sock:  # what a restarted server does first (as uvicorn binds)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOCALHOST, server.port))
        draining = [e for e in server.log_lines() if e.get("msg") == "draining"]
        assert draining and all(e["orphaned"] for e in draining), draining  # no drain: the port is freed at once
    finally:
        server.stop()


def client_loop(url: str, stop: threading.Event, served: threading.Semaphore) -> Counter[str]:
    """New connections, one request each, until refused (the endpoint is gone) or told to stop;
    ``served`` is released once, at this client's first 200.

    One client (and one TLS context, ~30 ms of CPU that a loaded machine stretches) per loop, not
    per request; no keep-alive, so every request still opens a connection of its own.
    """
    outcomes: Counter[str] = Counter()
    files = [("file", ("a.png", noise_image(0, (32, 32)), "image/png"))]
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stop.is_set():
            try:
                r = client.post(f"{url}/classify", files=files)
            except httpx.ConnectError:
                outcomes["refused"] += 1
                return outcomes
            except httpx.HTTPError as exc:  # reset, half answer, timeout after the request was sent
                outcomes[f"DROPPED: {type(exc).__name__}"] += 1
                return outcomes
            if r.status_code == 200:
                if not outcomes["200"]:
                    served.release()
                outcomes["200"] += 1
            elif r.status_code == 503 and "retry-after" in r.headers:
                outcomes["503"] += 1
            else:
                outcomes[f"BAD: {r.status_code}"] += 1
    return outcomes


@pytest.mark.parametrize("send", [
    pytest.param(lambda server: os.kill(server.proc.pid, signal.SIGTERM), id="to the supervisor"),
    pytest.param(lambda server: os.killpg(server.proc.pid, signal.SIGTERM), id="to the process group"),
])
def test_sigterm_with_workers_answers_or_refuses_and_never_resets(
        tmp_path: Path, send: Callable[[ServerProcess], None]) -> None:
    server = start_workers(tmp_path, DELTAGATE_DRAIN_S="1.0")
    stop, served = threading.Event(), threading.Semaphore(0)
    try:
        worker_pids(server)
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client_loop, server.url, stop, served) for _ in range(CLIENTS)]
            try:
                # SIGTERM once every client has been served, not after a fixed second: on a loaded
                # machine the clients' first requests could still be on their way, and all met the drain
                end = time.monotonic() + 60.0
                for _ in range(CLIENTS):
                    assert served.acquire(timeout=max(0.0, end - time.monotonic())), server.log_tail()
                send(server)
                status = server.proc.wait(60)
            finally:
                stop.set()  # before the pool waits for the clients
            outcomes = sum((f.result() for f in futures), Counter())
    finally:
        server.stop()
    assert not [k for k in outcomes if k.startswith(("DROPPED", "BAD"))], outcomes
    assert outcomes["200"] > 0 and outcomes["503"] > 0, outcomes  # served, then drained
    assert outcomes["refused"] == CLIENTS, outcomes  # every client ended at a closed port
    assert status in (0, -signal.SIGTERM), server.log_tail()
    draining = {e["pid"] for e in server.log_lines() if e.get("msg") == "draining"}
    assert len(draining) == WORKERS, server.log_tail()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the SYN filter is Linux's")
def test_stopping_new_connections_keeps_the_queue_and_turns_new_ones_into_refusals() -> None:
    """The mechanism behind "never reset": after the filter, a queued connection is still accepted,
    a new connect gets no answer until the listener closes, and then a refusal (not a reset)."""
    with socket.socket() as listener:
        listener.bind((LOCALHOST, 0))
        listener.listen(8)
        address = listener.getsockname()
        queued = socket.create_connection(address, timeout=5.0)
        assert stop_new_connections([listener])
        outcome: dict[str, str] = {}

        def connect_late() -> None:
            try:
                socket.create_connection(address, timeout=10.0).close()
                outcome["new"] = "connected"
            except OSError as exc:
                outcome["new"] = type(exc).__name__

        late = threading.Thread(target=connect_late)
        late.start()
        accepted, _ = listener.accept()  # the connection queued before the filter
        with accepted, queued:
            queued.sendall(b"x")
            assert accepted.recv(1) == b"x"
        time.sleep(0.3)
        assert "new" not in outcome, outcome  # its SYN was dropped: still connecting
    late.join(10.0)  # the listener is closed now: the SYN's retry meets a closed port
    assert outcome == {"new": "ConnectionRefusedError"}, outcome


def test_a_connection_whose_request_comes_after_the_shutdown_began_is_answered(tmp_path: Path) -> None:
    """uvicorn's shutdown closed every connection without a request in progress at once: a client that
    had connected and was about to send (or was sending its headers) met a closed connection, with no
    way to tell whether its request was seen. Now such a connection gets shutdown_grace_s: a request
    sent then is answered (with Connection: close), headers still unfinished when it ends get a 503,
    and a connection that stays silent is closed when it ends; the stop still completes."""
    grace_s = 5.0  # the time the test has to see the shutdown begin and send (default 2 s)
    server = start_server(tmp_path / "server.log", {**DUMMY_ENV, "DELTAGATE_DRAIN_S": "0.3",
                                                    "DELTAGATE_SHUTDOWN_GRACE_S": str(grace_s)})
    try:
        server.wait_ready()
        sends, partial, silent = (connect(server.url) for _ in range(3))
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 30
        while not any(e.get("msg") == "Shutting down" for e in server.log_lines()):  # uvicorn's, before it
            assert time.monotonic() < end and server.proc.poll() is None, server.log_tail()  # closes connections
            time.sleep(0.01)
        sends.sendall(raw_request("/healthz"))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        answered, cut, closed = (read_until_closed(sock, signalled, grace_s + 20.0)
                                 for sock in (sends, partial, silent))
        assert server.proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once stopped
    finally:
        server.stop()
    assert answered.how == "eof" and status_of(answered.data) == 200, answered
    assert b"connection: close" in answered.data.lower(), answered
    assert cut.how in ("eof", "reset") and status_of(cut.data) == 503, cut
    assert json.loads(cut.data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "not_ready", cut
    assert closed.how == "eof" and closed.data == b"", closed
    # Not before the drain, the settle phase and the grace have passed (a loaded machine only delays it)
    assert closed.seconds >= 0.3 + SETTLE_S + grace_s - 0.05, closed
    assert logged_total(server, "shutdown_closed", 2) == 2, server.log_tail()
