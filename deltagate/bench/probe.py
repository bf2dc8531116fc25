"""A probe client in its own process: requests on a clock, each one's latency and outcome as JSON.

``bench compare`` runs it while its fillers keep a server's queue full, so the probe's timings are
not delayed by the fillers' event loop (both would share one process otherwise).
Run: ``python -m deltagate.bench.probe URL IMAGE --seconds S --interval I [--expect LABEL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

from deltagate.bench.http import Payload, _outcome


async def _one(client: httpx.AsyncClient, payload: Payload, out: list[dict[str, object]]) -> None:
    files = {"file": (payload.filename, payload.data, payload.content_type)}
    t0 = time.perf_counter()
    try:
        outcome = _outcome(await client.post("/classify", files=files), payload)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    out.append({"seconds": time.perf_counter() - t0, "outcome": outcome})


async def _probe(url: str, payload: Payload, seconds: float, interval_s: float, timeout_s: float,
                 ) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    tasks = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=None)) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(_one(client, payload, out)))
            await asyncio.sleep(interval_s)
        await asyncio.gather(*tasks)
    return out


def probe(url: str, payload: Payload, seconds: float, interval_s: float, timeout_s: float) -> list[dict[str, object]]:
    """Send ``payload`` every ``interval_s`` for ``seconds``, on a clock (not after the previous answer),
    so the requests sample the queue at uniform times; each answer's latency (s) and outcome."""
    return asyncio.run(_probe(url, payload, seconds, interval_s, timeout_s))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("image", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--expect", default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="Seconds to wait first (the queue fills).")
    args = parser.parse_args()
    time.sleep(args.delay)
    payload = Payload(args.image.read_bytes(), args.image.name, "image/jpeg", args.expect)
    json.dump(probe(args.url, payload, args.seconds, args.interval, args.timeout), sys.stdout)


if __name__ == "__main__":
    _main()
