"""``deltagate serve --workers 2``: a scrape of either worker reports the sum over both."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ServerProcess, serving
from tests.service_support import class_image

pytestmark = pytest.mark.e2e

OK = (("method", "POST"), ("route", "/classify"), ("status", "200"))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10.0).text  # a new connection: any worker may answer
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def classify(url: str, cls: int) -> int:
    files = [("file", ("a.png", class_image(cls), "image/png"))]
    return httpx.post(f"{url}/classify", files=files, timeout=30.0).status_code  # one connection each


def served_per_worker(lines: list[dict]) -> Counter[int]:  # type: ignore[type-arg]
    return Counter(e["pid"] for e in lines if e.get("logger") == "deltagate.access"
                   and e.get("route") == "/classify" and e.get("status") == 200)


def wait_until_workers_ready(server: ServerProcess, workers: int, timeout_s: float = 60.0) -> None:
    """/readyz is answered by one worker; each worker logs "ready" once it is."""
    end = time.monotonic() + timeout_s
    while len({e["pid"] for e in server.log_lines() if e.get("msg") == "ready"}) < workers:
        assert time.monotonic() < end, server.log_path.read_text()
        time.sleep(0.05)


def test_counters_from_two_workers_sum_up_in_one_scrape(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from a previous run")  # must be emptied at start
    env = {"DELTAGATE_ENGINE": "dummy", "DELTAGATE_BUNDLE_PATH": str(tmp_path / "none"),
           "DELTAGATE_METRICS_DIR": str(metrics_dir), "DELTAGATE_MAX_WAIT_MS": "1"}
    with serving(tmp_path / "server.log", env, ("--workers", "2")) as server:
        wait_until_workers_ready(server, 2)
        statuses: Counter[int] = Counter()
        with ThreadPoolExecutor(4) as pool:
            for _ in range(40):  # until both workers have answered some (the kernel picks who accepts)
                statuses.update(pool.map(lambda i: classify(server.url, i % 4), range(16)))
                per_worker = served_per_worker(server.log_lines())
                if len(per_worker) >= 2 and statuses[200] >= 32:
                    break
        assert set(statuses) == {200}, statuses
        # A request's log line and counters are written just after its response is sent: settle first.
        end = time.monotonic() + 10.0
        while sum(served_per_worker(server.log_lines()).values()) < statuses[200] and time.monotonic() < end:
            time.sleep(0.05)
        per_worker = served_per_worker(server.log_lines())
        assert len(per_worker) == 2 and sum(per_worker.values()) == statuses[200], per_worker
        for _ in range(6):  # each scrape is answered by one worker, and each reports both
            m = scrape(server.url)
            assert m[("deltagate_http_requests_total", OK)] == statuses[200]
            assert m[("deltagate_http_request_duration_seconds_count", OK)] == statuses[200]
            assert sum(v for (n, _), v in m.items() if n == "deltagate_images_classified_total") == statuses[200]
            assert m[("deltagate_gate_score_count", ())] == statuses[200]
            assert m[("deltagate_batch_size_images_sum", ())] >= statuses[200]  # + warm-up forwards
            assert m[("deltagate_ready", ())] == 1.0 and m[("deltagate_queue_depth_images", ())] == 0.0
            info = [dict(labels) for (n, labels), v in m.items() if n == "deltagate_model_info" and v == 1.0]
            assert len(info) == 1 and info[0]["engine"] == "dummy", info
    assert server.proc.returncode in (0, -15)  # SIGTERM: graceful (uvicorn re-raises the signal)
    assert not list(metrics_dir.glob("gauge_live*.db")), "exited workers must drop their live gauges"
    assert list(metrics_dir.glob("counter_*.db")), "counters are kept (totals never go back)"


def test_a_label_set_put_to_one_worker_is_answered_by_every_worker(tmp_path: Path, text_bundle: Path) -> None:
    """--workers 2: PUT /label-sets lands on one worker; classify with it on fresh connections until both workers
    have answered it (each looks at the directory before a 404)."""
    sets = tmp_path / "sets"
    env = {"DELTAGATE_BUNDLE_PATH": str(text_bundle), "DELTAGATE_LABEL_SETS_DIR": str(sets),
           "DELTAGATE_ADMIN_KEY": "k", "DELTAGATE_LABEL_SETS_POLL_S": "60"}
    with serving(tmp_path / "server.log", env, ("--workers", "2")) as server:
        wait_until_workers_ready(server, 2)
        body = [("labels", (None, "cat")), ("labels", (None, "dog"))]
        r = httpx.put(f"{server.url}/label-sets/pets", files=body, headers={"Authorization": "Bearer k"}, timeout=30)
        assert r.status_code == 201, r.text
        files = [("file", ("a.png", class_image(1), "image/png"))]
        answered: Counter[int] = Counter()
        for _ in range(60):
            r = httpx.post(f"{server.url}/classify?label_set=pets", files=files, timeout=30.0)
            assert r.status_code == 200 and r.json()["results"][0]["label"] in ("cat", "dog"), r.text
            time.sleep(0.02)
            answered = Counter(e["pid"] for e in server.log_lines() if e.get("logger") == "deltagate.access"
                               and e.get("label_set") == "pets")
            if len(answered) == 2:
                break
        assert len(answered) == 2, answered
