"""Cold start of ``deltagate serve``: time to ready, resident memory, whether torch was loaded.

Each configuration is a checkout of deltagate (``--repo``, e.g. an older commit unpacked with
``git archive``), a bundle and an engine. Every round starts one server per configuration, in
turn (interleaved, so drift on a shared machine hits all alike), on 127.0.0.1, and measures:

* ``ready_s``: from process start to the first ``/readyz`` 200 (load + warm-up included);
* ``rss_mib``: the server's VmRSS once ready, after one ``/classify``; ``peak_mib``: its VmHWM;
* ``torch``: whether ``libtorch`` is mapped into the process (read from ``/proc/<pid>/maps``).

The table shows medians over the rounds. Run::

    python -m deltagate.startup --rounds 3 --port 18450 \\
        --config before-onnx=/tmp/before:bundles/default:onnx --config after-auto=.:bundles/default:auto
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from deltagate.server_process import LOCALHOST, ServerProcess, serve_cli_argv
from models.markdown import markdown_table

__all__ = ["Config", "Sample", "measure", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """One way of starting the server."""

    label: str
    repo: Path  # a deltagate checkout (its code is what runs)
    bundle: Path  # relative paths are resolved against repo
    engine: str

    @classmethod
    def parse(cls, text: str) -> Config:
        """``label=repo:bundle:engine``."""
        label, _, rest = text.partition("=")
        repo, bundle, engine = rest.split(":")
        return cls(label, Path(repo).resolve(), Path(bundle), engine)


@dataclass(frozen=True)
class Sample:
    ready_s: float
    rss_mib: float
    peak_mib: float
    torch_loaded: bool


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def measure(config: Config, port: int, timeout_s: float = 300.0) -> Sample:
    """Start one server, wait until ready, classify one image, read its memory, stop it.

    ``port`` is the first port tried: the server takes the first free one of ``port`` .. ``port + 99``.
    """
    bundle = config.bundle if config.bundle.is_absolute() else config.repo / config.bundle
    argv = serve_cli_argv("--bundle", str(bundle), "--engine", config.engine, "--host", LOCALHOST, "--port", "{port}")
    env = {"PYTHONPATH": str(config.repo), "PATH": "/usr/bin:/bin", "DELTAGATE_LOG_LEVEL": "warning"}
    with ServerProcess(config.label, argv, base_env=env, cwd=config.repo, ready_timeout_s=timeout_s,
                       port_range=(port, port + 99)) as server:
        r = httpx.post(f"{server.url}/classify", files=[("file", ("a.png", _png(), "image/png"))], timeout=60.0)
        r.raise_for_status()
        pid = server.proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert server.startup_seconds is not None  # set once ready
        return Sample(server.startup_seconds, _status_kib(pid, "VmRSS") / 1024, _status_kib(pid, "VmHWM") / 1024,
                      "libtorch" in maps)


def table(results: dict[str, list[Sample]]) -> str:
    """Markdown table of medians."""
    rows = []
    for label, samples in results.items():
        med = {f: statistics.median(getattr(s, f) for s in samples) for f in ("ready_s", "rss_mib", "peak_mib")}
        loaded = {s.torch_loaded for s in samples}
        torch = "yes" if loaded == {True} else "no" if loaded == {False} else "mixed"
        rows.append([label, len(samples), f"{med['ready_s']:.2f}", f"{med['rss_mib']:.0f}", f"{med['peak_mib']:.0f}",
                     torch])
    return markdown_table(["configuration", "rounds", "ready (s)", "RSS after ready + 1 request (MiB)",
                           "peak RSS (MiB)", "torch loaded"], rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (``python -m deltagate.startup --help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", action="append", required=True, type=Config.parse,
                        help="label=repo:bundle:engine (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18450, help="first port tried (of 100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results: dict[str, list[Sample]] = {c.label: [] for c in args.config}
    for round_ in range(args.rounds):
        for config in args.config:
            sample = measure(config, args.port)
            results[config.label].append(sample)
            logger.info("round %d %s: %s", round_ + 1, config.label, sample)
    sys.stdout.write(table(results) + "\n")


if __name__ == "__main__":
    main()
