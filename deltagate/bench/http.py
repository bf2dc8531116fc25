"""The real server in a subprocess, and a closed-loop HTTP load of single-image requests."""

from __future__ import annotations

import asyncio
import bisect
import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import IO, Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deltagate.bench.report import LatencyStats, latency_stats
from service.server import settings_to_env
from service.settings import Settings

__all__ = ["synthetic_png", "ServerProcess", "LoadResult", "run_load", "summarize_load", "batch_counters"]

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


def synthetic_png(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like PNG (smooth gradients, a few shapes, mild noise), so decode cost is realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    arr = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200.0  # (H, W, 3)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, min(width, height) / 3)
        arr[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    arr += rng.normal(0.0, 6.0, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``service.server.run`` in a subprocess on 127.0.0.1 and a free port; a context manager.

    The settings travel as ``DELTAGATE_*`` variables (as for uvicorn workers); host and port are
    overridden. The server's log goes to a temporary file, quoted when start-up fails.

    Args:
        settings: service settings.
        ready_timeout_s: how long to wait for ``/readyz``.
    """

    def __init__(self, settings: Settings, ready_timeout_s: float = 300.0) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"host": LOCALHOST, "port": self.port})
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        # The child inherits this environment (PATH, thread variables) plus the service settings.
        env = {**os.environ, **settings_to_env(self.settings)}
        self._log = tempfile.TemporaryFile()
        start = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from service.server import run; run()"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.startup_seconds = round(time.perf_counter() - start, 2)
        logger.info("server ready on %s after %.1f s", self.url, self.startup_seconds)
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:
                    response = client.get("/readyz")
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    return
                if response is not None and response.json().get("status") == "failed":
                    raise RuntimeError(f"server failed to load: {response.json().get('error')}")
                time.sleep(0.2)
        raise TimeoutError(f"server not ready after {self.ready_timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-chars:]

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
            try:
                self._proc.wait(timeout=self.settings.graceful_shutdown_s + 10.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def batch_counters(url: str) -> dict[str, float]:
    """Forward count, image count and forward seconds from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    wanted = {
        "deltagate_batch_size_images_count": "forwards", "deltagate_batch_size_images_sum": "images",
        "deltagate_inference_duration_seconds_sum": "forward_seconds",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


@dataclass(frozen=True)
class LoadResult:
    """What the clients saw during the measured window."""

    concurrency: int
    requests: int  # completed after the warm-up (any status)
    errors: int  # of those: non-200 responses and transport errors
    seconds: float  # the throughput window (whole batch cycles, see run_load)
    requests_per_s: float  # 200s per second in the window (one image each)
    latency: LatencyStats  # of the 200s in the window, client side (send to full response)
    status_counts: dict[str, int]
    mean_all_ms: float  # mean latency of every 200 of the level, warm-up included (pairs with /metrics)

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in {"latency", "status_counts"}}
        row.update({k: v for k, v in asdict(self.latency).items() if k != "n"})
        return row


async def _client_loop(
    client: httpx.AsyncClient, png: bytes, stop_at: float, log: list[tuple[float, float, str]]
) -> None:
    """One closed-loop client: send, wait for the answer, send again, until ``stop_at``."""
    files = {"file": ("bench.png", png, "image/png")}
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        try:
            response = await client.post("/classify", files=files)
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        log.append((t0, time.perf_counter(), outcome))


async def _drive(url: str, png: bytes, concurrency: int, warmup_s: float, seconds: float,
                 timeout_s: float) -> tuple[list[tuple[float, float, str]], float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    log: list[tuple[float, float, str]] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        begin = time.perf_counter() + warmup_s
        end = begin + seconds
        await asyncio.gather(*(_client_loop(client, png, end, log) for _ in range(concurrency)))
    return log, begin, end


def run_load(url: str, png: bytes, concurrency: int, seconds: float, warmup_s: float = 2.0,
             timeout_s: float = 60.0) -> LoadResult:
    """``concurrency`` clients each keep one single-image multipart request in flight.

    Throughput is counted between completions, not over a fixed window: the window runs from the
    burst of completions at or before ``warmup_s`` to the burst at or before ``warmup_s + seconds``,
    and counts the completions after its start. When responses come back in bursts (a batch of 8
    every 1.5 s), a fixed window would catch a varying number of bursts; this one always spans
    whole batch cycles.

    Args:
        url: the server's base URL.
        png: encoded image sent with every request (encoded once, before the clock starts).
        concurrency: number of concurrent clients.
        seconds: measured time after the warm-up.
        warmup_s: unmeasured lead-in (connections, batcher steady state).
        timeout_s: client timeout per request.

    Returns:
        Client-side throughput, latency (of the requests completed in the window) and status counts
        (of every request completed after the warm-up).
    """
    log, begin, end = asyncio.run(_drive(url, png, concurrency, warmup_s, seconds, timeout_s))
    return summarize_load(log, begin, end, concurrency)


BURST_GAP_S = 0.005  # completions closer than this belong to one burst (the rows of one batch)


def _burst_end(done: list[float], t: float) -> float:
    """The last completion of the burst that contains ``t`` (so a window edge never splits a batch)."""
    i = bisect.bisect_right(done, t)
    while i < len(done) and done[i] - done[i - 1] < BURST_GAP_S:
        i += 1
    return done[i - 1] if i else t


def summarize_load(log: list[tuple[float, float, str]], begin: float, end: float, concurrency: int) -> LoadResult:
    """Throughput between completions (see :func:`run_load`), latency and status counts.

    Args:
        log: (start, end, outcome) per request, in ``time.perf_counter()`` seconds; outcome is the
            HTTP status as a string or the transport error's name.
        begin: end of the warm-up.
        end: end of the measured time.
        concurrency: recorded in the result.
    """
    done = sorted(t1 for _, t1, outcome in log if outcome == "200")
    start = _burst_end(done, max((t for t in done if t <= begin), default=begin))
    stop = _burst_end(done, max((t for t in done if t <= end), default=end))
    ok = [t1 - t0 for t0, t1, outcome in log if outcome == "200" and start < t1 <= stop]
    after_warmup = [outcome for _, t1, outcome in log if t1 > begin]
    counts = {o: after_warmup.count(o) for o in sorted(set(after_warmup))}
    elapsed = stop - start
    return LoadResult(
        concurrency=concurrency, requests=len(after_warmup), errors=len(after_warmup) - counts.get("200", 0),
        seconds=round(elapsed, 3), requests_per_s=round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        latency=latency_stats(ok), status_counts=counts,
        mean_all_ms=latency_stats([t1 - t0 for t0, t1, outcome in log if outcome == "200"]).mean_ms,
    )
