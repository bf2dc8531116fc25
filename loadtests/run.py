"""``make loadtest``: a bounded headless Locust run against a fresh server on the default bundle.

Starts ``deltagate serve`` on 127.0.0.1 (default engine, default bundle), waits for readiness, runs
``locust --headless -u N -r N -t 20s`` with ``loadtests/locustfile.py`` and its CSV output, stops
the server, then fails (exit status 1) if

* Locust itself failed (its exit status is 1 when any request failed: a non-200, a malformed
  answer, a 503), or the CSV shows any failure, or no request was made;
* the aggregated p99 latency is above ``--p99-ms`` (default :data:`P99_BOUND_MS`), or missing
  (Locust writes ``N/A`` when it timed no response: reported as missing, never read as 0 ms).

The bound: on this 2-core machine, shared with other jobs, the quiet-run p99 at 4 users is
recorded in ``docs/operations.md`` with its command; :data:`P99_BOUND_MS` is set well above it so
that scheduler noise on shared CI cores passes while what breaks serving — a stalled batcher, a
forward that serialises behind preprocessing, a queue that only drains at the request deadline —
fails (those push p99 to the 30 s request timeout or to several seconds).

Run: ``make loadtest`` or ``python loadtests/run.py --port 8010 --users 4 --run-time 20s --out results/loadtest``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deltagate.server_process import ServerProcess, clean_env, serve_cli_argv

__all__ = ["P99_BOUND_MS", "LoadResult", "read_stats", "run_load", "main"]

logger = logging.getLogger("deltagate.loadtest")

REPO = Path(__file__).resolve().parents[1]
P99_BOUND_MS = 2000.0  # see the module docstring and docs/operations.md


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    p50_ms: float | None  # None: Locust timed no response (it writes "N/A"), so there is no percentile
    p99_ms: float | None
    rps: float
    locust_status: int

    def problems(self, p99_bound_ms: float) -> list[str]:
        """Why the run fails the check (empty: it passes)."""
        found = []
        if self.locust_status != 0:
            found.append(f"locust exited with status {self.locust_status} (some request failed)")
        if self.failures:
            found.append(f"{self.failures} failed requests")
        if self.requests == 0:
            found.append("no request was made")
        if self.p99_ms is None:
            found.append("no p99 latency: Locust timed no response (its CSV says N/A)")
        elif self.p99_ms > p99_bound_ms:
            found.append(f"p99 {self.p99_ms:.0f} ms is above the bound of {p99_bound_ms:.0f} ms")
        return found


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _percentile(row: dict[str, str], column: str) -> float | None:
    """A percentile column of Locust's stats CSV; None where Locust has none.

    Locust writes ``N/A`` in every percentile column of a row with no timed request (an endpoint
    that got no response in a short run, or a run with no request at all): that is a missing
    number, not 0 ms, which would pass any latency bound.
    """
    value = row[column].strip()
    return None if value in ("", "N/A") else float(value)


def read_stats(stats_csv: Path, locust_status: int) -> LoadResult:
    """The aggregated row of Locust's ``<prefix>_stats.csv``."""
    with stats_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"{stats_csv}: no Aggregated row")
    row = rows[0]
    return LoadResult(requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                      p50_ms=_percentile(row, "50%"), p99_ms=_percentile(row, "99%"),
                      rps=float(row["Requests/s"] or 0), locust_status=locust_status)


def run_load(port: int, users: int, run_time: str, out: Path, bundle: Path | None = None,
             server_env: dict[str, str] | None = None) -> LoadResult:
    """Serve on ``port``, run Locust against it, stop the server; the CSV lands in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    env.update({"PYTHONPATH": str(REPO), "DELTAGATE_HOST": "127.0.0.1", "DELTAGATE_PORT": str(port),
                "DELTAGATE_BUNDLE_PATH": str(bundle or REPO / "bundles" / "default"),
                "DELTAGATE_LOG_LEVEL": "warning", **(server_env or {})})
    server = ServerProcess("deltagate", serve_cli_argv(), env, base_env={}, cwd=REPO, ready_timeout_s=120.0,
                           port_range=(port, port), log_path=out / "server.log")
    with server:
        locust = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
                  "-u", str(users), "-r", str(users), "-t", run_time, "--host", server.url, "--csv", str(out / "run"),
                  "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"]
        logger.info("running: %s", " ".join(locust))
        status = subprocess.run(locust, cwd=REPO, timeout=600).returncode
    return read_stats(out / "run_stats.csv", status)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    parser = argparse.ArgumentParser(description="Bounded headless Locust run with error and p99 checks.")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--users", type=int, default=4, help="Locust users (also the spawn rate).")
    parser.add_argument("--run-time", default="20s")
    parser.add_argument("--p99-ms", type=float, default=P99_BOUND_MS)
    parser.add_argument("--bundle", type=Path, default=None, help="Default: bundles/default.")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "loadtest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_load(args.port, args.users, args.run_time, args.out, args.bundle)
    logger.info("requests %d, failures %d, %.1f req/s, p50 %s, p99 %s (bound %.0f ms)", result.requests,
                result.failures, result.rps, _ms(result.p50_ms), _ms(result.p99_ms), args.p99_ms)
    problems = result.problems(args.p99_ms)
    for problem in problems:
        logger.error("FAIL: %s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
