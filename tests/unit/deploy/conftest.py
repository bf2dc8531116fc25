"""Shared helpers of the deployment-file tests: external tools, rendered manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[3]
OVERLAYS = ("cpu", "gpu")


def under_ci() -> bool:
    """``CI`` set to anything but empty/0/false (CI runs ``CI=true bash .ci/run``)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def require_tool(name: str) -> str:
    """The tool's path; a missing tool skips locally and fails under CI (`make system-deps`)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed: `make system-deps` installs it"
    if under_ci():
        pytest.fail(message + " (required under CI)")
    pytest.skip(message + " (required when CI is set)")


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <directory>`` as a list of resources."""
    kubectl = require_tool("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s/overlays/<overlay>`` as a list of resources."""
    return render_kustomization(ROOT / "deploy/k8s/overlays" / overlay)


@pytest.fixture(scope="session", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(overlay name, its rendered resources), once per overlay."""
    return request.param, render_overlay(request.param)


def validate_builtin_kinds(resources: list[dict[str, Any]], path: Path) -> str:
    """Write ``resources`` to ``path`` and check them with ``kubernetes-validate --strict``; its stdout.

    Built-in kinds only: the tool has no schema for custom resources (KServe's, the Prometheus operator's).
    """
    import sys

    path.write_text(yaml.safe_dump_all(resources), encoding="utf-8")
    tool = Path(sys.executable).with_name("kubernetes-validate")
    if not tool.exists():
        tool = Path(require_tool("kubernetes-validate"))
    proc = subprocess.run([str(tool), "--strict", "--no-warn", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout

