"""Raise the scheduling weight of a benchmark's process tree above the rest of a shared machine (root).

Where the kernel groups scheduling by session (``kernel.sched_autogroup_enabled=1``, the default of
most distributions), every session is a scheduling group and nice values count only inside it;
the servers of a benchmark run in sessions of their own. Writing a negative nice value to
``/proc/PID/autogroup`` of every process under the benchmark (re-done every 0.2 s, as servers and
probes start) makes their groups outweigh the other sessions, the closest a shared machine gets
to a quiet one for the processes under test. It changes nothing inside a group: the service's own
threads keep their relative priorities (``compute_nice``).

Run: ``python -m deltagate.bench.boost_autogroup PID NICE`` (until PID exits).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["process_tree", "boost"]


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def boost(root: int, nice: int, every_s: float = 0.2) -> None:
    """Set the autogroup nice of every process under ``root`` until ``root`` exits."""
    while Path(f"/proc/{root}").exists():
        for pid in process_tree(root):
            try:
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            except OSError:  # gone already, or not permitted
                continue
        time.sleep(every_s)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("nice", type=int)
    args = parser.parse_args()
    if not Path("/proc/self/autogroup").exists():
        raise SystemExit("no /proc/self/autogroup: the kernel does not group scheduling by session")
    boost(args.pid, args.nice)


if __name__ == "__main__":
    _main()
