"""Estimate what each image's Python environment weighs, without a Docker engine.

An image is its base (``python:3.11-slim-bookworm``, not measured here: no Docker engine) plus the
virtualenv the Dockerfile builds plus the bundle. This installs each image's dependency set into a
fresh virtualenv and sums the files of its ``site-packages`` (``du``-style, apparent sizes), so
the numbers are estimates of the venv layer only:

- ``slim``: docker/Dockerfile.cpu, the core dependencies without torch, torchvision, open_clip;
- ``torch-cpu``: docker/Dockerfile.cpu-torch, the same plus torch's CPU wheel, torchvision and
  open_clip. PyTorch's CPU index cannot be reached here, so the CPU torch wheel is the one this
  machine's wheel cache holds (``--torch-cpu-wheel``; its version is recorded);
- ``cuda-torch``: torch 2.14.1 from PyPI with its CUDA 13 wheels (nvidia-*, triton), measured on an
  existing install of those wheels (``--cuda-venv``) instead of downloading ~5 GB again;
  onnxruntime-gpu is not included.

Usage::

    python -m deploy.image_sizes --out results/image_sizes.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TORCH_FAMILY = ("torch", "torchvision", "open_clip_torch", "open-clip-torch")
# Dependencies of torch, torchvision, open_clip and timm other than torch itself.
TORCH_RUNTIME_DEPS = ("sympy", "networkx", "jinja2", "fsspec", "filelock", "typing-extensions", "regex", "ftfy",
                      "huggingface_hub", "pyyaml")
CUDA_PACKAGES = ("torch", "torchvision", "nvidia", "triton")  # site-packages dirs of the PyPI CUDA install

logger = logging.getLogger("deltagate.deploy.image_sizes")


def core_dependencies() -> list[str]:
    """pyproject's core dependencies and, if present, its ``torch`` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("torch", []))


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python*/site-packages")
    return sp


def pip(venv: Path, *args: str) -> None:
    cmd = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-compile", *args]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def venv_size(venv: Path) -> dict[str, Any]:
    """Total site-packages size without pip/setuptools (the images' venvs carry them too, small)."""
    sp = site_packages(venv)
    tooling = sum(tree_bytes(p) for p in sp.iterdir() if p.name.startswith(("pip", "setuptools", "_distutils")))
    largest = sorted(((tree_bytes(p), p.name) for p in sp.iterdir() if p.is_dir()), reverse=True)[:8]
    return {"site_packages_mib": round((tree_bytes(sp) - tooling) / 2**20, 1),
            "largest_mib": {name: round(size / 2**20, 1) for size, name in largest}}


def build(name: str, torch_wheel: Path | None, work: Path) -> dict[str, Any]:
    venv = work / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    deps = core_dependencies()
    slim = [d for d in deps if requirement_name(d) not in TORCH_FAMILY]
    if name == "slim":
        pip(venv, *slim)
        return venv_size(venv)
    assert torch_wheel is not None
    pip(venv, "--no-deps", str(torch_wheel))
    # torchvision, open_clip and timm pin or require torch: --no-deps keeps the CPU torch (their
    # resolver would otherwise fetch the CUDA torch from PyPI); their other dependencies follow.
    family = [d for d in deps if requirement_name(d) in TORCH_FAMILY and requirement_name(d) != "torch"]
    pip(venv, "--no-deps", *family, "timm")
    pip(venv, *slim, *TORCH_RUNTIME_DEPS)
    installed = subprocess.run([str(venv / "bin/python"), "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    if "+cpu" not in installed:
        raise RuntimeError(f"torch was replaced by {installed}: the estimate would not be the CPU image")
    return {**venv_size(venv), "torch": installed}


def cuda_install(venv: Path) -> dict[str, Any]:
    sp = site_packages(venv)
    parts = {p: round(tree_bytes(sp / p) / 2**20, 1) for p in CUDA_PACKAGES if (sp / p).is_dir()}
    import importlib.metadata as md

    versions = {d: md.version(d) for d in ("torch", "torchvision")}
    return {"measured_in": str(venv), "versions": versions, "parts_mib": parts,
            "torch_cuda_mib": round(sum(parts.values()), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cached = sorted(Path("/opt/wheels").glob("torch-*+cpu-*.whl"))
    parser.add_argument("--torch-cpu-wheel", type=Path, default=cached[-1] if cached else None,
                        help="a CPU torch wheel (default: the newest in /opt/wheels)")
    parser.add_argument("--cuda-venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result: dict[str, Any] = {
        "command": "python -m deploy.image_sizes " + " ".join(sys.argv[1:] if argv is None else argv),
        "note": "venv layer only (site-packages), not the base image; estimates",
    }
    with tempfile.TemporaryDirectory(prefix="deltagate-sizes-") as tmp:
        result["slim"] = build("slim", None, Path(tmp))
        if args.torch_cpu_wheel and args.torch_cpu_wheel.is_file():
            result["torch-cpu"] = build("torch-cpu", args.torch_cpu_wheel, Path(tmp))
    result["cuda-torch"] = cuda_install(args.cuda_venv)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
