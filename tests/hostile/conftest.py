"""The connection-level hostile tests share one dummy-engine server (one start instead of one per file)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.support_net import DUMMY_ENV
from tests.server_process import ServerProcess, serving

# Lowered from their defaults (10 s, 5 s, 32 KiB) so the tests are short; each file reads them from here.
HEADER_TIMEOUT_S = 2.0
KEEPALIVE_S = 1
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``deltagate serve`` (dummy engine) with the header deadline, idle time and header size lowered."""
    env = {**DUMMY_ENV, "DELTAGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "DELTAGATE_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S), "DELTAGATE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES)}
    with serving(tmp_path_factory.mktemp("guarded") / "server.log", env) as server:
        yield server
