"""A probe client in its own process: one request at a time, its latency and outcome as JSON lines.

``bench compare`` runs it while its fillers keep a server's queue full, so the probe's timings are
not delayed by the fillers' event loop (both would share one process otherwise).
Run: ``python -m deltagate.bench.probe URL IMAGE --seconds S --interval I [--expect LABEL]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from deltagate.bench.http import Payload, _outcome


def probe(url: str, payload: Payload, seconds: float, interval_s: float, timeout_s: float) -> list[dict[str, object]]:
    """Send ``payload`` every ``interval_s`` for ``seconds``; each answer's latency (s) and outcome."""
    out: list[dict[str, object]] = []
    files = {"file": (payload.filename, payload.data, payload.content_type)}
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                outcome = _outcome(client.post("/classify", files=files), payload)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            out.append({"seconds": time.perf_counter() - t0, "outcome": outcome})
            time.sleep(interval_s)
    return out


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("image", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--expect", default=None)
    args = parser.parse_args()
    payload = Payload(args.image.read_bytes(), args.image.name, "image/jpeg", args.expect)
    json.dump(probe(args.url, payload, args.seconds, args.interval, args.timeout), sys.stdout)


if __name__ == "__main__":
    _main()
