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

import pytest

from tests.server_process import DEFAULT_BUNDLE, serving
from tests.service_support import DRAIN_COVERING_LOAD_S, assert_nothing_lost, classify_until_refused

pytestmark = pytest.mark.e2e

CLIENTS = 8
LOAD_BEFORE_SIGTERM_S = 3.0
DRAIN_S = DRAIN_COVERING_LOAD_S


def test_sigterm_during_load_loses_no_accepted_request(tmp_path: Path) -> None:
    env = {"DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE), "DELTAGATE_LOG_LEVEL": "info",
           "DELTAGATE_DRAIN_S": str(DRAIN_S)}
    stop = threading.Event()
    with serving(tmp_path / "server.log", env) as server:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(classify_until_refused, server.url, stop) for _ in range(CLIENTS)]
            time.sleep(LOAD_BEFORE_SIGTERM_S)
            server.proc.terminate()  # SIGTERM with requests in flight
            status = server.proc.wait(60)
            stop.set()
            outcomes = sum((f.result() for f in futures), Counter())
    assert_nothing_lost(outcomes, CLIENTS)
    assert status == -15, server.log_path.read_text()[-3000:]  # graceful, then the re-raised SIGTERM
    logged = {e.get("msg") for e in server.log_lines()}
    assert {"draining", "stopped"} <= logged, logged
