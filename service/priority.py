"""Compute threads at a lower CPU priority than the event loop (``compute_nice``).

With every core held by the forward's intra-op threads and the decode pool, the event loop that
answers a 503 (or ``/healthz``) waits for a CPU slice: tens of milliseconds (issue 16) where its
own work takes far less. Linux keeps a nice value per thread, so the compute threads alone can run
niced:

* the decode pool's and each engine instance's inference thread: niced as they start
  (:func:`lowered_priority` as the executor's initializer);
* the threads engines start themselves (ONNX Runtime's intra-op pool, the OpenMP team of torch):
  a new thread inherits the nice value of the thread that creates it, so the engines are created
  and warmed up in a niced thread (:func:`run_niced`), and their pools are born niced.

The event loop's thread keeps its nice value. An unprivileged process can raise a nice value but
never lower it again, hence the separate threads. Elsewhere than Linux (where nice is per process)
this does nothing.

Nice values order the threads of one scheduling group: a container's cgroup, a systemd unit, or a
session where the kernel groups by session (``sched_autogroup``). There the compute threads give
way to the loop only. Where the service shares one flat run queue with foreign busy threads (no
cgroup, no autogroup), a niced compute thread gets less CPU than those threads, and one holding
the GIL can keep the loop waiting: set ``compute_nice=0`` there. The measurement is
``deltagate bench overload`` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["lower_thread_priority", "lowered_priority", "run_niced", "thread_nice"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def thread_nice(tid: int | None = None) -> int:
    """The nice value of a thread (default: the calling one), by its native id."""
    return os.getpriority(os.PRIO_PROCESS, tid if tid is not None else threading.get_native_id())


def lower_thread_priority(increment: int) -> None:
    """Add ``increment`` to the calling thread's nice value (Linux: per thread; 0 changes none).

    The OS thread is also given the Python thread's name (Python 3.11 leaves it unnamed), so
    ``top -H`` and ``/proc/<pid>/task/*/comm`` show which threads are compute threads; threads it
    starts (an engine's pool) inherit the name as they inherit the priority.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        Path("/proc/thread-self/comm").write_text(threading.current_thread().name[:15])
    if increment <= 0:
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, thread_nice(tid) + increment))
    except OSError as exc:  # e.g. a seccomp profile without setpriority: run at the loop's priority
        logger.warning("could not lower a compute thread's priority", extra={"fields": {"error": str(exc)}})


def lowered_priority(increment: int) -> Callable[[], None]:
    """An executor ``initializer`` that lowers each of its threads' priority by ``increment``."""
    return lambda: lower_thread_priority(increment)


async def run_niced(increment: int, fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a new thread niced by ``increment`` (threads it starts inherit that)."""
    with ThreadPoolExecutor(1, thread_name_prefix="deltagate-load", initializer=lowered_priority(increment)) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
