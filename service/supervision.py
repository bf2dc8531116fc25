"""How server processes stop: the drain on SIGTERM, and workers that die with their supervisor.

* **Drain** (:class:`DrainingServer`, every server process): on SIGTERM new requests are answered
  503 (``Retry-After``; readiness false) while the socket still listens, for ``drain_s``. Then the
  listener stops taking new connections *before* it is closed (:func:`stop_new_connections`: a
  socket filter drops incoming SYNs, so a client retries its SYN and meets a closed port, a
  refusal), and for ``SETTLE_S`` the connections whose handshake was already under way are still
  accepted and answered. Only then does uvicorn's graceful shutdown close the listener, with
  nothing left in its accept queue to reset. In-flight requests get ``graceful_shutdown_s``.
* **Several workers** (:class:`Supervisor`): uvicorn's multi-process supervisor (it restarts a
  dead worker and stops on a worker that fails to start), with workers that drain as above, and
  that die with the supervisor: each asks the kernel for a signal when its parent dies
  (``PR_SET_PDEATHSIG``) and then stops at once, without the drain, so a SIGKILLed supervisor
  leaves no orphan holding the port. On its own
  SIGTERM the supervisor signals the workers and closes its copy of the listening socket, so the
  socket closes with the last worker's listener instead of queueing connections nobody accepts.
  It waits for a signalled worker (on a stop, or a SIGHUP restart) until :func:`stop_deadline_s`
  after the signal (drain + settle + graceful shutdown + ``STOP_MARGIN_S``), then SIGKILLs it, with
  an error logged: a hung worker cannot keep the supervisor (and the port) forever.

A worker that is SIGKILLed loses its in-flight requests (their connections are reset by the
kernel); the supervisor replaces it, and the other workers keep serving. That is the only loss.

**Signal handlers only record the signal.** A Python signal handler runs in the main thread between
two bytecodes of whatever it was doing, which in a serving process is often a metric update inside
prometheus-client's lock (one non-reentrant lock over every value in multiprocess mode, i.e. with
``--workers N``). A handler that itself set a metric (the drain's readiness gauge), logged or
started a thread waited for a lock its own thread held: the worker hung for good, ignored every
later SIGTERM (it was "already stopping"), and its supervisor waited on it until SIGKILL. So
:meth:`DrainingServer.handle_exit` sets a flag, and the event loop starts the drain on its next
tick (every 0.1 s), where taking locks is safe.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

__all__ = ["DrainingServer", "Supervisor", "WorkerProcess", "stop_new_connections", "die_with_parent",
           "register_worker_drain", "stop_deadline_s", "SETTLE_S", "STOP_MARGIN_S", "PARENT_DEATH_SIGNAL"]

logger = logging.getLogger(__name__)

# After the SYN filter: time for handshakes already under way to complete and be accepted (a few
# round trips on any sane network; a client whose ACK comes later is reset, as without the filter).
SETTLE_S = 0.25
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Classic BPF (linux/filter.h): drop a TCP segment with SYN set and ACK clear; accept the rest.
# A filter on a TCP socket sees the packet from the TCP header on; the flags are byte 13.
_DROP_SYN = [
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, accept
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # accept: ret #-1
]
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def stop_new_connections(sockets: list[Any]) -> bool:
    """Make listening sockets drop new SYNs while they keep their accept queue (Linux); False elsewhere.

    A client's connect then retries its SYN (after ~1 s) and meets the closed port: a refusal, not
    the reset it would get if its connection sat in the accept queue when the listener closed.
    """
    if not sys.platform.startswith("linux"):
        return False
    program = b"".join(struct.pack("HBBI", *op) for op in _DROP_SYN)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(buffer))  # struct sock_fprog
    done = False
    for sock in sockets:
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as dup:
                dup.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            done = True
        except OSError as exc:
            logger.warning("could not stop new connections before closing the listener",
                           extra={"fields": {"error": str(exc)}})
    return done


_worker_drain: list[Callable[[], None]] = []


def register_worker_drain(begin_drain: Callable[[], None]) -> None:
    """In a worker process: the app's drain (503 + readiness false), called by the worker's server."""
    _worker_drain[:] = [begin_drain]


def _begin_worker_drain() -> None:
    for begin in _worker_drain:
        begin()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain and a settle phase before its graceful shutdown.

    Args:
        config: uvicorn's config.
        begin_drain: turns the app to answering 503 (readiness false).
        drain_s: seconds of draining (0: no drain; the settle phase still runs).
        parent_pid: in a worker, its supervisor's pid: a worker orphaned by its supervisor's death
            skips the drain, so that the port is free for a restart as soon as possible.
    """

    def __init__(self, config: uvicorn.Config, begin_drain: Callable[[], None], drain_s: float,
                 parent_pid: int | None = None) -> None:
        super().__init__(config)
        self._begin_drain = begin_drain
        self._drain_s = drain_s
        self._parent_pid = parent_pid
        self._stop_signal: int | None = None  # set by the signal handler; the drain starts on the next tick
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # In signal context: only flags and list appends here, no lock, log line or thread (module docstring).
        if self.should_exit or not self.started:
            super().handle_exit(sig, frame)  # not serving yet, or a second SIGINT: uvicorn's own (force) exit
            return
        if self._stop_signal is not None:
            if sig == signal.SIGINT:  # Ctrl+C twice: skip what is left of the drain
                super().handle_exit(sig, frame)
            return  # a repeated SIGTERM (e.g. to the process group, then from the supervisor) changes nothing
        self._captured_signals.append(sig)  # uvicorn re-raises it after the shutdown, as without a drain
        self._stop_signal = sig

    async def on_tick(self, counter: int) -> bool:
        if self._stop_signal is not None and self._drain is None and not self.should_exit:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_stop(self._stop_signal))
        return await super().on_tick(counter)

    async def _drain_then_stop(self, sig: int) -> None:
        """On the event loop: 503 for ``drain_s``, then no new connections, ``SETTLE_S``, then uvicorn's shutdown."""
        try:
            orphaned = _orphaned.is_set() or (self._parent_pid is not None and os.getppid() != self._parent_pid)
            drain_s = 0.0 if orphaned else self._drain_s
            if drain_s > 0:
                self._begin_drain()
            logger.info("draining", extra={"fields": {"signal": sig, "drain_s": drain_s, "orphaned": orphaned}})
            await asyncio.sleep(drain_s)
            listeners = [sock for server in getattr(self, "servers", []) for sock in (server.sockets or [])]
            if stop_new_connections(listeners):
                await asyncio.sleep(SETTLE_S)
        finally:
            self.should_exit = True  # a task's error is only reported when it is collected: stop whatever happened


class WorkerProcess(multiprocess.Process):
    """One worker of :class:`Supervisor`: dies with the supervisor; serves with :class:`DrainingServer`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.parent_pid = os.getpid()  # set in the supervisor, pickled to the worker
        self.stop_by: float | None = None  # monotonic deadline of its stop, from the SIGTERM on
        super().__init__(config, sockets)

    def terminate(self) -> None:
        if self.process.exitcode is None and self.stop_by is None:
            self.stop_by = time.monotonic() + stop_deadline_s(self.config)
        super().terminate()

    def join(self) -> None:
        """Wait for the worker, but not past :func:`stop_deadline_s` after its SIGTERM: a worker still
        alive then is hung (its own stop is bounded by the drain, the settle phase and the graceful
        shutdown) and is SIGKILLed, with an error logged. uvicorn's join has no deadline, so one hung
        worker held the supervisor (on a stop or a SIGHUP restart) and the port forever."""
        if self.stop_by is not None:
            self.process.join(timeout=max(0.0, self.stop_by - time.monotonic()))
            if self.process.is_alive():
                logger.error("worker did not stop in time; killed", extra={"fields": {
                    "pid": self.pid, "deadline_s": stop_deadline_s(self.config)}})
                self.kill()
        self.process.join()

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (in the child)
        die_with_parent(self.parent_pid)
        super().target(sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            drain_s = float(getattr(self.config, "drain_s", 0.0))
            self._server = DrainingServer(self.config, _begin_worker_drain, drain_s, self.parent_pid)
        return self._server


# The signal a worker gets when its supervisor dies. Not SIGTERM: the kernel sends it when the
# supervisor's *thread* that started the worker exits, and while the supervisor's other threads
# are still being torn down the worker's parent pid is still the supervisor's, so a SIGTERM could
# not be told from the supervisor's own "drain and stop".
PARENT_DEATH_SIGNAL = signal.SIGUSR2
_orphaned = threading.Event()


def _stop_orphaned(*_: object) -> None:
    _orphaned.set()
    signal.raise_signal(signal.SIGTERM)  # the server's own stop (DrainingServer skips the drain)


def die_with_parent(parent_pid: int) -> None:
    """Stop (SIGTERM, no drain) when the parent dies: ``prctl(PR_SET_PDEATHSIG)`` on Linux, else a watcher thread.

    Checked once more after the request: a parent that died before it would never send the signal.
    """
    signal.signal(PARENT_DEATH_SIGNAL, _stop_orphaned)
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0) == 0
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), PARENT_DEATH_SIGNAL)

        threading.Thread(target=watch, name="deltagate-parent-watch", daemon=True).start()
    elif os.getppid() != parent_pid:
        _stop_orphaned()


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's multi-process supervisor, running :class:`WorkerProcess` workers.

    uvicorn creates its workers as ``Process(config, sockets)`` in four places and has no hook for
    the class; :meth:`run` swaps it in for the supervisor's lifetime (this process runs nothing else).
    """

    def run(self) -> None:
        original = multiprocess.Process
        multiprocess.Process = WorkerProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = original  # type: ignore[misc]

    def terminate_all(self) -> None:
        super().terminate_all()  # SIGTERM: each worker drains
        for sock in self.sockets:  # the workers hold their own copies; ours would outlive their listeners
            sock.close()


# What a worker's stop may take beyond its drain, settle phase and graceful shutdown: the app's
# lifespan shutdown and the interpreter's exit. At uvicorn's graceful deadline the requests still in
# progress are cancelled, which frees their admission, so the batcher then waits only for the
# forwards already running (seconds on a CPU, for the models served here) before the engines close.
STOP_MARGIN_S = 10.0


def stop_deadline_s(config: uvicorn.Config) -> float:
    """Seconds from SIGTERM within which a healthy worker has exited (:meth:`WorkerProcess.join`)."""
    graceful = config.timeout_graceful_shutdown or 0
    return float(getattr(config, "drain_s", 0.0)) + SETTLE_S + graceful + STOP_MARGIN_S
