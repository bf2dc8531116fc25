"""JSON bodies that would blow up the parser (issue 16, cases 2 and 6) are bounded 4xx answers.

Before: a 2 MB array of 1M integers became a 115.8 MB 422 after 10 s with a 2.6 GB peak (and
/healthz stalled); 100k-deep nesting was a 500 (RecursionError), a top_k of 5000 digits a 500
(Python's integer-string limit), and so was a multipart top_k of "²" (``"²".isdigit()`` is True,
``int("²")`` raises). Now the structure is bounded before parsing (commas: 413; arrays and
objects: 400), pydantic-core parses with its own number limit, and top_k is one validated type in
every form.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from deltagate.bench.hostile import peak_rss_kib, reset_peak_rss_kib
from service.pipeline import MAX_JSON_CONTAINERS, json_value_bound
from tests.hostile.support_app import dummy_server, post_timed
from tests.service_support import b64, class_image, files, serve

pytestmark = pytest.mark.hostile

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


def million_ints() -> bytes:
    """The issue's case: ~2 MB, a 1M-item array where the images go."""
    return b'{"images": [' + b",".join([b"0"] * 1_000_000) + b"]}"


def deep(levels: int = 100_000) -> bytes:
    return b'{"images": ' + b"[" * levels + b"]" * levels + b"}"


def top_k_json(digits: str) -> bytes:
    return b'{"images": ["%s"], "top_k": %s}' % (b64(class_image(0)).encode(), digits.encode())


CASES: list[tuple[str, bytes, int, str]] = [
    ("1M-item array", million_ints(), 413, "payload_too_large"),
    ("1M-item top-level array", b"[" + b",".join([b"0"] * 1_000_000) + b"]", 413, "payload_too_large"),
    ("1M distinct keys", b"{" + b",".join(b'"k%d":0' % i for i in range(1_000_000)) + b"}", 413,
     "payload_too_large"),
    ("100k-deep arrays", deep(), 400, "invalid_body"),
    ("100k-deep objects", b'{"a":' * 100_000 + b"0" + b"}" * 100_000, 400, "invalid_body"),
    ("top_k of 5000 digits", top_k_json("9" * 5000), 400, "invalid_body"),
    ("top_k of 1e400", top_k_json("1e400"), 422, "invalid_request"),
    ("17 images", json.dumps({"images": [b64(class_image(0))] * 17}).encode(), 413, "payload_too_large"),
    ("not UTF-8", b'{"images": ["\xff\xfe"]}', 400, "invalid_body"),
    ("a top-level number", b"1", 422, "invalid_request"),
    ("images not a list", b'{"images": {"a": "b"}}', 422, "invalid_request"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_abusive_json_is_a_small_4xx_at_once(name: str, body: bytes, status: int, code: str) -> None:
    async with serve() as (client, _):
        start = time.perf_counter()
        r = await client.post("/classify", content=body, headers=JSON)
        seconds = time.perf_counter() - start
        assert r.status_code == status, r.text[:500]
        assert r.json()["error"]["code"] == code and len(r.content) < 2048
        assert seconds < 2.0, seconds  # typical: 10-300 ms, mostly moving the 2-8 MB body (before: 10 s for 2 MB)
        assert (await client.post("/classify", files=files(class_image(1)))).status_code == 200


@pytest.mark.parametrize("value", ["9" * 5000, "²", "1e3", "-1", "many", ""])
async def test_a_bad_top_k_is_422_in_the_form_and_the_query(value: str) -> None:
    async with serve() as (client, _):
        form = await client.post("/classify", files=files(class_image(0)), data={"top_k": value})
        query = await client.post("/classify", files=files(class_image(0)), params={"top_k": value})
        for r, loc in ((form, ["top_k"]), (query, ["query", "top_k"])):
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["loc"] == loc and len(r.content) < 2048


async def test_the_largest_valid_request_passes_the_structure_bounds() -> None:
    # Every image as a data: URL (one comma each), top_k, pretty-printed: the most ',' '[' '{' a valid body has.
    images = [f"data:image/png;base64,{b64(class_image(i % 4))}" for i in range(16)]
    body = json.dumps({"top_k": 2, "images": images}, indent=2).encode()
    assert body.count(b",") <= json_value_bound(16) and body.count(b"[") + body.count(b"{") <= MAX_JSON_CONTAINERS
    async with serve() as (client, _):
        r = await client.post("/classify", content=body, headers=JSON)
        assert r.status_code == 200 and r.json()["num_images"] == 16, r.text[:500]
        assert all(len(result["top_k"]) == 2 for result in r.json()["results"])


def test_against_a_real_server_json_bombs_cost_a_scan_and_health_stays_prompt(tmp_path: Path) -> None:
    bombs = {
        "1M-item array (2 MB)": (million_ints(), 413),
        "32 MB of empty objects": (b'{"images": [' + b",".join([b"{}"] * (10 * MIB)) + b"]}", 413),
        "100k-deep nesting": (deep(), 400),
    }
    with dummy_server(tmp_path / "server.log") as server:
        url = f"{server.url}/classify"
        for name, (body, status) in bombs.items():
            base = reset_peak_rss_kib(server.proc.pid)
            r, seconds = post_timed(url, content=body, headers=JSON)
            grown_mib = (peak_rss_kib(server.proc.pid) - base) / 1024
            assert r.status_code == status and len(r.content) < 2048, (name, r.text[:300])
            # The body itself is held (received, then joined): ~2x its size. Before: +2.6 GB for 2 MB.
            assert grown_mib < 3 * len(body) / MIB + 32, (name, grown_mib)
            assert seconds < 5.0, (name, seconds)  # typical: 0.1-0.3 s to upload 32 MB here

        # /healthz while the array arrives again and again (before: stalls of up to 3.7 s).
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                post_timed(url, content=bombs["1M-item array (2 MB)"][0], headers=JSON)

        attackers = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
        for thread in attackers:
            thread.start()
        health = []
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            for _ in range(20):
                start = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                health.append(time.perf_counter() - start)
                time.sleep(0.05)
        stop.set()
        for thread in attackers:
            thread.join(timeout=30.0)
        assert max(health) < 1.0, health  # typical: a few ms
