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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.containers.engine import ROOT, Container, Podman, ensure_image, unavailable_reason
from deploy.containers.engine import run_container as engine_run
from deploy.containers.standin import python_base
from tests.server_process import free_test_port
from tests.unit.deploy.conftest import under_ci

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


@contextmanager
def run_container(podman: Podman, image: str, *options: str, env: Mapping[str, str] | None = None,
                  publish: bool = True, ready: bool = True) -> Iterator[Container]:
    """:func:`deploy.containers.engine.run_container` on a port of ``DELTAGATE_TEST_PORTS``, named for this run."""
    with engine_run(podman, image, *options, name=unique_name("svc"), env=env,
                    port=free_test_port() if publish else None, ready=ready) as container:
        yield container


def readable_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` that the image's user (uid 10001) can read through a bind mount."""
    shutil.copytree(bundle, dest)
    dest.chmod(0o755)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest
