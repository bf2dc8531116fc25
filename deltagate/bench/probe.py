"""A probe client in its own process: requests on a clock, each one's latency and outcome as JSON.

``bench compare`` and ``bench overload`` run it while their fillers keep a server's queue full, so
the probe's timings are not delayed by the fillers' event loop (both would share one process
otherwise). On a machine that also runs the server, the fillers and a busy neighbour, the probe is
one more program waiting for a core, and its own delays would be counted as the server's. The probe
keeps them out where it can, and measures what is left:

* the garbage collector is off during the window (after a collection and a freeze): a full
  collection of the probe's heap (httpx, h11, asyncio) would stall its event loop for as long;
* ``--autogroup-nice N`` sets the scheduling weight of the probe's session (``/proc/self/autogroup``,
  where the kernel groups scheduling by session; a negative value needs root or CAP_SYS_NICE): a
  probe in its own session otherwise shares the cores on equal terms with the server's session and
  the neighbour's, and waits its turn;
* a 1 ms ticker on the probe's event loop records how late it runs (``loop_lag_ms``): the probe's
  own delay, part of every latency it reports, so a report can say how much of a p99 was the probe.

Run: ``python -m deltagate.bench.probe URL IMAGE --seconds S --interval I [--expect LABEL]``; prints
``{"requests": [{"seconds", "outcome"}, ...], "loop_lag_ms": [...], "autogroup_nice": N or null}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from deltagate.bench.http import Payload, _outcome

TICK_S = 0.001  # the loop-lag ticker's period
AUTOGROUP = Path("/proc/self/autogroup")


async def _one(client: httpx.AsyncClient, payload: Payload, out: list[dict[str, object]]) -> None:
    files = {"file": (payload.filename, payload.data, payload.content_type)}
    t0 = time.perf_counter()
    try:
        outcome = _outcome(await client.post("/classify", files=files), payload)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    out.append({"seconds": time.perf_counter() - t0, "outcome": outcome})


async def _ticker(lags_ms: list[float]) -> None:
    """How late each 1 ms sleep of this loop ends (ms): the probe's own scheduling and loop delay."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags_ms.append(round(max(0.0, time.perf_counter() - t0 - TICK_S) * 1000.0, 3))


async def _probe(url: str, payload: Payload, seconds: float, interval_s: float, timeout_s: float,
                 ) -> tuple[list[dict[str, object]], list[float]]:
    out: list[dict[str, object]] = []
    lags_ms: list[float] = []
    tasks = []
    ticker = asyncio.create_task(_ticker(lags_ms))
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=None)) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(_one(client, payload, out)))
            await asyncio.sleep(interval_s)
        ticker.cancel()
        await asyncio.gather(*tasks)
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    return out, lags_ms


def probe(url: str, payload: Payload, seconds: float, interval_s: float, timeout_s: float,
          ) -> tuple[list[dict[str, object]], list[float]]:
    """Send ``payload`` every ``interval_s`` for ``seconds``, on a clock (not after the previous answer),
    so the requests sample the queue at uniform times; each answer's latency (s) and outcome, and
    the lateness (ms) of this loop's 1 ms ticks over the window. The garbage collector is off
    meanwhile (collected and frozen first)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return asyncio.run(_probe(url, payload, seconds, interval_s, timeout_s))
    finally:
        gc.enable()


def set_autogroup_nice(nice: int) -> int | None:
    """Set this process's session scheduling weight (Linux autogroup); the value set, or None where it
    cannot be (no autogroup, or a negative value without the privilege)."""
    try:
        AUTOGROUP.write_text(str(nice))
    except OSError:
        return None
    return nice


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("image", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--expect", default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="Seconds to wait first (the queue fills).")
    parser.add_argument("--autogroup-nice", type=int, default=None,
                        help="Scheduling weight of the probe's session (-20..19; negative needs privilege).")
    args = parser.parse_args()
    applied = set_autogroup_nice(args.autogroup_nice) if args.autogroup_nice is not None else None
    time.sleep(args.delay)
    payload = Payload(args.image.read_bytes(), args.image.name, "image/jpeg", args.expect)
    requests, lags_ms = probe(args.url, payload, args.seconds, args.interval, args.timeout)
    result: dict[str, Any] = {"requests": requests, "loop_lag_ms": lags_ms, "autogroup_nice": applied}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    _main()
