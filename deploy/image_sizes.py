"""Image sizes and time to ready, measured on the engine (podman), for docs/deployment.md.

Each image is built from its Dockerfile with ``--build-arg PYTHON_IMAGE=<base>`` only, where the
base is ``python:3.11-slim-bookworm`` if the engine's store has it, else the Debian stand-in
(deploy/containers/standin.py). Measured:

- ``size_mb``: the image as the engine stores it (all layers, uncompressed; MB = 10^6 bytes, as
  podman prints), and ``added_mb``: what the Dockerfile adds on top of the base, which does not
  depend on which base it was;
- ``contents``: what the image's own files weigh, read with ``du`` inside it: the virtualenv,
  its largest packages, the bundle;
- ``build_s``: the build's wall time; ``--fresh`` builds without the layer cache, as a new machine
  does (downloads included), else a cached build is reused and not timed;
- ``ready_s``: from ``podman run`` (hardened as compose runs it) to the first 200 of ``/readyz``,
  in ``--rounds`` rounds (median, min, max). Only for images that can start here: the CUDA image
  needs a GPU (``DELTAGATE_DEVICE=cuda`` refuses to start without one).

``--image cuda`` / ``cpu-torch`` are heavy (the CUDA image is gigabytes): they are built only when
named, and removed after measuring unless ``--keep``. A build that cannot finish here (a wheel
index that cannot be reached) is recorded with its reason and the time it took to fail.

    python -m deploy.image_sizes --image cpu --fresh --out results/image_sizes.json
    python -m deploy.image_sizes --image cuda --image cpu-torch --fresh --merge --out results/image_sizes.json
    python -m deploy.image_sizes --table results/image_sizes.json --docs   # the table, into docs/deployment.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deltagate.server_process import free_port
from deploy.containers.engine import ROOT, Podman, PodmanError, ensure_image, run_container
from deploy.containers.standin import PYTHON_IMAGE, python_base
from models.markdown import markdown_table

__all__ = ["IMAGES", "measure", "sizes_table", "docs_table", "write_docs", "main"]

logger = logging.getLogger("deltagate.deploy.image_sizes")

IMAGES = {"cpu": "docker/Dockerfile.cpu", "cpu-torch": "docker/Dockerfile.cpu-torch", "cuda": "docker/Dockerfile.cuda"}
STARTS_HERE = {"cpu", "cpu-torch"}  # the CUDA image needs a GPU to start
MB = 1e6
TOP_PACKAGES = 4


def _mb(size: float) -> float:
    return round(size / MB, 1)


def contents(podman: Podman, ref: str, top: int = TOP_PACKAGES) -> dict[str, Any]:
    """What the image's own files weigh (apparent sizes, ``du`` inside it): the virtualenv, its
    ``top`` largest packages, and the bundle."""
    script = ("du -sk --apparent-size /opt/venv /app/bundles/default; "
              "du -sk --apparent-size /opt/venv/lib/python3*/site-packages/*")
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c", script).stdout
    sizes = {path: int(kib) * 1024 for kib, path in (line.split(maxsplit=1) for line in out.splitlines())}
    packages = sorted(((size, Path(path).name) for path, size in sizes.items() if "/site-packages/" in path),
                      reverse=True)[:top]
    return {"venv_mb": _mb(sizes["/opt/venv"]), "bundle_mb": _mb(sizes["/app/bundles/default"]),
            "largest_packages_mb": {name: _mb(size) for size, name in packages}}


def time_to_ready(podman: Podman, tag: str, rounds: int) -> dict[str, Any]:
    samples = []
    for i in range(rounds):
        started = time.monotonic()
        with run_container(podman, tag, name=f"deltagate-measure-{i}", port=free_port()):
            samples.append(round(time.monotonic() - started, 2))
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "rounds": samples}


def measure(podman: Podman, name: str, base: str, rounds: int, fresh: bool, keep: bool, log: Path) -> dict[str, Any]:
    dockerfile = ROOT / IMAGES[name]
    result: dict[str, Any] = {"dockerfile": IMAGES[name]}
    started = time.monotonic()
    heavy = name != "cpu"  # gigabytes: no intermediate images left behind, and removed after unless kept
    result["load_avg_at_start"] = round(os.getloadavg()[0], 1)  # the machine is shared: how busy it was
    try:
        tag, build_s = ensure_image(podman, dockerfile, f"localhost/deltagate-measure/{name}",
                                    {"PYTHON_IMAGE": base}, log_path=log, fresh=fresh, keep_layers=not heavy)
    except PodmanError as exc:
        tail = [line for line in str(exc).splitlines() if line.strip()][-6:]
        return {**result, "built": False, "failed_after_s": round(time.monotonic() - started, 1), "error": tail}
    result.update(built=True, build_s=None if build_s is None else round(build_s, 1), fresh=fresh,
                  size_mb=_mb(podman.image_size(tag)), added_mb=_mb(podman.image_size(tag) - podman.image_size(base)),
                  contents=contents(podman, tag))
    if name in STARTS_HERE:
        result["ready_s"] = time_to_ready(podman, tag, rounds)
    else:
        result["ready_s"] = None
        result["not_started"] = "needs a GPU (DELTAGATE_DEVICE=cuda refuses to start without one)"
    if heavy and not keep:
        podman("rmi", tag, check=False)
    return result


def sizes_table(results: dict[str, Any]) -> str:
    """The docs' table of measured images (docs/deployment.md, between the image-sizes markers)."""
    rows = []
    for name in [n for n in IMAGES if n in results["images"]]:
        image = results["images"][name]
        label = f"`deltagate:{name}`"
        if not image.get("built"):
            rows.append([label, "not built", "—", "—", "—", f"build failed after {image['failed_after_s']} s"])
            continue
        ready = image.get("ready_s")
        if ready:
            ready_text = f"{ready['median']} s (min {ready['min']}, max {ready['max']}, {len(ready['rounds'])} runs)"
        else:
            ready_text = f"not started: {image.get('not_started', '')}"
        build = "cached" if image["build_s"] is None else f"{image['build_s']} s"
        if image["build_s"] is not None and image.get("fresh"):
            load = image.get("load_avg_at_start")
            build += f" (no cache; load average {load})" if load is not None else " (no cache)"
        inside = image["contents"]
        parts = ", ".join(f"{name} {mb}" for name, mb in inside["largest_packages_mb"].items())
        rows.append([label, f"{image['size_mb']} MB", f"{image['added_mb']} MB", build, ready_text,
                     f"venv {inside['venv_mb']} MB ({parts}); bundle {inside['bundle_mb']} MB"])
    return markdown_table(["image", "size", "added to the base", "build", "time to ready (median)",
                           "inside (MB, apparent)"], rows)


DOCS = ROOT / "docs/deployment.md"
MARKERS = ("<!-- image-sizes:start -->\n", "\n<!-- image-sizes:end -->")
MARKED = re.compile(re.escape(MARKERS[0]) + r"(.*?)" + re.escape(MARKERS[1]), re.DOTALL)


def docs_table(doc: str) -> str:
    """The table between the image-sizes markers of ``doc``."""
    found = MARKED.search(doc)
    if found is None:
        raise ValueError("no image-sizes markers (<!-- image-sizes:start --> ... end -->) in the docs")
    return found.group(1)


def write_docs(results: dict[str, Any], path: Path = DOCS) -> None:
    """Put :func:`sizes_table` of ``results`` between the markers of docs/deployment.md."""
    doc = path.read_text(encoding="utf-8")
    docs_table(doc)  # the markers are there
    table = f"{MARKERS[0]}{sizes_table(results)}{MARKERS[1]}"
    path.write_text(MARKED.sub(lambda _: table, doc, count=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", choices=sorted(IMAGES), help="default: cpu")
    parser.add_argument("--rounds", type=int, default=5, help="starts per image for time to ready")
    parser.add_argument("--fresh", action="store_true", help="build without the layer cache (and time it)")
    parser.add_argument("--keep", action="store_true", help="keep the heavy images after measuring")
    parser.add_argument("--merge", action="store_true", help="update --out's images instead of replacing the file")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="print the Markdown table of this JSON and exit")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/deployment.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.table:
        table_of = json.loads(args.table.read_text(encoding="utf-8"))
        print(sizes_table(table_of))  # noqa: T201
        if args.docs:
            write_docs(table_of)
        return 0
    podman = Podman()
    version = podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="deltagate-sizes-") as tmp:
        log = Path(tmp) / "build.log"
        base = python_base(podman, log_path=log)
        previous = json.loads(args.out.read_text(encoding="utf-8")) if args.merge and args.out and args.out.exists() \
            else {"images": {}}
        command = "python -m deploy.image_sizes " + " ".join(sys.argv[1:] if argv is None else argv)
        result: dict[str, Any] = {
            "engine": f"podman {version} ({platform.machine()}, {len(os.sched_getaffinity(0))} CPUs)",
            "base": {"image": base, "size_mb": _mb(podman.image_size(base)),
                     "stand_in_for": PYTHON_IMAGE if "standin" in base else None},
            "note": "MB = 10^6 bytes, uncompressed as the engine stores them; `added_mb` does not depend on the base",
            "images": dict(previous.get("images", {})),
        }
        for name in args.image or ["cpu"]:
            logger.info("measuring %s", name)
            measured = measure(podman, name, base, args.rounds, args.fresh, args.keep, log)
            result["images"][name] = {"command": command, **measured}
            logger.info("%s", json.dumps(result["images"][name], indent=2))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(sizes_table(result))  # noqa: T201
    if args.docs:
        write_docs(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
