"""DrainingServer's signal handler only records the signal; the drain itself runs on the event loop.

A Python signal handler runs in the main thread between two bytecodes of whatever it was doing. In a
worker of ``--workers N`` that is often a metric update inside prometheus-client's one
(non-reentrant) multiprocess lock; a handler that set the readiness gauge itself waited for that
lock forever (the hang of tests/hostile/test_supervision.py under load).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest
import uvicorn

from service import supervision
from service.supervision import DrainingServer, WorkerProcess


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called: no socket is served
    raise AssertionError("not served")


def _serving_server(begin_drain: Any, drain_s: float) -> DrainingServer:
    server = DrainingServer(uvicorn.Config(_app), begin_drain, drain_s)
    server.started = True  # as after uvicorn's startup: signals now drain
    return server


async def _ticks_until_exit(server: DrainingServer, max_ticks: int = 200) -> int:
    """uvicorn's main loop, faster: tick until the server says it should exit."""
    for tick in range(max_ticks):
        if await server.on_tick(tick):
            return tick
        await asyncio.sleep(0.01)
    raise AssertionError(f"still serving after {max_ticks} ticks")


async def test_a_sigterm_that_lands_inside_a_metric_update_drains_instead_of_deadlocking() -> None:
    metrics_lock = threading.Lock()  # prometheus-client's lock in multiprocess mode
    drained: list[bool] = []

    def begin_drain() -> None:  # the app's drain sets the readiness gauge, under that lock
        acquired = metrics_lock.acquire(timeout=1.0)  # the real acquire has no timeout: the worker hung
        drained.append(acquired)
        if acquired:
            metrics_lock.release()

    server = _serving_server(begin_drain, drain_s=0.05)
    with metrics_lock:  # the event loop's thread is counting a request when SIGTERM lands
        server.handle_exit(signal.SIGTERM, None)
    assert drained == []  # nothing of the drain ran inside the handler
    await _ticks_until_exit(server)
    assert drained == [True]  # it ran on the loop, with the lock free, and the server then stopped


async def test_a_repeated_sigterm_changes_nothing_and_a_second_sigint_skips_the_drain() -> None:
    drains: list[str] = []
    server = _serving_server(lambda: drains.append("drain"), drain_s=30.0)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGTERM, None)  # e.g. to the process group, then from the supervisor
    assert not await server.on_tick(1)
    await asyncio.sleep(0.05)
    assert drains == ["drain"] and not await server.on_tick(2)  # one drain, still serving its 503s
    server.handle_exit(signal.SIGINT, None)  # Ctrl+C during the drain: stop now
    assert await server.on_tick(3)


def _stop_on_sigterm(ready: Any) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ready.set()
    while True:
        time.sleep(0.05)


def _ignore_sigterm(ready: Any) -> None:  # a worker hung in its stop (e.g. on a lock), as the supervisor sees it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    while True:
        time.sleep(0.05)


def _worker(config: uvicorn.Config, target: Any) -> WorkerProcess:
    """A WorkerProcess around a forked stand-in (what runs in it is the target, not a server)."""
    worker = WorkerProcess(config, [])
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker.process = context.Process(target=target, args=(ready,), daemon=True)  # type: ignore[assignment]
    worker.process.start()
    assert ready.wait(30), "the stand-in did not start"  # its SIGTERM handler is set
    return worker


def test_the_supervisor_kills_a_worker_that_does_not_stop_by_the_deadline(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn terminates every worker, then joins each (on a stop; one by one on a SIGHUP restart):
    a hung one is SIGKILLed once its deadline, counted from its SIGTERM, has passed."""
    monkeypatch.setattr(supervision, "STOP_MARGIN_S", 0.5)
    config = uvicorn.Config(_app, timeout_graceful_shutdown=1)
    config.drain_s = 0.2  # type: ignore[attr-defined]  # as service.server's ServiceConfig
    deadline = supervision.stop_deadline_s(config)
    assert deadline == pytest.approx(0.2 + supervision.SETTLE_S + 1 + 0.5)
    hung, healthy = _worker(config, _ignore_sigterm), _worker(config, _stop_on_sigterm)
    try:
        started = time.monotonic()
        for worker in (hung, healthy):
            worker.terminate()
        with caplog.at_level(logging.ERROR, logger="service.supervision"):
            for worker in (hung, healthy):
                worker.join()
        took = time.monotonic() - started
    finally:
        for worker in (hung, healthy):
            worker.process.kill()
    assert deadline - 0.1 <= took < deadline + 2.0
    assert hung.process.exitcode == -signal.SIGKILL
    assert healthy.process.exitcode == 0
    assert [r.message for r in caplog.records] == ["worker did not stop in time; killed"]
