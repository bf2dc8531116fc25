"""``make loadtest`` in CI: 20 s of headless Locust on the default bundle, no error, p99 under the bound."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_process import REPO, free_test_port


def _load_runner():  # type: ignore[no-untyped-def]
    """loadtests/ is a folder of scripts, not a package: import run.py under a unique name."""
    spec = importlib.util.spec_from_file_location("deltagate_loadtest_run", REPO / "loadtests" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
P99_BOUND_MS, LoadResult = runner.P99_BOUND_MS, runner.LoadResult
read_stats, run_load = runner.read_stats, runner.run_load

pytestmark = pytest.mark.e2e


def test_headless_locust_run_has_no_error_and_p99_under_the_bound(tmp_path: Path) -> None:
    result = run_load(free_test_port(), users=4, run_time="20s", out=tmp_path)
    print(result)
    assert result.problems(P99_BOUND_MS) == [], (result, (tmp_path / "server.log").read_text()[-3000:])
    assert result.requests > 50


HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%\n")


def stats_csv(tmp_path: Path, requests: int, failures: int, p99: int) -> Path:
    path = tmp_path / "run_stats.csv"
    path.write_text(HEADER + f",Aggregated,{requests},{failures},40,45,10,900,500,12.5,0,40,50,60,70,80,90,95,"
                    f"{p99},{p99},{p99},{p99}\n")
    return path


@pytest.mark.parametrize(("requests", "failures", "p99", "status", "expected"), [
    (250, 0, 120, 0, []),
    (250, 3, 120, 1, ["locust exited with status 1 (some request failed)", "3 failed requests"]),
    (250, 0, 2500, 0, ["p99 2500 ms is above the bound of 2000 ms"]),
])
def test_the_check_fails_on_errors_and_slow_tails(tmp_path: Path, requests: int, failures: int, p99: int,
                                                   status: int, expected: list[str]) -> None:
    result = read_stats(stats_csv(tmp_path, requests, failures, p99), status)
    assert isinstance(result, LoadResult) and result.p99_ms == p99
    assert result.problems(2000.0) == expected


# Locust's own CSV writer on a run in which no request was timed (the server never answered within the
# run time, say): in a subprocess, because importing locust monkey-patches the standard library (gevent).
EMPTY_RUN_CSV = """import csv, sys
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
with open(sys.argv[1], "w", newline="") as f:
    StatsCSV(Environment(), PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))
"""


def test_a_run_without_timed_requests_reports_missing_percentiles_not_a_crash(tmp_path: Path) -> None:
    """Locust writes "N/A" for the percentiles of a row with no sample: missing, not 0 ms (which passes any bound)."""
    path = tmp_path / "run_stats.csv"
    subprocess.run([sys.executable, "-c", EMPTY_RUN_CSV, str(path)], check=True, timeout=120)
    assert ",Aggregated,0,0," in path.read_text() and "N/A" in path.read_text()  # what Locust itself writes
    result = read_stats(path, 0)
    assert (result.requests, result.p50_ms, result.p99_ms) == (0, None, None)
    assert result.problems(2000.0) == ["no request was made", "no p99 latency: Locust timed no response (its CSV "
                                       "says N/A)"]
