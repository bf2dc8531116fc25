"""A closed-loop HTTP load of single-image requests against a server (started with
:mod:`deltagate.server_process`), and the synthetic images it sends."""

from __future__ import annotations

import asyncio
import bisect
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deltagate.bench.report import LatencyStats, latency_stats

__all__ = [
    "synthetic_image", "synthetic_png", "Payload", "LoadResult",
    "run_load", "load_log", "probe_while_full", "ProbeRun", "PROBE_AUTOGROUP_NICE", "summarize_load", "batch_counters",
]

logger = logging.getLogger(__name__)


def synthetic_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image (smooth gradients, a few shapes, mild noise), so decode cost is realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    arr = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200.0  # (H, W, 3)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, min(width, height) / 3)
        arr[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    arr += rng.normal(0.0, 6.0, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def synthetic_png(width: int, height: int, seed: int = 0) -> bytes:
    """:func:`synthetic_image` encoded as PNG."""
    buf = io.BytesIO()
    synthetic_image(width, height, seed).save(buf, "PNG")
    return buf.getvalue()


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


@dataclass(frozen=True)
class Payload:
    """One image a client sends, and the label a correct answer carries (None: not checked)."""

    data: bytes
    filename: str = "bench.png"
    content_type: str = "image/png"
    expected_label: str | None = None
    path: str = "/classify"  # e.g. "/classify?label_set=NAME"
    fields: tuple[tuple[str, str], ...] = ()  # more multipart text fields, e.g. (("labels", "cat"), ...)


MISMATCH = "200-mismatch"  # outcome of a 200 whose label is not the expected one (or is missing)


def response_label(body: Any) -> str | None:
    """The label of a single-image answer: deltagate's ``results[0].label`` or a peer's ``label``."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("results"), list) and body["results"]:
        body = body["results"][0]
    label = body.get("label") if isinstance(body, dict) else None
    return label if isinstance(label, str) else None


def _outcome(response: httpx.Response, payload: Payload) -> str:
    if response.status_code != 200 or payload.expected_label is None:
        return str(response.status_code)
    try:
        label = response_label(response.json())
    except ValueError:
        label = None
    return "200" if label == payload.expected_label else MISMATCH


@dataclass
class _Clock:
    """When the clients stop; set by the controller of :func:`_drive` once the window is complete."""

    stop_at: float = float("inf")


async def _client_loop(client: httpx.AsyncClient, payloads: Sequence[Payload], first: int, clock: _Clock,
                       log: list[tuple[float, float, str]], backoff_503_s: float = 0.0) -> None:
    """One closed-loop client: send, wait for the answer, send again, until ``clock.stop_at``.

    Client ``first`` starts at payload ``first`` and steps through all of them, so concurrent
    clients send different images and a batch mixes them (a swapped answer shows as a mismatch).
    After a 503 it waits ``backoff_503_s`` before the next request.
    """
    i = first
    while time.perf_counter() < clock.stop_at:
        payload = payloads[i % len(payloads)]
        i += 1
        files = {"file": (payload.filename, payload.data, payload.content_type)}
        t0 = time.perf_counter()
        try:
            response = await client.post(payload.path, files=files,
                                         data={k: [v for f, v in payload.fields if f == k]
                                               for k, _ in payload.fields} or None)
            outcome = _outcome(response, payload)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        log.append((t0, time.perf_counter(), outcome))
        if outcome == "503" and backoff_503_s > 0:
            await asyncio.sleep(backoff_503_s)


async def _control(clock: _Clock, log: list[tuple[float, float, str]], concurrency: int, warmup_s: float,
                   seconds: float, timeout_s: float) -> tuple[float, float]:
    """Warm up until ``warmup_s`` passed and ``concurrency`` answers came (the pipeline is full), then
    measure for ``seconds`` and until ``concurrency`` more answers came, so a slow system is never
    judged on an empty window.

    Both waits are bounded by ``timeout_s``, the clients' request timeout: by then every request sent
    has an outcome (an answer or a timeout), so a window never ends merely because answers are slow.
    (A bound of a few times ``seconds`` let a loaded machine end a 0.5 s window before its one c=1
    answer came: an empty window, judged as 0 images/s.)"""
    t0 = time.perf_counter()
    while (time.perf_counter() - t0 < warmup_s or len(log) < concurrency) and time.perf_counter() - t0 < timeout_s:
        await asyncio.sleep(0.005)
    begin, seen = time.perf_counter(), len(log)
    while time.perf_counter() - begin < seconds or (
        len(log) - seen < concurrency and time.perf_counter() - begin < timeout_s
    ):
        await asyncio.sleep(0.005)
    clock.stop_at = end = time.perf_counter()
    return begin, end


async def _drive(url: str, payloads: Sequence[Payload], concurrency: int, warmup_s: float, seconds: float,
                 timeout_s: float) -> tuple[list[tuple[float, float, str]], float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    log: list[tuple[float, float, str]] = []
    clock = _Clock()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        clients = [asyncio.create_task(_client_loop(client, payloads, c, clock, log)) for c in range(concurrency)]
        begin, end = await _control(clock, log, concurrency, warmup_s, seconds, timeout_s)
        await asyncio.gather(*clients)
    return log, begin, end


async def _fill(url: str, payloads: Sequence[Payload], fillers: int, backoff_503_s: float, seconds: float,
                timeout_s: float) -> list[tuple[float, float, str]]:
    limits = httpx.Limits(max_connections=fillers, max_keepalive_connections=fillers)
    log: list[tuple[float, float, str]] = []
    clock = _Clock(stop_at=time.perf_counter() + seconds)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        await asyncio.gather(*(_client_loop(client, payloads, c, clock, log, backoff_503_s) for c in range(fillers)))
    return log


PROBE_AUTOGROUP_NICE = -10  # the probe's session weight where allowed (deltagate.bench.probe: why)


@dataclass(frozen=True)
class ProbeRun:
    """What :func:`probe_while_full` saw: both logs, and the probe's own delay."""

    fill: list[tuple[float, float, str]]  # the fillers' (start, end, outcome)
    probe: list[tuple[float, float, str]]  # the probe's (0, seconds, outcome)
    loop_lag_ms: list[float]  # how late each 1 ms tick of the probe's loop ran
    autogroup_nice: int | None  # the probe session's weight as set, None if it could not be

    def facts(self) -> dict[str, Any]:
        """The probe's own delay for a report: its loop's lag (p99, max) and its session weight."""
        lag = np.asarray(self.loop_lag_ms or [float("nan")])
        return {"probe_loop_lag_p99_ms": round(float(np.percentile(lag, 99)), 2),
                "probe_loop_lag_max_ms": round(float(lag.max()), 2), "probe_autogroup_nice": self.autogroup_nice}


def probe_while_full(url: str, payloads: Sequence[Payload], fillers: int, seconds: float, warmup_s: float = 1.0,
                     backoff_503_s: float = 0.002, interval_s: float = 0.02, timeout_s: float = 60.0,
                     probe_autogroup_nice: int | None = PROBE_AUTOGROUP_NICE) -> ProbeRun:
    """Keep a server's queue full with ``fillers`` closed-loop clients and time a probe's requests.

    The fillers wait ``backoff_503_s`` after each 503 (so the refusals do not turn into a storm),
    which keeps the queue topped up as forwards free it. The probe (:mod:`deltagate.bench.probe`)
    runs in its own process and session, one request every ``interval_s`` after ``warmup_s``, so
    its timings do not wait for the fillers' event loop; its session runs at
    ``probe_autogroup_nice`` where the machine allows (None: left as it is), and it reports its
    own loop's lag, so that a report shows how much of a latency was the probe's.
    """
    payload = payloads[0]
    with tempfile.NamedTemporaryFile(suffix=".img") as image:
        image.write(payload.data)
        image.flush()
        argv = [sys.executable, "-m", "deltagate.bench.probe", url, image.name, "--seconds", str(seconds),
                "--interval", str(interval_s), "--timeout", str(timeout_s), "--delay", str(warmup_s),
                *(["--expect", payload.expected_label] if payload.expected_label else []),
                *(["--autogroup-nice", str(probe_autogroup_nice)] if probe_autogroup_nice is not None else [])]
        # Its own session: where the kernel groups scheduling by session (sched_autogroup, the
        # default of most distributions), a probe in the fillers' session would queue for the CPU
        # behind their event loop, and its timings would be the fillers' rather than the server's.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        # The probe imports and waits warmup_s while the fillers fill the queue; they outlast it by 3 s.
        fill = asyncio.run(_fill(url, payloads, fillers, backoff_503_s, warmup_s + seconds + 3.0, timeout_s))
        out, err = proc.communicate(timeout=timeout_s + seconds)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    result = json.loads(out)
    probe = [(0.0, float(r["seconds"]), str(r["outcome"])) for r in result["requests"]]
    return ProbeRun(fill, probe, [float(x) for x in result["loop_lag_ms"]], result["autogroup_nice"])


def run_load(url: str, payloads: bytes | Sequence[Payload], concurrency: int, seconds: float, warmup_s: float = 2.0,
             timeout_s: float = 60.0) -> LoadResult:
    """``concurrency`` clients each keep one single-image multipart request in flight.

    The warm-up lasts ``warmup_s`` and until ``concurrency`` answers came; the measured window then
    lasts ``seconds`` and until ``concurrency`` more answers came (see :func:`_control`).
    Throughput is counted between completions, not over a fixed window: from the burst of
    completions at or before the window's start to the burst at or before its end, counting the
    completions after its start. When responses come back in bursts (a batch of 8
    every 1.5 s), a fixed window would catch a varying number of bursts; this one always spans
    whole batch cycles.

    Args:
        url: the server's base URL.
        payloads: the images the clients send in turn (encoded once, before the clock starts), or
            one PNG's bytes (sent by every request, label not checked).
        concurrency: number of concurrent clients.
        seconds: measured time after the warm-up.
        warmup_s: unmeasured lead-in (connections, batcher steady state).
        timeout_s: client timeout per request.

    Returns:
        Client-side throughput, latency (of the requests completed in the window) and status counts
        (of every request completed after the warm-up; a 200 with a wrong label counts as
        ``200-mismatch``, an error).
    """
    items = [Payload(payloads)] if isinstance(payloads, bytes) else list(payloads)
    return summarize_load(*load_log(url, items, concurrency, seconds, warmup_s, timeout_s), concurrency)


def load_log(url: str, payloads: Sequence[Payload], concurrency: int, seconds: float, warmup_s: float,
             timeout_s: float) -> tuple[list[tuple[float, float, str]], float, float]:
    """The closed loop of :func:`run_load`, unsummarised.

    Returns:
        (start, end, outcome) per request in ``time.perf_counter()`` seconds, the end of the
        warm-up and the end of the measured time.
    """
    return asyncio.run(_drive(url, payloads, concurrency, warmup_s, seconds, timeout_s))


BURST_GAP_S = 0.005  # completions closer than this belong to one burst (the rows of one batch)


def _burst_end(done: list[float], t: float, concurrency: int) -> float:
    """The last completion of the burst that contains ``t`` (so a window edge never splits a batch).

    A burst holds at most ``concurrency`` completions, one per client: without that cap, a fast
    model at concurrency 1 (answers less than ``BURST_GAP_S`` apart) chained every completion into
    one "burst", the window's start and end fell on the same one and it counted 0 images/s.
    """
    i = bisect.bisect_right(done, t)
    first = i - 1
    while i < len(done) and done[i] - done[i - 1] < BURST_GAP_S and i - first < concurrency:
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
    start = _burst_end(done, max((t for t in done if t <= begin), default=begin), concurrency)
    stop = _burst_end(done, max((t for t in done if t <= end), default=end), concurrency)
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
