"""Stand-in base images for machines that reach Debian's and PyPI's mirrors but no image registry.

- **Python** (for ``python:3.11-slim-bookworm``, the Dockerfiles' ``PYTHON_IMAGE``): Debian bookworm
  from ``debootstrap --variant=minbase`` with Debian's Python 3.11, ``python3-venv`` and
  ``python3-pip``, a ``python`` link in ``/usr/local/bin`` as the official image has, no apt lists or
  package cache. Debian's mirror is read from this machine's apt sources at run time.
  Where package downloads pass a TLS-intercepting proxy, the proxy's CA is only in this machine's
  bundle: the stand-in carries ``/etc/ssl/certs/ca-certificates.crt`` from the host and an
  ``/etc/pip.conf`` naming it. That is the stand-in's business only; the project's Dockerfiles
  know nothing of it (they get the stand-in through ``--build-arg PYTHON_IMAGE=...``).
- **Prometheus** (for the compose file's ``prom/prometheus`` image): Debian's ``prometheus`` package
  on the Python stand-in, laid out as the official image is (entrypoint the binary, working and
  data directory ``/prometheus``, user ``nobody``), tagged with the compose file's image name so
  that ``docker-compose.yml`` runs unchanged. ``prometheus.Containerfile`` beside this file.

Both are built once and kept in the engine's store, tagged with a key over their recipe (this
file, the Containerfile, the CA bundle, the mirror): a second run finds them. Where the real image
is already in the store (pulled on a machine with a registry), it is used instead.

    python -m deploy.containers.standin          # build (or find) both; prints their tags
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy.containers.engine import ROOT, Podman, exclusive

__all__ = ["PYTHON_IMAGE", "python_base", "prometheus_image", "debian_mirror", "compose_image"]

logger = logging.getLogger(__name__)

PYTHON_IMAGE = "python:3.11-slim-bookworm"  # what the Dockerfiles' PYTHON_IMAGE defaults to
STANDIN_PYTHON = "localhost/deltagate-standin/python"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
PROMETHEUS_CONTAINERFILE = Path(__file__).with_name("prometheus.Containerfile")
KEY_LABEL = "io.deltagate.standin-key"


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES, suite: str = SUITE) -> str:
    """The Debian archive URI this machine's apt uses for ``suite`` (deb822 or one-line format)."""
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for stanza in re.split(r"\n\s*\n", text):  # deb822: URIs/Suites fields per stanza
            fields = dict(re.findall(r"^(URIs|Suites):\s*(.+)$", stanza, flags=re.MULTILINE))
            if suite in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
        for match in re.finditer(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{suite}\s", text, flags=re.MULTILINE):
            return match.group(1)
    raise RuntimeError(f"no apt source for Debian {suite} in {', '.join(map(str, sources))}")


def compose_image(service: str, compose_file: Path = ROOT / "docker-compose.yml") -> str:
    """The fully qualified name of a compose service's image (``prom/x:1`` is ``docker.io/prom/x:1``)."""
    import yaml  # PyYAML: a dev dependency, as all of deploy/

    name = str(yaml.safe_load(compose_file.read_text(encoding="utf-8"))["services"][service]["image"])
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    return name if "." in first or ":" in first or first == "localhost" else f"docker.io/{name}"


def _key(*parts: bytes) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        digest.update(b"\0" + part)
    return digest.hexdigest()[:16]


def _ca_bundle() -> bytes:
    return HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""


def python_base(podman: Podman, log_path: Path | None = None) -> str:
    """A tag of the Python base: the real ``python:3.11-slim-bookworm`` if the store has it, else
    the stand-in (built now if its key has no image yet)."""
    if podman.image_exists(f"docker.io/library/{PYTHON_IMAGE}"):
        return f"docker.io/library/{PYTHON_IMAGE}"
    mirror = debian_mirror()
    key = _key(mirror.encode(), _ca_bundle())
    tag = f"{STANDIN_PYTHON}:3.11-slim-{SUITE}-{key}"
    if podman.image_exists(tag):
        return tag
    with exclusive(STANDIN_PYTHON):
        if not podman.image_exists(tag):
            _build_python_base(podman, tag, key, mirror, log_path)
    return tag


def _build_python_base(podman: Podman, tag: str, key: str, mirror: str, log_path: Path | None) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise RuntimeError("debootstrap is not installed: `make system-deps` (as root) installs it")
    logger.info("building the stand-in %s with debootstrap from %s", tag, mirror)
    with tempfile.TemporaryDirectory(prefix="deltagate-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
        if log_path is None:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True, timeout=1800)
        else:
            with log_path.open("a") as log:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1800)
        (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        if HOST_CA_BUNDLE.is_file():  # the stand-in's own business: see the module docstring
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
            (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):  # as Debian's own images: no lists, no .debs
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
               "--change", f"LABEL {KEY_LABEL}={key}", "-", tag, stdin=tar.stdout, timeout=900)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {rootfs} failed")


def prometheus_image(podman: Podman, name: str, base: str, log_path: Path | None = None) -> str:
    """``name`` (the compose file's Prometheus image): as the store has it if it is not one of our
    stand-ins, else the stand-in built from Debian's package on ``base``."""
    key = _key(PROMETHEUS_CONTAINERFILE.read_bytes(), base.encode())
    if podman.image_exists(name) and podman.image_labels(name).get(KEY_LABEL) in {None, key}:
        return name  # the real image, or our stand-in of the same recipe
    with exclusive(name):
        if not (podman.image_exists(name) and podman.image_labels(name).get(KEY_LABEL) == key):
            logger.info("building the Prometheus stand-in %s from Debian's package", name)
            podman.build(dockerfile=PROMETHEUS_CONTAINERFILE, context=PROMETHEUS_CONTAINERFILE.parent,
                         tag=name, build_args={"BASE_IMAGE": base}, labels={KEY_LABEL: key}, log_path=log_path)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    podman = Podman()
    base = python_base(podman)
    print(base)  # noqa: T201
    print(prometheus_image(podman, compose_image("prometheus"), base))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
