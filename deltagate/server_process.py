"""A server in a subprocess on 127.0.0.1, and the one readiness wait every harness uses.

Used by the benchmarks (:mod:`deltagate.bench`), the cold-start measurement
(:mod:`deltagate.startup`), ``make loadtest`` (``loadtests/run.py``) and the end-to-end tests
(``tests/server_process.py``): they differ only in the command, the environment and where the log
goes, which are arguments here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx

from service.server import settings_to_env
from service.settings import Settings

__all__ = ["LOCALHOST", "free_port", "clean_env", "wait_ready", "ServerProcess", "serve_cli_argv", "deltagate_server"]

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


def free_port(port_range: tuple[int, int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 now: the first free one of ``port_range`` (inclusive), else the OS's pick.

    Raises:
        RuntimeError: every port of the range is taken.
    """
    candidates = range(port_range[0], port_range[1] + 1) if port_range else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as uvicorn binds: a port whose last server left only TIME_WAIT connections is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port in {port_range[0]}-{port_range[1]}" if port_range else "no free port")


_taken: set[int] = set()  # ports handed to servers of this process that may not be listening yet


def _claim_port(port_range: tuple[int, int] | None) -> int:
    if port_range is None:
        return free_port()
    for _ in range(port_range[1] - port_range[0] + 1):
        port = free_port(port_range)
        if port not in _taken:
            _taken.add(port)
            return port
        port_range = (port + 1, port_range[1])
    raise RuntimeError(f"no free port in the range ending at {port_range[1]}")


def clean_env(prefixes: tuple[str, ...] = ("DELTAGATE_", "PROMETHEUS_MULTIPROC")) -> dict[str, str]:
    """This process's environment without deltagate's settings and prometheus-client's multiprocess
    variables, so a developer's shell never leaks into a server a harness starts."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _json_status(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) else None


def wait_ready(url: str, *, timeout_s: float, ready_path: str = "/readyz", name: str = "server",
               exited: Callable[[], int | None] = lambda: None, log_tail: Callable[[], str] = lambda: "",
               accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200) -> None:
    """Poll ``url + ready_path`` until ``accept`` says the answer means ready (default: a 200).

    Args:
        url: the server's base URL.
        timeout_s: how long to wait.
        ready_path: the readiness endpoint.
        name: shown in errors.
        exited: the server's exit status once it has exited, else None (checked before each poll).
        log_tail: the end of the server's log, quoted in errors.
        accept: whether an answer means ready (e.g. any answer at all, for a page that renders
            its own loading state).

    Raises:
        RuntimeError: the server exited, or answered ``{"status": "failed"}`` (a failed load).
        TimeoutError: not ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if (status := exited()) is not None:
                raise RuntimeError(f"{name} exited with {status} before turning ready:\n{log_tail()}")
            try:
                response = client.get(ready_path)
            except httpx.TransportError:
                response = None
            if response is not None and accept(response):
                return
            if response is not None and _json_status(response) == "failed":
                raise RuntimeError(f"{name} failed to load: {response.json().get('error')}\n{log_tail()}")
            time.sleep(0.05)
    raise TimeoutError(f"{name} not ready after {timeout_s} s:\n{log_tail()}")


class ServerProcess:
    """A server in a subprocess on 127.0.0.1; a context manager that waits until it is ready.

    The server's output goes to ``log_path`` (a temporary file, removed on exit, when None), so a
    chatty server can never block on a full pipe; errors quote its end. The child gets its own
    process group, which is terminated (then killed) on exit, so servers that spawn workers
    (LitServe, uvicorn with workers) leave nothing behind.

    Args:
        name: shown in logs and errors.
        argv: the command; ``{port}`` in an argument is replaced by the chosen port.
        env: extra environment variables; ``{port}`` in a value is replaced by the chosen port.
        base_env: the environment ``env`` is added to (None: this process's environment).
        ready_path: polled until it answers 200; a JSON ``{"status": "failed"}`` aborts.
        ready_timeout_s: how long to wait for readiness.
        port_range: ports to choose from (inclusive); None: the OS picks a free one.
        graceful_s: time the server gets to stop after SIGTERM before it is killed.
        cwd: working directory of the server (None: this one).
        log_path: where the server's stdout and stderr go (kept after exit).
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                 base_env: Mapping[str, str] | None = None, ready_path: str = "/readyz",
                 ready_timeout_s: float = 300.0, port_range: tuple[int, int] | None = None,
                 graceful_s: float = 30.0, cwd: str | Path | None = None, log_path: Path | None = None) -> None:
        self.name = name
        self.cwd = cwd
        self.port = _claim_port(port_range)
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.env = {**(os.environ if base_env is None else base_env),
                    **{k: v.replace("{port}", str(self.port)) for k, v in (env or {}).items()}}
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.ready_path = ready_path
        self.ready_timeout_s = ready_timeout_s
        self.graceful_s = graceful_s
        self.startup_seconds: float | None = None  # process start to ready, once ready
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="deltagate-server-", suffix=".log")
            os.close(fd)  # start() opens it for the child
            log_path = Path(name)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The running (or exited) process; :meth:`start` first."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc

    def __enter__(self) -> ServerProcess:
        if self._proc is None:  # a server already started (to load in parallel) is only waited for
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self) -> ServerProcess:
        """Start the process without waiting (several servers can then load in parallel)."""
        self.log_path.write_bytes(b"")
        with self.log_path.open("ab") as log:  # O_APPEND: reading the log never moves where the child writes
            self._started = time.perf_counter()
            self._proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=self.cwd)
        return self

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Poll ``ready_path`` until it answers 200; returns (and records) the seconds since start.

        Raises:
            RuntimeError: the server exited or reported a failed load.
            TimeoutError: not ready within ``timeout_s`` (default: ``ready_timeout_s``).
        """
        proc = self.proc
        wait_ready(self.url, timeout_s=self.ready_timeout_s if timeout_s is None else timeout_s,
                   ready_path=self.ready_path, name=self.name, exited=proc.poll, log_tail=self.log_tail)
        self.startup_seconds = round(time.perf_counter() - self._started, 2)
        logger.info("%s ready on %s after %.1f s", self.name, self.url, self.startup_seconds)
        return self.startup_seconds

    def log_text(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        return self.log_text()[-chars:]

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (deltagate logs one JSON object per line; others skipped)."""
        lines = []
        for raw in self.log_text().splitlines():
            with suppress(json.JSONDecodeError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines

    def stop(self) -> int | None:
        """SIGTERM to the process group, SIGKILL to what is left after ``graceful_s``; the exit status.

        The port is free for another server afterwards.
        """
        if self._proc is None:
            return None
        _stop_group(self._proc, self.graceful_s)
        _taken.discard(self.port)
        return self._proc.returncode

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)


def _stop_group(proc: subprocess.Popen[bytes], graceful_s: float) -> None:
    """SIGTERM to the server's process group (uvicorn's graceful shutdown), then SIGKILL to what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    try:
        proc.wait(timeout=graceful_s)
    except subprocess.TimeoutExpired:
        logger.warning("server %d did not stop within %.0f s; killing it", proc.pid, graceful_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # spawned workers the leader left behind, or the leader itself
    proc.wait()


def serve_cli_argv(*args: str, python: str = sys.executable) -> list[str]:
    """The ``deltagate serve`` command line, run as ``python -c`` so that the working directory's
    (or ``PYTHONPATH``'s) checkout is the code that runs, not an installed one."""
    return [python, "-c", "from deltagate.cli import cli_main; cli_main()", "serve", *args]


def deltagate_server(settings: Settings, *, pythonpath: str | None = None,
                     port_range: tuple[int, int] | None = None, name: str = "deltagate") -> ServerProcess:
    """``service.server.run`` with these settings (as ``DELTAGATE_*`` variables; host and port overridden).

    Args:
        settings: service settings.
        pythonpath: run the service code of another checkout (``PYTHONPATH`` of the child), e.g. a
            worktree of an older commit to compare with.
        port_range: see :class:`ServerProcess`.
        name: shown in logs.
    """
    env = {k: v for k, v in settings_to_env(settings).items() if k not in {"DELTAGATE_HOST", "DELTAGATE_PORT"}}
    env.update({"DELTAGATE_HOST": LOCALHOST, "DELTAGATE_PORT": "{port}"})
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    # `python -c` puts the working directory first on sys.path: run another checkout's code from
    # inside it, or this checkout's `service` would shadow it.
    return ServerProcess(name, [sys.executable, "-c", "from service.server import run; run()"], env,
                         port_range=port_range, graceful_s=settings.graceful_shutdown_s + 10.0, cwd=pythonpath)
