"""The CPU budget from fake cgroup trees (v2 nested, v1, unlimited) and the thread plan derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import cpu_budget as cb
from service.settings import Settings, ThreadPlan

pytestmark = pytest.mark.unit


def tree(tmp_path: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(membership)
    return root, proc


def test_v2_tightest_quota_over_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"kubepods/cpu.max": "300000 100000\n", "kubepods/pod1/cpu.max": "max 100000\n",
                                 "kubepods/pod1/c1/cpu.max": "150000 100000\n"}, "0::/kubepods/pod1/c1\n")
    assert cb.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_v2_unlimited_is_none(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cb.cgroup_cpu_limit(root, proc) is None


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = tree(tmp_path, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                                 "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                                 "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
                      "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cb.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)


@pytest.mark.parametrize(("affinity", "quota", "budget"), [(64, "200000 100000", 2), (64, "150000 100000", 1),
                                                         (64, "50000 100000", 1), (3, "max 100000", 3),
                                                         (2, "800000 100000", 2)])
def test_budget_is_the_smaller_of_affinity_and_the_quota_rounded_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, affinity: int, quota: str, budget: int
) -> None:
    root, proc = tree(tmp_path, {"cpu.max": quota}, "0::/\n")
    monkeypatch.setattr(cb, "affinity_cpus", lambda: affinity)
    assert cb.cpu_budget(root, proc) == budget  # never os.cpu_count(): a 2-CPU container on 64 cores gets 2


def test_missing_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert cb.cgroup_cpu_limit(tmp_path / "none", tmp_path / "nothing") is None


def test_thread_plan_defaults_and_overrides() -> None:
    plan = ThreadPlan.derive(4, None, None, None)
    assert plan.instances * plan.intra_op_threads <= 4 and plan.decode_workers == 4
    assert ThreadPlan.derive(8, 2, None, 3) == ThreadPlan(8, 2, 4, 3)
    assert ThreadPlan.derive(1, 3, None, None).intra_op_threads == 1  # never 0 threads


def test_settings_plan_follows_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.settings

    monkeypatch.setattr(service.settings, "cpu_budget", lambda: 6)
    plan = Settings(instances=3).threads()
    assert (plan.budget, plan.instances, plan.intra_op_threads, plan.decode_workers) == (6, 3, 2, 6)


def test_worker_processes_share_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.settings

    monkeypatch.setattr(service.settings, "cpu_budget", lambda: 8)
    plan = Settings(workers=2).threads()
    assert plan.budget == 4 and plan.instances * plan.intra_op_threads <= 4 and plan.decode_workers == 4
    assert Settings(workers=16).threads().budget == 1
