"""Slow request bodies cannot starve /classify (issue 16, case 3: the request level).

Before, an admitted request held its slot of the in-flight budget while its body trickled in and no
timeout ended the read: 260-300 connections sending 1 byte/s left 2% of normal requests answered.
Now a body is received with no slot held (admission comes once it is in), the whole body must
arrive within ``body_read_timeout_s`` (408, connection closed), and the bytes of bodies held at
once are bounded (``max_body_bytes_in_flight``, 503).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deltagate.bench.hostile import SlowSender
from tests.hostile.support_app import dummy_server
from tests.service_support import asgi_scope, class_image, dummy_settings, files, serve

pytestmark = pytest.mark.hostile


def gauge(metrics_text: str, name: str) -> float:
    """The value of an unlabelled gauge in a Prometheus exposition."""
    return next(float(line.split()[-1]) for line in metrics_text.splitlines() if line.startswith(f"{name} "))


def test_slow_senders_hold_no_admission_slot_get_408_and_classify_keeps_serving(tmp_path: Path) -> None:
    budget, timeout_s, attackers = 8, 4.0, 24  # three times as many slow bodies as the whole budget
    with dummy_server(tmp_path / "server.log", max_batch_size=4, max_queue_size=budget, max_images_per_request=4,
                      body_read_timeout_s=timeout_s) as server:
        senders = [SlowSender(server.url) for _ in range(attackers)]
        done = threading.Event()

        def trickle() -> None:  # 4 bytes/s each, far from their declared 10,000 bytes
            while not done.is_set() and any(s.answered_after is None for s in senders):
                for sender in senders:
                    sender.tick()
                time.sleep(0.25)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        statuses, depths, during = [], [], 0
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            end = time.monotonic() + timeout_s / 2  # while every slow body is still arriving
            while time.monotonic() < end:
                statuses.append(client.post("/classify", files=files(class_image(1))).status_code)
                depths.append(gauge(client.get("/metrics").text, "deltagate_queue_depth_images"))
                during += all(s.answered_after is None for s in senders)  # the attack was on throughout
            thread.join(timeout=timeout_s + 10.0)
            done.set()
            deadline = time.monotonic() + 5.0
            while not all(s.closed for s in senders) and time.monotonic() < deadline:
                for sender in senders:
                    sender.poll()
                time.sleep(0.05)
            after = client.post("/classify", files=files(class_image(2)))
            depth_after = gauge(client.get("/metrics").text, "deltagate_queue_depth_images")
        for sender in senders:
            sender.close()
        # Normal traffic was never refused, and the slow bodies held none of the image budget.
        assert during >= 3 and set(statuses) == {200}, (during, statuses)
        assert set(depths) == {0.0}
        # Every slow sender got 408 near the deadline, and its connection was closed.
        for sender in senders:
            assert sender.status == 408, sender.answer[:300]
            assert sender.error["error"]["code"] == "body_timeout"
            assert b"connection: close" in sender.answer.lower()
            assert sender.answered_after is not None and timeout_s - 0.5 <= sender.answered_after <= timeout_s + 3.0
            assert sender.closed
        assert after.status_code == 200 and depth_after == 0.0
        logged = [line for line in server.log_lines() if line.get("status") == 408]
        assert len(logged) == attackers and {line["route"] for line in logged} == {"/classify"}


class Body:
    """An ASGI ``receive`` for one request: the given chunks, then either the end, a stall or a disconnect."""

    def __init__(self, chunks: list[bytes], then: str = "end") -> None:
        self.chunks, self.then = list(chunks), then

    async def __call__(self) -> dict[str, Any]:
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.then != "end"}
        if self.then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a stalled body (and, after an answer, a client that stays)
        raise AssertionError("unreachable")


async def asgi_call(app: FastAPI, receive: Body, content_type: str = "application/json") -> tuple[int, dict[str, str]]:
    """Run one POST /classify through the app with ``receive``; the status and headers it answered."""
    request = httpx.Request("POST", "http://t/classify", headers={"content-type": content_type})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(asgi_scope(request), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


async def test_bodies_in_memory_are_bounded_and_a_stalled_body_frees_its_bytes() -> None:
    kib = 1024
    settings = dummy_settings(max_body_bytes=64 * kib, max_body_bytes_in_flight=128 * kib, body_read_timeout_s=1.0)
    async with serve(settings) as (client, app):
        budget = app.state.body_budget
        chunk = b" " * (60 * kib)
        stalled = [asyncio.ensure_future(asgi_call(app, Body([chunk], then="stall"))) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert budget.held == 2 * len(chunk)  # two stalled bodies hold what they sent, nothing declared
        assert gauge((await client.get("/metrics")).text, "deltagate_request_body_bytes") == budget.held
        status, headers = await asgi_call(app, Body([chunk, b"{}"]))  # would pass 128 KiB
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        for status, headers in await asyncio.gather(*stalled):  # the stalled ones end at their deadline
            assert status == 408 and headers["connection"] == "close"
        assert budget.held == 0
        assert (await client.post("/classify", files=files(class_image(0)))).status_code == 200
        assert budget.held == 0  # released when the request ends
        assert gauge((await client.get("/metrics")).text, "deltagate_request_body_bytes") == 0


async def test_a_body_that_arrives_in_time_is_answered_however_it_is_split() -> None:
    async with serve(dummy_settings(body_read_timeout_s=1.0)) as (_, app):
        request = httpx.Request("POST", "http://t/classify", files=files(class_image(3)))
        body = request.read()
        pieces = [body[i:i + 97] for i in range(0, len(body), 97)]  # many small chunks, well within the deadline
        status, _ = await asgi_call(app, Body(pieces), request.headers["content-type"])
        assert status == 200


async def test_a_client_that_leaves_mid_body_is_499_and_frees_its_bytes() -> None:
    async with serve(dummy_settings()) as (_, app):
        status, _ = await asgi_call(app, Body([b'{"images": ["'], then="disconnect"))
        assert status == 499 and app.state.body_budget.held == 0
        form = httpx.Request("POST", "http://t/classify", files=files(class_image(0)))
        status, _ = await asgi_call(app, Body([form.read()[:50]], then="disconnect"), form.headers["content-type"])
        assert status == 499 and app.state.body_budget.held == 0


def test_the_body_budget_must_hold_one_largest_body() -> None:
    with pytest.raises(ValueError, match="a body of the largest size could never be received"):
        dummy_settings(max_body_bytes=64 * 1024, max_body_bytes_in_flight=32 * 1024)
