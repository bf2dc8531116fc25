"""The CPU budget this process really has: cgroup CPU quota and scheduler affinity, not the host's cores.

``os.cpu_count()`` reports the host: a container limited to 2 CPUs on a 64-core machine sees 64,
starts 64 intra-op threads and thrashes. The budget is the smallest of

- the CPUs the process may be scheduled on (``os.sched_getaffinity``: ``taskset``, cpusets), and
- the cgroup CPU quota: cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs) or v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, over the process's own cgroup and every parent
  (the tightest wins, as the kernel enforces it), rounded down as Go's automaxprocs does
  (1.5 CPUs of quota give 1 thread, not 2 that the kernel would throttle; never below 1).

Thread-count defaults everywhere (engine instances, intra-op threads, decode workers) derive from
:func:`cpu_budget`, so they follow the container's quota.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

__all__ = ["cpu_budget", "cgroup_cpu_limit", "affinity_cpus"]

logger = logging.getLogger(__name__)

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on (``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(directory: Path) -> float | None:
    """CPUs allowed by ``cpu.max`` in one cgroup v2 directory; None if unlimited or absent."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _v1_limit(directory: Path) -> float | None:
    """CPUs allowed by the CFS quota in one cgroup v1 cpu-controller directory; None if unlimited."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[tuple[Path, str]]:
    """(directory, version) of this process's cgroup and its parents, innermost first."""
    text = _read(proc_cgroup) or ""
    found: list[tuple[Path, str]] = []
    for line in text.splitlines():  # "0::/user.slice/x.scope" (v2) or "4:cpu,cpuacct:/docker/abc" (v1)
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            version, base = "v2", root
        elif "cpu" in controllers.split(","):
            version = "v1"
            base = next((root / n for n in ("cpu,cpuacct", "cpu", "cpuacct,cpu") if (root / n).is_dir()), root)
        else:
            continue
        path = Path(rel.lstrip("/"))
        for parent in [path, *path.parents]:  # "a/b" -> a/b, a, "."
            found.append((base / parent, version))
    return found or [(root, "v2"), (root / "cpu", "v1")]  # no /proc: look at the mount itself


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The tightest cgroup CPU quota over the process's cgroup and its parents, in CPUs.

    Args:
        root: where the cgroup filesystem is mounted.
        proc_cgroup: the process's cgroup membership file.

    Returns:
        The quota in CPUs (may be fractional), or None when no quota applies.
    """
    limits = []
    for directory, version in _own_cgroup_dirs(root, proc_cgroup):
        try:
            limit = _v2_limit(directory) if version == "v2" else _v1_limit(directory)
        except ValueError:  # a malformed file: ignore it rather than fail the start
            logger.warning("unreadable cgroup CPU quota in %s", directory)
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def cpu_budget(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> int:
    """Whole CPUs this process can use: min(affinity, floor(cgroup quota)), at least 1.

    Args:
        root: where the cgroup filesystem is mounted (tests point it at a fake tree).
        proc_cgroup: the process's cgroup membership file.
    """
    budget = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        budget = min(budget, math.floor(quota))
    return max(1, budget)
