"""A core install (no torch, no open_clip) serves the default bundle with the default settings.

The server runs in a subprocess where ``import torch`` / ``import open_clip`` fail, as on a machine
with only the core dependencies: ``deltagate serve`` with no engine setting must turn ready, answer
``/classify`` and report the ONNX engine; asking for the torch engine must fail loudly, naming the
extra to install.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.server import EXIT_LOAD_FAILED
from tests.server_process import DEFAULT_BUNDLE, REPO, ServerProcess, free_port
from tests.service_support import files, noise_image

pytestmark = pytest.mark.e2e

# sys.modules[name] = None makes every later `import name` raise ImportError.
WITHOUT_TORCH = ("import sys\nfor m in ('torch', 'torchvision', 'open_clip', 'safetensors'): sys.modules[m] = None\n"
                 "from deltagate.cli import cli_main\ncli_main()\n")


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port, log = free_port(), tmp_path / "server.log"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "DELTAGATE_HOST": "127.0.0.1",
           "DELTAGATE_PORT": str(port), "DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", WITHOUT_TORCH, "serve", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def test_default_settings_serve_the_default_bundle_without_torch(tmp_path: Path) -> None:
    proc, url, log = start(tmp_path)
    server = ServerProcess(proc, int(url.rsplit(":", 1)[1]), log)
    try:
        server.wait_ready(120)
        r = httpx.post(f"{server.url}/classify", files=files(noise_image(0)), timeout=30)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/model", timeout=10).json()["engine"] == "onnx"
    finally:
        server.stop()
    assert "ImportError" not in log.read_text() and "ModuleNotFoundError" not in log.read_text()


def test_the_torch_engine_without_torch_fails_loudly_naming_the_extra(tmp_path: Path) -> None:
    proc, _, log = start(tmp_path, "--engine", "torch")
    assert proc.wait(timeout=120) == EXIT_LOAD_FAILED, log.read_text()
    assert "pip install 'deltagate[torch]'" in log.read_text()
