"""The images on a real engine: podman with the repository's containers.conf (deploy/containers).

Every test here is marked ``container``. They run where the engine can run (Linux, root, podman
installed, ``podman info`` working with deploy/containers/containers.conf) and skip with the
reason elsewhere; under CI as root (``make system-deps`` installs podman) a missing engine fails
them instead. The Python base (the stand-in for ``python:3.11-slim-bookworm`` when the registry's
image is absent) and every image built from the Dockerfiles are cached in the engine's store,
keyed by their content (deploy/containers/engine.py): a second run builds nothing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deltagate.server_process import wait_ready
from deploy.containers.engine import ROOT, Podman, ensure_image, unavailable_reason
from deploy.containers.standin import python_base
from tests.server_process import free_test_port
from tests.unit.deploy.conftest import under_ci

# Hardening of docker-compose.yml and the Kubernetes pod, as `podman run` options. Podman's
# --read-only also mounts tmpfs on /run and /var/tmp unless told not to: only /tmp is writable.
HARDENED = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:size=512m", "--cap-drop=ALL",
            "--security-opt", "no-new-privileges")
CONTAINER_PORT = 8000
_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def podman() -> Podman:
    engine = Podman()
    reason = unavailable_reason(engine)
    if reason is not None:
        if under_ci() and os.geteuid() == 0:  # CI as root installs podman (make system-deps): it must run
            pytest.fail(f"containers cannot run under CI: {reason}")
        pytest.skip(reason)
    return engine


@pytest.fixture(scope="session")
def engine_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where builds and stand-ins write their output (quoted when one fails)."""
    return tmp_path_factory.mktemp("engine") / "build.log"


@pytest.fixture(scope="session")
def base_image(podman: Podman, engine_log: Path) -> str:
    return python_base(podman, log_path=engine_log)


@pytest.fixture(scope="session")
def cpu_image(podman: Podman, base_image: str, engine_log: Path) -> str:
    """docker/Dockerfile.cpu built on the current tree (``--build-arg PYTHON_IMAGE`` only)."""
    tag, _ = ensure_image(podman, ROOT / "docker/Dockerfile.cpu", "localhost/deltagate-test/cpu",
                          {"PYTHON_IMAGE": base_image}, log_path=engine_log)
    return tag


def unique_name(what: str) -> str:
    """A container or project name no other test run on this machine uses."""
    return f"dgtest-{os.getpid()}-{next(_names)}-{what}"


@dataclass
class Container:
    podman: Podman
    name: str
    port: int | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        return self.podman.state(self.name)

    def logs(self) -> str:
        return self.podman.logs(self.name)

    def exec(self, *cmd: str) -> Any:
        return self.podman("exec", self.name, *cmd, check=False)

    def exited(self) -> int | None:
        state = self.state()
        return None if state["Running"] or state["Status"] in {"created", "configured"} else int(state["ExitCode"])

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        wait_ready(self.url, timeout_s=timeout_s, name=self.name, exited=self.exited,
                   log_tail=lambda: self.logs()[-3000:])

    def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (status := self.exited()) is not None:
                return status
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} still running after {timeout_s} s:\n{self.logs()[-3000:]}")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30.0, **kwargs)


@contextmanager
def run_container(podman: Podman, image: str, *options: str, env: Mapping[str, str] | None = None,
                  publish: bool = True, ready: bool = True) -> Iterator[Container]:
    """``podman run --detach`` of ``image`` with the hardening, ``env`` and ``options``; removed after."""
    name = unique_name("svc")
    port = free_test_port() if publish else None
    args = ["run", "--detach", "--name", name, *HARDENED]
    if port is not None:
        args += ["--publish", f"127.0.0.1:{port}:{CONTAINER_PORT}"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    podman(*args, *options, image)
    container = Container(podman, name, port)
    try:
        if ready:
            container.wait_ready()
        yield container
    finally:
        podman.remove(name)


def readable_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` that the image's user (uid 10001) can read through a bind mount."""
    shutil.copytree(bundle, dest)
    dest.chmod(0o755)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest
