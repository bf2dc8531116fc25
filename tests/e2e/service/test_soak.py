"""Soak: resident memory stays flat over thousands of requests, maximum-size bodies included.

A real server on the default bundle with a 2 MiB body limit gets a mix of requests from four
client threads: small images, the maximum number of images per request, a body just under the
limit (one large noise PNG, decoded and resized), base64 JSON, and bodies over the limit (413).
The server's VmRSS (from /proc) is read after a warm-up and then every few hundred requests; a
leak of even a few KiB per request would show as a steady climb over the run.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_process import DEFAULT_BUNDLE, rss_kib, serving
from tests.service_support import b64, noise_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~40-130 s on 2 shared cores

BODY_LIMIT = 2 * 1024 * 1024
MAX_IMAGES = 16
WARMUP, ROUNDS, PER_ROUND = 800, 4, 400  # 2400 requests in all; RSS sampled after warm-up and each round
# The allocator's arenas keep growing for the first several hundred requests, by less each round,
# and RSS moves by a few MiB either way as glibc returns memory (docs/operations.md); a leak grows
# without end. So: a lenient bound on the peak over the measured run, and a tight one on how far
# the second half's peak passes the first half's (800 requests apart: 10 KiB per request is 8 MiB).
MAX_GROWTH_MIB, MAX_SECOND_HALF_GROWTH_MIB = 16.0, 8.0


def big_png(limit: int) -> bytes:
    """A noise PNG as close under ``limit`` (minus multipart overhead) as a square allows."""
    side = int(((limit - 4096) / 3) ** 0.5)
    while True:
        arr = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=0)
        if len(buf.getvalue()) <= limit - 4096:
            return buf.getvalue()
        side -= 8


def make_requests() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    big, small = big_png(BODY_LIMIT), noise_image(1, (64, 64))
    json_big = big_png(BODY_LIMIT * 3 // 4 - 8192)  # base64 inflates by 4/3
    many = [("file", (f"{i}.png", noise_image(i, (48, 48)), "image/png")) for i in range(MAX_IMAGES)]
    return [
        ("ok", {"files": [("file", ("s.png", small, "image/png"))]}),
        ("ok", {"files": many}),
        ("ok", {"files": [("file", ("big.png", big, "image/png"))]}),
        ("ok", {"json": {"images": [b64(json_big)]}}),
        ("413", {"content": b"\0" * (BODY_LIMIT + 1), "headers": {"content-type": "application/json"}}),
        ("ok", {"files": [("file", ("s.png", small, "image/png"))]}),
    ]


def test_rss_stays_flat_over_thousands_of_requests(tmp_path: Path) -> None:
    requests = make_requests()
    env = {"DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE), "DELTAGATE_MAX_BODY_BYTES": str(BODY_LIMIT),
           "DELTAGATE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES), "DELTAGATE_LOG_LEVEL": "warning"}
    outcomes: Counter[str] = Counter()
    with serving(tmp_path / "server.log", env) as server, httpx.Client(base_url=server.url, timeout=60) as client:

        def send(i: int) -> str:
            expect, kwargs = requests[i % len(requests)]
            status = client.post("/classify", **kwargs).status_code
            return "ok" if (expect, status) in {("ok", 200), ("413", 413)} else f"{expect}->{status}"

        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            outcomes.update(pool.map(send, range(WARMUP)))
            samples = [rss_kib(server.proc.pid) / 1024]
            for r in range(ROUNDS):
                outcomes.update(pool.map(send, range(WARMUP + r * PER_ROUND, WARMUP + (r + 1) * PER_ROUND)))
                samples.append(rss_kib(server.proc.pid) / 1024)
        seconds = time.monotonic() - start
    print(f"RSS MiB after warm-up and each {PER_ROUND} requests: {[round(s, 1) for s in samples]}; "
          f"{sum(outcomes.values())} requests in {seconds:.1f} s")
    assert outcomes == Counter(ok=WARMUP + ROUNDS * PER_ROUND), outcomes
    assert max(samples) - samples[0] < MAX_GROWTH_MIB, samples
    half = ROUNDS // 2  # samples[:half + 1] and samples[half:] share the middle sample
    assert max(samples[half:]) - max(samples[: half + 1]) < MAX_SECOND_HALF_GROWTH_MIB, samples
