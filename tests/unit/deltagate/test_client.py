"""deltagate.client without a server (httpx.MockTransport): image inputs, parts, retries and their bounds."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deltagate import client as client_module
from deltagate.client import (
    AsyncClient,
    Client,
    DeltagateConnectionError,
    DeltagateError,
    RetryPolicy,
    encode_image,
    retry_after_s,
)
from tests.service_support import class_image

pytestmark = pytest.mark.unit

MODEL = {"batching": {"max_images_per_request": 3}}


def answer(request: httpx.Request) -> httpx.Response:
    """A /classify answer with one result per file field of the request (labelled by its filename)."""
    names = [part.split(b'filename="')[1].split(b'"')[0].decode()
             for part in request.content.split(b"Content-Disposition")[1:] if b'name="file"' in part]
    results = [{"index": i, "filename": n, "decision": "accepted", "label": n, "class_index": 0, "confidence": 1.0,
                "top_k": [], "delta_energy": 3.0, "gate_score": 3.0, "threshold": 2.0, "is_ood": False,
                "ood_p_value": 0.5} for i, n in enumerate(names)]
    return httpx.Response(200, json={"model": {"name": "m", "version": "1"}, "request_id": f"r{len(names)}",
                                     "num_images": len(names), "num_rejected_ood": 0, "results": results})


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/model":
            return httpx.Response(200, json=MODEL)
        return handler(request)

    return httpx.MockTransport(record), seen


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


def test_images_of_every_kind_are_encoded(tmp_path: Any) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(class_image(0))
    assert encode_image(path, 0) == ("a.png", class_image(0)) and encode_image(str(path), 0)[0] == "a.png"
    assert encode_image(memoryview(b"xy"), 3) == ("image3", b"xy")
    for image in (Image.new("L", (5, 4)), np.zeros((4, 5), np.uint8), np.zeros((4, 5, 3), np.uint8),
                  np.zeros((4, 5, 4), np.uint8)):
        name, data = encode_image(image, 1)
        assert name == "image1.png" and data.startswith(b"\x89PNG")
    for bad in (np.zeros((4, 5, 3), np.float32), np.zeros((4, 5, 2), np.uint8), 7):
        with pytest.raises(TypeError, match="image 2"):
            encode_image(bad, 2)  # type: ignore[arg-type]


def test_a_long_list_goes_in_parts_of_the_servers_limit_in_order(no_sleep: list[float]) -> None:
    transport, seen = mock(answer)
    with Client("http://svc", transport=transport, api_key="k") as client:
        result = client.classify([b"a", b"b", b"c", b"d", b"e", b"f", b"g"], top_k=2)
    posts = [r for r in seen if r.url.path == "/classify"]
    assert [r.url.params["top_k"] for r in posts] == ["2"] * 3
    assert [r.index for r in result] == list(range(7)) and result.request_ids == ["r3", "r3", "r1"]
    assert [r.filename for r in result] == [f"image{i}" for i in range(7)]
    assert all(r.headers["authorization"] == "Bearer k" for r in seen)
    assert [r.url.path for r in seen].count("/model") == 1 and no_sleep == []


def with_label_set(request: httpx.Request) -> httpx.Response:
    body = answer(request).json()
    return httpx.Response(200, json={**body, "label_set": "ad-hoc", "calibrated": False})


def test_labels_go_as_repeated_form_fields_and_not_with_a_label_set() -> None:
    transport, seen = mock(with_label_set)
    with Client("http://svc", transport=transport, max_images_per_request=8) as client:
        result = client.classify(b"a", labels=["octagon", "hexagon"], prompts="zero-shot")
        assert (result.label_set, result.calibrated) == ("ad-hoc", False)
        with pytest.raises(ValueError, match="not both"):
            client.classify(b"a", labels=["x"], label_set="y")
        with pytest.raises(ValueError, match="no image"):
            client.classify([])
    (post,) = seen
    assert post.content.count(b'name="labels"') == 2 and b"octagon" in post.content
    assert post.url.params["prompts"] == "zero-shot" and "/model" not in [r.url.path for r in seen]
    # A service without label sets ignores the arguments and answers with its own classes: refused here.
    transport, seen = mock(answer)
    with Client("http://svc", transport=transport, max_images_per_request=8) as client:
        with pytest.raises(DeltagateError, match="does not serve label sets") as error:
            client.classify(b"a", label_set="shapes")
    assert error.value.code == "label_sets_unsupported" and seen[0].url.params["label_set"] == "shapes"


def test_503_is_retried_as_long_as_retry_after_says(no_sleep: list[float]) -> None:
    statuses = iter([503, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(statuses)
        return answer(request) if status == 200 else httpx.Response(
            503, headers={"Retry-After": "2"}, json={"error": {"status": 503, "code": "overloaded", "message": "x"}})

    transport, _ = mock(handler)
    retries: list[tuple[int, float, int | None]] = []
    with Client("http://svc", transport=transport, max_images_per_request=4,
                on_retry=lambda n, d, r: retries.append((n, d, r.status_code if r else None))) as client:
        assert client.classify(b"a")[0].label == "image0"
    assert no_sleep == [2.0, 2.0] and retries == [(1, 2.0, 503), (2, 2.0, 503)]


def test_retries_are_bounded_by_attempts_and_total_time(no_sleep: list[float]) -> None:
    busy = {"error": {"status": 503, "code": "overloaded", "message": "busy"}}
    transport, seen = mock(lambda r: httpx.Response(503, json=busy, headers={"x-request-id": "q"}))
    with Client("http://svc", transport=transport, max_images_per_request=4,
                retry=RetryPolicy(attempts=3, backoff_s=1.0, max_backoff_s=1.5)) as client:
        with pytest.raises(DeltagateError) as error:
            client.classify(b"a")
    assert (error.value.status, error.value.code, error.value.attempts, error.value.request_id) == (503, "overloaded",
                                                                                                     3, "q")
    assert len(seen) == 3 and 0.5 <= no_sleep[0] <= 1.0 and 0.75 <= no_sleep[1] <= 1.5  # jittered, doubled, capped
    # A Retry-After past the total time is not waited for: the 503 is raised at once.
    transport, seen = mock(lambda r: httpx.Response(503, json=busy, headers={"Retry-After": "120"}))
    with Client("http://svc", transport=transport, max_images_per_request=4,
                retry=RetryPolicy(total_s=60)) as client, pytest.raises(DeltagateError):
        client.classify(b"a")
    assert len(seen) == 1


def test_connection_errors_are_retried_other_errors_are_not(no_sleep: list[float]) -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            raise httpx.ConnectError("refused", request=request)
        return answer(request)

    transport, _ = mock(flaky)
    with Client("http://svc", transport=transport, max_images_per_request=4) as client:
        assert len(client.classify([b"a", b"b"])) == 2
    assert len(no_sleep) == 2

    transport, _ = mock(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)))
    with Client("http://svc", transport=transport, max_images_per_request=4,
                retry=RetryPolicy(attempts=2)) as client, pytest.raises(DeltagateConnectionError, match="2 attempts"):
        client.classify(b"a")

    bad = {"error": {"status": 400, "code": "invalid_image", "message": "image 1: no", "details": {"index": 1}}}
    transport, seen = mock(lambda r: httpx.Response(400, json=bad))
    with Client("http://svc", transport=transport, max_images_per_request=2) as client:
        with pytest.raises(DeltagateError) as error:
            client.classify([b"a", b"b", b"c", b"d"])
    assert error.value.code == "invalid_image" and error.value.details["index"] == 1 and len(seen) == 1
    transport, _ = mock(lambda r: httpx.Response(400, json=bad) if b"image2" in r.content else answer(r))
    with Client("http://svc", transport=transport, max_images_per_request=2) as client:
        with pytest.raises(DeltagateError) as error:
            client.classify([b"a", b"b", b"c", b"d"])
    assert error.value.details["index"] == 3  # counted in the call's list: the second request's image 1


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "3"})) == 3.0
    assert retry_after_s(httpx.Response(503)) is None and retry_after_s(httpx.Response(503, headers={
        "Retry-After": "soon"})) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_s(httpx.Response(503, headers={"Retry-After": date})) or 0) <= 30
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_the_async_client_sends_parts_concurrently_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)
    first = {"done": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if not first["done"]:
            first["done"] = True
            return httpx.Response(503, headers={"Retry-After": "0.5"}, json={"error": {"code": "overloaded"}})
        return answer(request)

    transport, seen = mock(handler)

    async def run() -> Any:
        async with AsyncClient("http://svc", transport=transport, max_concurrency=2) as client:
            return await client.classify([b"a"] * 7)

    result = asyncio.run(run())
    assert [r.index for r in result] == list(range(7)) and slept == [0.5]
    assert len([r for r in seen if r.url.path == "/classify"]) == 4  # 3 parts + 1 retry
