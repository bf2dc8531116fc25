"""The one server harness: readiness, failed starts and failed loads are told apart, logs are quoted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deltagate.server_process import ServerProcess

# A stand-in server on {port}: /readyz answers with the given status and JSON body.
_SERVER = """
import http.server, json, sys
status, body = int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status); self.end_headers(); self.wfile.write(body.encode())
    def log_message(self, *a): pass
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def stand_in(status: int, body: str, **kwargs: object) -> ServerProcess:
    return ServerProcess("stand-in", [sys.executable, "-c", _SERVER, "{port}", str(status), body], **kwargs)  # type: ignore[arg-type]


def test_ready_server_records_its_start_up_time_and_keeps_a_named_log(tmp_path: Path) -> None:
    with stand_in(200, '{"status": "ready"}', log_path=tmp_path / "s.log") as server:
        assert server.startup_seconds is not None and server.startup_seconds > 0
        assert "listening" in server.log_text() and server.proc.poll() is None
    assert server.proc.poll() is not None and (tmp_path / "s.log").exists()


def test_a_failed_load_aborts_the_wait_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="failed to load: no weights"):
        with stand_in(503, '{"status": "failed", "error": "no weights"}', ready_timeout_s=30):
            pass


def test_a_server_that_exits_is_reported_with_its_status_and_log() -> None:
    server = ServerProcess("crasher", [sys.executable, "-c", "print('bad bundle'); raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*bad bundle"):
        with server:
            pass
    assert not server.log_path.exists()  # its own temporary log is removed


def test_not_ready_in_time_is_a_timeout() -> None:
    with pytest.raises(TimeoutError, match="not ready after 1"):
        with stand_in(503, '{"status": "loading"}', ready_timeout_s=1.0):
            pass


def test_a_stopped_server_gives_its_port_back() -> None:
    from deltagate.server_process import free_port

    port = free_port()
    for _ in range(3):  # a one-port range: each start needs the claim the previous stop released
        server = stand_in(200, "{}", port_range=(port, port)).start()
        server.wait_ready(30)
        assert server.port == port and server.stop() is not None
