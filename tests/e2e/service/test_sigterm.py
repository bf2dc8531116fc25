"""SIGTERM during load loses no accepted request.

Eight client threads keep sending ``/classify`` requests (a new connection each) to a real server
on the default bundle; SIGTERM arrives while requests are in flight. Every request must end in one
of two ways: answered 200 with a well-formed body, or refused cleanly — a 503 with the error
envelope and ``Retry-After`` (the drain), or a connection that is never accepted (after the
listener closed). A reset, a half answer or a timeout after the request was sent is a dropped
request and fails the test. A client stops at its first refusal, as a load balancer takes the
endpoint out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_process import DEFAULT_BUNDLE, serving
from tests.service_support import noise_image

pytestmark = pytest.mark.e2e

CLIENTS = 8
LOAD_BEFORE_SIGTERM_S = 3.0


def client_loop(url: str, stop: threading.Event) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    images = [("file", (f"{i}.png", noise_image(i, (96, 96)), "image/png")) for i in range(4)]
    while not stop.is_set():
        try:
            with httpx.Client(timeout=60.0) as client:  # fresh connection: no idle keep-alive to race
                r = client.post(f"{url}/classify", files=images)
        except httpx.ConnectError:
            outcomes["refused: connect"] += 1  # never accepted: the listener is closed
            return outcomes
        except httpx.HTTPError as exc:
            outcomes[f"DROPPED: {type(exc).__name__}"] += 1
            return outcomes
        if r.status_code == 200 and r.json().get("num_images") == len(images):
            outcomes["200"] += 1
            continue
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code == 503 and body.get("error", {}).get("code") == "not_ready" and "retry-after" in r.headers:
            outcomes["refused: 503"] += 1
        else:
            outcomes[f"BAD: {r.status_code}"] += 1
        return outcomes
    return outcomes


def test_sigterm_during_load_loses_no_accepted_request(tmp_path: Path) -> None:
    env = {"DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE), "DELTAGATE_LOG_LEVEL": "info",
           "DELTAGATE_DRAIN_S": "1.0"}
    stop = threading.Event()
    with serving(tmp_path / "server.log", env) as server:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client_loop, server.url, stop) for _ in range(CLIENTS)]
            time.sleep(LOAD_BEFORE_SIGTERM_S)
            server.proc.terminate()  # SIGTERM with requests in flight
            status = server.proc.wait(60)
            stop.set()
            outcomes = sum((f.result() for f in futures), Counter())
    assert not [k for k in outcomes if k.startswith(("DROPPED", "BAD"))], outcomes
    assert outcomes["200"] >= CLIENTS, outcomes  # there was load
    assert outcomes["refused: 503"] + outcomes["refused: connect"] == CLIENTS, outcomes  # every client ended
    assert outcomes["refused: 503"] > 0, outcomes  # the drain answered, rather than the kernel resetting
    assert status == -15, server.log_path.read_text()[-3000:]  # graceful, then the re-raised SIGTERM
    logged = {e.get("msg") for e in server.log_lines()}
    assert {"draining", "stopped"} <= logged, logged
