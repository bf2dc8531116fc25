"""A bundle that cannot load makes ``deltagate serve`` log why and exit non-zero (exit_on_error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.server import EXIT_LOAD_FAILED
from tests.server_process import DEFAULT_BUNDLE, start_server

pytestmark = pytest.mark.e2e


def broken_bundle(tmp_path: Path) -> Path:
    """The default bundle with a damaged ONNX graph whose manifest was re-hashed: every check ``deltagate serve``
    makes before starting passes (manifest, files, hashes, threshold), and ONNX Runtime then fails to load it.

    The int8 graph is left out, so that ``engine=auto`` (the default) chooses the damaged ``model.onnx``."""
    from models.bundle import INT8_ONNX_FILE, update_manifest

    bundle = tmp_path / "broken"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    (bundle / INT8_ONNX_FILE).unlink(missing_ok=True)
    (bundle / "model.onnx").write_bytes(b"not an onnx graph" * 64)
    update_manifest(bundle, int8=None)
    return bundle


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bundle_that_cannot_load_exits_non_zero_after_logging_why(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path / "server.log", {"DELTAGATE_BUNDLE_PATH": str(broken_bundle(tmp_path)),
                                                    "DELTAGATE_WORKERS": str(workers)})
    status = server.proc.wait(timeout=120)
    assert status == EXIT_LOAD_FAILED, server.log_path.read_text()
    critical = [e for e in server.log_lines() if e["level"] == "critical"]
    assert critical and all("model.onnx" in e["error"] for e in critical), critical
    assert any(e["level"] == "error" and "exc" in e for e in server.log_lines())  # the traceback, once


def test_exit_on_error_off_keeps_the_process_up_and_unready(tmp_path: Path) -> None:
    import httpx

    server = start_server(tmp_path / "server.log", {"DELTAGATE_BUNDLE_PATH": str(broken_bundle(tmp_path)),
                                                    "DELTAGATE_EXIT_ON_ERROR": "false"})
    try:
        for _ in range(600):
            try:
                r = httpx.get(f"{server.url}/healthz", timeout=2.0)
            except httpx.HTTPError:
                assert server.proc.poll() is None, server.log_path.read_text()
                continue
            if r.status_code == 503:
                break
        assert r.json()["status"] == "failed" and server.proc.poll() is None
        assert httpx.get(f"{server.url}/readyz", timeout=2.0).json()["status"] == "failed"
    finally:
        server.stop()
