"""A core install (no torch, no open_clip) serves the default bundle with the default settings.

The server runs in a subprocess where ``import torch`` / ``import open_clip`` fail, as on a machine
with only the core dependencies (``import proxy`` fails too: the service images carry no research
code): ``deltagate serve`` with no engine setting must turn ready, answer ``/classify`` and report the
ONNX engine (``onnx-int8``: the bundle's int8 graph, chosen by ``engine=auto``); asking for the torch
engine must fail loudly, naming the extra to install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from deltagate.server_process import ServerProcess
from tests.server_process import DEFAULT_BUNDLE, REPO
from tests.service_support import files, noise_image

pytestmark = pytest.mark.e2e

# sys.modules[name] = None makes every later `import name` raise ImportError.
WITHOUT_TORCH = ("import sys\nfor m in ('torch', 'torchvision', 'open_clip', 'safetensors', 'proxy'):\n"
                 "    sys.modules[m] = None\nfrom deltagate.cli import cli_main\ncli_main()\n")


def slim_server(tmp_path: Path, *args: str, bundle: Path = DEFAULT_BUNDLE, **env_extra: str) -> ServerProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "DELTAGATE_HOST": "127.0.0.1",
           "DELTAGATE_PORT": "{port}", "DELTAGATE_BUNDLE_PATH": str(bundle), **env_extra}
    argv = [sys.executable, "-c", WITHOUT_TORCH, "serve", *args]
    return ServerProcess("slim serve", argv, env, base_env={}, cwd=REPO, ready_timeout_s=120.0,
                         log_path=tmp_path / "server.log")


def test_default_settings_serve_the_default_bundle_without_torch(tmp_path: Path) -> None:
    with slim_server(tmp_path) as server:  # started, and ready
        r = httpx.post(f"{server.url}/classify", files=files(noise_image(0)), timeout=30)
        assert r.status_code == 200, r.text
        # engine=auto: the default bundle's int8 graph, whose records pass (ONNX Runtime alone runs it)
        assert httpx.get(f"{server.url}/model", timeout=10).json()["engine"] == "onnx-int8"
    assert "ImportError" not in server.log_text() and "ModuleNotFoundError" not in server.log_text()


def test_the_torch_engine_without_torch_fails_loudly_naming_the_extra(tmp_path: Path) -> None:
    server = slim_server(tmp_path, "--engine", "torch").start()
    # refused before the server starts (service.runtime.check_bundle): one line and the CLI's usage status
    assert server.proc.wait(timeout=120) == 2, server.log_text()
    lines = server.log_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'deltagate[torch]'" in lines[0], lines


def test_label_sets_are_served_and_created_without_torch(tmp_path: Path, text_bundle: Path) -> None:
    """Tokenizer, text graph, scores and the set files on a core install: `deltagate label-set create` (CLI) and
    PUT /label-sets (API) with examples, ad-hoc labels, and the named sets answered by the same server."""
    import subprocess

    from tests.train_support import make_image_folder

    sets = tmp_path / "sets"
    examples = make_image_folder(tmp_path / "ex", {"circle": 6, "red_square": 6}, seed=3)
    cli = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "label-set", "create", "--bundle", str(text_bundle),
                          "--name", "cli-set", "--labels", "circle,red square", "--examples", str(examples),
                          "--out", str(sets)], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "calibrated on 12 examples" in cli.stdout
    with slim_server(tmp_path, bundle=text_bundle, DELTAGATE_LABEL_SETS_DIR=str(sets),
                     DELTAGATE_ADMIN_KEY="k") as server:
        r = httpx.post(f"{server.url}/classify", files=files(noise_image(0)),
                       data={"labels": ["octagon", "pentagon", "hexagon"]}, timeout=30)
        assert r.status_code == 200 and r.json()["calibrated"] is False, r.text
        body = [("labels", (None, "cat")), ("labels", (None, "dog"))] + [
            (f"example:{label}", (f"{i}.png", noise_image(10 * j + i, (20, 20))))
            for j, label in enumerate(["cat", "dog"]) for i in range(5)]
        r = httpx.put(f"{server.url}/label-sets/api-set", files=body, headers={"Authorization": "Bearer k"}, timeout=60)
        assert r.status_code == 201 and r.json()["calibrated"] is True, r.text
        for name, labels in (("cli-set", {"circle", "red square"}), ("api-set", {"cat", "dog"})):
            r = httpx.post(f"{server.url}/classify?label_set={name}", files=files(noise_image(1)), timeout=30)
            assert r.status_code == 200 and r.json()["calibrated"] is True and r.json()["results"][0]["label"] in labels
    assert "ImportError" not in server.log_text() and "ModuleNotFoundError" not in server.log_text()


def test_classify_runs_without_torch(tmp_path: Path) -> None:
    """`deltagate classify` uses the service's runtime only: an ONNX bundle needs no torch there either."""
    import json
    import subprocess

    image = tmp_path / "noise.png"
    image.write_bytes(noise_image(0))
    argv = [sys.executable, "-c", WITHOUT_TORCH, "classify", str(image), "--bundle", str(DEFAULT_BUNDLE)]
    proc = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["filename"] == str(image) and "ImportError" not in proc.stderr
