"""A real ``deltagate serve`` in a subprocess on 127.0.0.1, for the end-to-end service tests.

The port comes from ``DELTAGATE_TEST_PORTS`` ("18400-18499") when set (shared machines give each
engineer a range), else the OS picks a free one. Logs go to a file, so a chatty server can never
block on a full pipe; :meth:`ServerProcess.log_lines` parses them (one JSON object per line).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "bundles" / "default"
_SERVE = "from deltagate.cli import cli_main; cli_main()"


def free_port() -> int:
    """A port nobody listens on, from ``DELTAGATE_TEST_PORTS`` if set."""
    spec = os.environ.get("DELTAGATE_TEST_PORTS")
    candidates = range(int(spec.split("-")[0]), int(spec.split("-")[1]) + 1) if spec else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port in {spec}")


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """A started server: its process, URL and log file."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        lines = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with suppress(json.JSONDecodeError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Poll /readyz until 200; returns the seconds it took. Fails if the process exits."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout_s} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for exit; returns the exit status (killed if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> ServerProcess:
    """Start ``deltagate serve`` on 127.0.0.1 (not waiting for readiness).

    Args:
        log_path: where stdout and stderr go.
        env: extra ``DELTAGATE_*`` variables (host and port are set here).
        args: extra ``deltagate serve`` arguments.
    """
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DELTAGATE_", "PROMETHEUS_MULTIPROC"))}
    full_env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "DELTAGATE_HOST": "127.0.0.1",
                     "DELTAGATE_PORT": str(port), **(env or {})})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _SERVE, "serve", *args], cwd=REPO, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    return ServerProcess(proc, port, log_path)


@contextmanager
def serving(log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            ready_timeout_s: float = 120.0) -> Iterator[ServerProcess]:
    """A ready server for the ``with`` block, stopped (SIGTERM) after it."""
    server = start_server(log_path, env, args)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
