"""A real ``deltagate serve`` in a subprocess on 127.0.0.1, for the end-to-end service tests.

The process, readiness wait and shutdown are :class:`deltagate.server_process.ServerProcess`; this
module adds what the tests share: the environment (this process's, without ``DELTAGATE_*`` and
``PROMETHEUS_MULTIPROC*`` variables, so a developer's settings never leak into a test) and the
port, taken from ``DELTAGATE_TEST_PORTS`` ("18400-18499") when set (shared machines give each
engineer a range), else picked by the OS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deltagate.server_process import ServerProcess, clean_env, free_port, serve_cli_argv

__all__ = ["REPO", "DEFAULT_BUNDLE", "free_test_port", "rss_kib", "ServerProcess", "start_server", "serving"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "bundles" / "default"


def _port_range() -> tuple[int, int] | None:
    spec = os.environ.get("DELTAGATE_TEST_PORTS")
    return (int(spec.split("-")[0]), int(spec.split("-")[1])) if spec else None


def free_test_port() -> int:
    """A port nobody listens on, from ``DELTAGATE_TEST_PORTS`` if set."""
    return free_port(_port_range())


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 ready_timeout_s: float = 120.0,
                 wrap: Callable[[list[str]], list[str]] = lambda argv: argv) -> ServerProcess:
    """Start ``deltagate serve`` on 127.0.0.1 (not waiting for readiness).

    Args:
        log_path: where stdout and stderr go.
        env: extra ``DELTAGATE_*`` variables (host and port are set here).
        args: extra ``deltagate serve`` arguments.
        ready_timeout_s: what :meth:`ServerProcess.wait_ready` waits by default.
        wrap: turns the command into the one to run (e.g. under a lower open-file limit).
    """
    full_env = {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "DELTAGATE_HOST": "127.0.0.1",
                "DELTAGATE_PORT": "{port}", **(env or {})}
    server = ServerProcess("deltagate serve", wrap(serve_cli_argv(*args)), full_env, base_env=clean_env(), cwd=REPO,
                           ready_timeout_s=ready_timeout_s, port_range=_port_range(), graceful_s=60.0,
                           log_path=log_path)
    return server.start()


@contextmanager
def serving(log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            ready_timeout_s: float = 120.0,
            wrap: Callable[[list[str]], list[str]] = lambda argv: argv) -> Iterator[ServerProcess]:
    """A ready server for the ``with`` block, stopped (SIGTERM) after it (arguments: :func:`start_server`)."""
    with start_server(log_path, env, args, ready_timeout_s, wrap) as server:  # waits until ready; stops at exit
        yield server
