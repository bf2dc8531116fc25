"""Podman as this project drives it, and image builds keyed by what they are built from.

Every podman command goes through :class:`Podman`, which passes the repository's
``containers.conf`` (beside this file) through ``CONTAINERS_CONF``: nothing under /etc/containers
is read for those settings or changed. :func:`unavailable_reason` says in one sentence why the
engine cannot run (not Linux, not root, podman missing, ``podman info`` failing), or None.

Images are built from the real Dockerfiles with ``--build-arg`` only. A built image is tagged with
a key over everything its build reads (the Dockerfile, the build arguments, the base image's id
and every file of the build context that ``.dockerignore`` lets through), so an unchanged tree
reuses the image it built before and a changed one builds anew; older tags of the same image are
removed so that the store does not grow without bound. Builds and tag moves happen under one
file lock per image (:func:`exclusive`): several test runs on one machine share the engine safely.

The podman command line rather than its Python bindings (PyPI ``podman``): those talk to the REST
API of a ``podman system service`` that something would have to start and stop, while the command
line needs nothing running and is what docs/deployment.md shows users.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deltagate.server_process import wait_ready

__all__ = ["ROOT", "CONTAINERS_CONF", "Podman", "PodmanError", "unavailable_reason", "exclusive",
           "dockerignore_allowlist", "context_files", "build_key", "ensure_image", "HARDENED", "CONTAINER_PORT",
           "Container", "run_container"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
LOCK_DIR = Path(tempfile.gettempdir())
KEEP_TAGS = 3  # content-keyed tags kept per image name (several worktrees may test at once) ...
PRUNE_AFTER_S = 6 * 3600  # ... and any younger than this: a test session on this machine may still use it
_IGNORED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its command line and stderr."""


@dataclass
class Podman:
    """The ``podman`` command with the project's containers.conf."""

    binary: str = "podman"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **self.extra_env}

    def __call__(self, *args: str, check: bool = True, timeout: float = 600.0, stdin: Any = None,
                 log_path: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS``; output captured (or appended to ``log_path``, for long builds)."""
        cmd = [self.binary, *args]
        logger.debug("$ %s", " ".join(cmd))
        if log_path is not None:
            with log_path.open("a", encoding="utf-8") as log:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.run(cmd, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, text=True,
                                      env=self.env(), timeout=timeout, check=False)
            result = subprocess.CompletedProcess(cmd, proc.returncode, "", "")
            if check and proc.returncode:
                raise PodmanError(f"{' '.join(cmd)} exited {proc.returncode}; see {log_path}:\n"
                                  + log_path.read_text(encoding="utf-8", errors="replace")[-4000:])
            return result
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout,
                              check=False)
        if check and proc.returncode:
            raise PodmanError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    def inspect(self, *refs: str, kind: str = "container") -> list[dict[str, Any]]:
        found = json.loads(self(kind, "inspect", *refs).stdout)
        return [found] if isinstance(found, dict) else list(found)  # podman 4's `pod inspect` of one pod: an object

    def image_exists(self, ref: str) -> bool:
        return self("image", "exists", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        """Bytes of the image as the engine stores it (all layers, uncompressed)."""
        return int(self.inspect(ref, kind="image")[0]["Size"])

    def image_labels(self, ref: str) -> dict[str, str]:
        return dict(self.inspect(ref, kind="image")[0].get("Labels") or {})

    def state(self, container: str) -> dict[str, Any]:
        return dict(self.inspect(container)[0]["State"])

    def logs(self, container: str) -> str:
        proc = self("logs", container, check=False)
        return proc.stdout + proc.stderr

    def remove(self, *containers: str) -> None:
        """Remove containers (stopping them at once); missing ones are fine."""
        if containers:
            self("rm", "--force", "--time", "0", "--ignore", *containers, check=False)

    def build(self, *, dockerfile: Path, tag: str, context: Path = ROOT, build_args: Mapping[str, str] | None = None,
              labels: Mapping[str, str] | None = None, log_path: Path | None = None,
              timeout: float = 3600.0, no_cache: bool = False, keep_layers: bool = True) -> float:
        """``podman build`` in the docker format (keeps HEALTHCHECK), host network; returns its seconds.
        ``no_cache``: no layer reused; not ``keep_layers``: no intermediate image kept either."""
        args = ["build", "--format", "docker", "--network", "host", "--file", str(dockerfile), "--tag", tag]
        if no_cache:
            args.append("--no-cache")
        if not keep_layers:
            args.append("--layers=false")
        for name, value in sorted((build_args or {}).items()):
            args += ["--build-arg", f"{name}={value}"]
        for name, value in sorted((labels or {}).items()):
            args += ["--label", f"{name}={value}"]
        started = time.monotonic()
        self(*args, str(context), timeout=timeout, log_path=log_path)
        return time.monotonic() - started


def unavailable_reason(podman: Podman | None = None) -> str | None:
    """Why containers cannot run here, in one sentence; None when they can."""
    if sys.platform != "linux":
        return f"containers run on Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return ("podman runs as root on these machines (rootless podman is not set up): "
                "run the container tests as root")
    podman = podman or Podman()
    if shutil.which(podman.binary) is None:
        return "podman is not installed: `make system-deps` (as root) installs it"
    proc = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=120)
    if proc.returncode:
        return f"`podman info` fails with {CONTAINERS_CONF.name}: {proc.stderr.strip()[-500:]}"
    return None


@contextmanager
def exclusive(what: str) -> Iterator[None]:
    """Hold the machine-wide lock named ``what`` (an image being built, a tag being moved): one
    process at a time does that work, others wait and then find it done."""
    lock = LOCK_DIR / f"deltagate-containers-{hashlib.sha256(what.encode()).hexdigest()[:16]}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dockerignore_allowlist(root: Path = ROOT) -> list[str]:
    """The paths ``.dockerignore`` lets into the build context (its ``!path`` lines; it ignores all else)."""
    return [line[1:].strip().rstrip("/") for line in (root / ".dockerignore").read_text().splitlines()
            if line.startswith("!")]


def context_files(root: Path = ROOT) -> list[Path]:
    """The files of the build context: what ``.dockerignore``'s allowlist lets through."""
    files: list[Path] = []
    for entry in dockerignore_allowlist(root):
        path = root / entry
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [p for p in candidates
                  if p.is_file() and not _IGNORED_PARTS & set(p.relative_to(root).parts) and p.suffix != ".pyc"]
    return files


def build_key(dockerfile: Path, build_args: Mapping[str, str], extra: Sequence[str] = (), root: Path = ROOT) -> str:
    """A hash over everything a build reads: the Dockerfile, its arguments, ``extra`` (e.g. the
    base image's id) and the build context's files (path and bytes)."""
    digest = hashlib.sha256()
    digest.update(dockerfile.read_bytes())
    for name, value in sorted(build_args.items()):
        digest.update(f"\0arg {name}={value}".encode())
    for item in extra:
        digest.update(f"\0extra {item}".encode())
    for path in context_files(root):
        digest.update(f"\0file {path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _prune_old_tags(podman: Podman, repository: str, keep: str) -> None:
    """Remove the tags of ``repository`` beyond the newest ``KEEP_TAGS`` that are older than
    ``PRUNE_AFTER_S`` (another run on this machine may still be using a recent one); never
    ``keep``. With each tag go the untagged intermediate images of its build (the builder stage,
    which carries the same build-key label): left behind, each build would leave ~0.5 GB on the
    disk. (Podman 4.3, Debian 12's, labels every stage; newer buildah labels only the last one, and
    there this finds none: ``podman image prune`` removes them by hand.) Images still used by a
    container stay (podman refuses, which is fine)."""
    proc = podman("images", "--format", "json", "--filter", f"reference={repository}", check=False)
    if proc.returncode:
        return
    tagged = [(int(img.get("Created", 0)), name) for img in json.loads(proc.stdout or "[]")
              for name in img.get("Names") or [] if name.startswith(repository + ":")]
    cutoff = time.time() - PRUNE_AFTER_S
    for created, name in sorted(tagged, reverse=True)[KEEP_TAGS:]:
        if name != keep and created < cutoff:
            podman("rmi", name, check=False)
            key = name.rsplit(":", 1)[1]
            podman("image", "prune", "--force", "--filter", f"label=io.deltagate.build-key={key}", check=False)


def ensure_image(podman: Podman, dockerfile: Path, repository: str, build_args: Mapping[str, str],
                 log_path: Path | None = None, timeout: float = 3600.0, fresh: bool = False,
                 keep_layers: bool = True) -> tuple[str, float | None]:
    """The image of ``dockerfile`` built with ``build_args`` on the current tree: reused when its
    content key has a tag already, built otherwise (``fresh``: always, without the layer cache, as
    on a new machine; not ``keep_layers``: no intermediate images left in the store).
    Returns (tag, build seconds or None if reused)."""
    base = build_args.get("PYTHON_IMAGE")
    base_id = podman.inspect(base, kind="image")[0]["Id"] if base else ""
    key = build_key(dockerfile, build_args, extra=[base_id])[:20]
    tag = f"{repository}:{key}"
    if podman.image_exists(tag) and not fresh:
        return tag, None
    with exclusive(repository):
        if podman.image_exists(tag) and not fresh:  # another run built it while this one waited
            return tag, None
        logger.info("building %s from %s", tag, dockerfile.relative_to(ROOT))
        seconds = podman.build(dockerfile=dockerfile, tag=tag, build_args=build_args,
                               labels={"io.deltagate.build-key": key}, log_path=log_path, timeout=timeout,
                               no_cache=fresh, keep_layers=keep_layers)
        _prune_old_tags(podman, repository, keep=tag)
    return tag, seconds


# Hardening of docker-compose.yml and the Kubernetes pod, as `podman run` options. Podman's
# --read-only also mounts tmpfs on /run and /var/tmp unless told not to: only /tmp is writable.
HARDENED = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:size=512m", "--cap-drop=ALL",
            "--security-opt", "no-new-privileges")
CONTAINER_PORT = 8000  # the images' EXPOSE and DELTAGATE_PORT


@dataclass
class Container:
    """A container started by :func:`run_container`."""

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
def run_container(podman: Podman, image: str, *options: str, name: str, env: Mapping[str, str] | None = None,
                  port: int | None = None, ready: bool = True) -> Iterator[Container]:
    """``podman run --detach`` of ``image`` with :data:`HARDENED`, ``env`` and ``options``, its port
    on 127.0.0.1:``port``; waits until ready (unless not ``ready``); removed after."""
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
