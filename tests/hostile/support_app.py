"""Helpers for the request-level hostile tests: a real server and a timed client.

The server is ``deltagate serve`` in its own process (:func:`tests.server_process.serving`) on the
dummy engine: the request level is the same for every engine. The attacks' tools (a trickling
client, the peak-memory reading, a tiny huge PNG) are :mod:`deltagate.bench.hostile`'s, which
measures the same attacks before and after (docs/operations.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from deltagate.server_process import ServerProcess
from tests.server_process import serving

__all__ = ["dummy_server", "post_timed"]


@contextmanager
def dummy_server(log_path: Path, **settings: object) -> Iterator[ServerProcess]:
    """A ready dummy-engine server with these settings (``DELTAGATE_*`` values), stopped after the block."""
    env = {"DELTAGATE_ENGINE": "dummy", "DELTAGATE_BUNDLE_PATH": "/nonexistent", "DELTAGATE_INSTANCES": "1",
           **{f"DELTAGATE_{k.upper()}": str(v) for k, v in settings.items()}}
    with serving(log_path, env) as server:
        yield server


def post_timed(url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    """One POST (a fresh connection); the response and its seconds."""
    start = time.perf_counter()
    response = httpx.post(url, timeout=60.0, **kwargs)  # type: ignore[arg-type]
    return response, time.perf_counter() - start
