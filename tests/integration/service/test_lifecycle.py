"""Readiness, overload, deadlines, failing forwards, client disconnects and graceful shutdown."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.service_support import (
    TestEngine,
    asgi_scope,
    class_image,
    dummy_settings,
    engines_of,
    files,
    running,
    serve,
    uniform_image,
    until,
)

pytestmark = pytest.mark.integration


def engine_of(app) -> TestEngine:  # type: ignore[no-untyped-def]
    (engine,) = engines_of(app)
    return engine



async def test_readiness_is_503_before_warm_up_and_200_after() -> None:
    app = create_app(dummy_settings())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:  # not started yet
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = await client.post("/classify", files=files(class_image(0)))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "not_ready"
        assert (await client.get("/model")).status_code == 503
    async with running(app) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready", "error": None}
        # warm-up ran one forward per batch-size bucket before readiness
        assert engine_of(app).batch_sizes == dummy_settings().batch_buckets()


async def test_load_failure_keeps_the_service_unready_and_fails_liveness(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(dummy_settings(engine="torch", bundle_path=tmp_path / "missing"))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "missing" in r.json()["error"]
        assert (await client.get("/healthz")).status_code == 503
        assert (await client.post("/classify", files=files(class_image(0)))).status_code == 503


async def test_overload_is_answered_at_once_with_503_and_retry_after() -> None:
    settings = dummy_settings(max_batch_size=1, max_queue_size=1, max_images_per_request=1, max_wait_ms=0.0,
                              warmup=False, retry_after_s=3)
    async with serve(settings) as (client, app):
        engine = engine_of(app)
        engine.gate = threading.Event()
        first = asyncio.ensure_future(client.post("/classify", files=files(class_image(0))))
        await until(lambda: engine.forward_count == 1)  # first request is in the (blocked) forward
        second = asyncio.ensure_future(client.post("/classify", files=files(class_image(1))))
        await until(lambda: app.state.runtime.batcher.depth == 1)  # second fills the queue
        r = await client.post("/classify", files=files(class_image(2)))
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "overloaded"
        engine.gate.set()
        assert [x.status_code for x in await asyncio.gather(first, second)] == [200, 200]
        assert (await client.post("/classify", files=files(class_image(3)))).status_code == 200


async def test_request_past_its_deadline_gets_504_and_the_service_recovers() -> None:
    settings = dummy_settings(max_batch_size=1, max_wait_ms=0.0, request_timeout_s=0.3, warmup=False)
    async with serve(settings) as (client, app):
        engine = engine_of(app)
        engine.gate = threading.Event()
        r = await client.post("/classify", files=files(class_image(0)))
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        engine.gate.set()
        assert (await client.post("/classify", files=files(class_image(0)))).status_code == 200


async def test_failing_forward_fails_only_its_batch() -> None:
    # Forwards that contain a flat (uniform) image fail; batches of one keep the requests apart.
    settings = dummy_settings(max_batch_size=1, max_wait_ms=0.0, warmup=False)
    async with serve(settings) as (client, app):
        engine_of(app).fail_with = lambda x: RuntimeError("CUDA OOM") if np.ptp(x[:, 0]) == 0 else None
        bad, good = await asyncio.gather(client.post("/classify", files=files(uniform_image())),
                                         client.post("/classify", files=files(class_image(1))))
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "inference_failed"
        assert "CUDA OOM" not in bad.text  # no internals to the client
        assert good.status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_disconnected_client_is_dropped_before_it_reaches_a_batch() -> None:
    settings = dummy_settings(max_batch_size=4, max_wait_ms=0.0, warmup=False)
    async with serve(settings) as (client, app):
        engine = engine_of(app)
        engine.gate = threading.Event()
        first = asyncio.ensure_future(client.post("/classify", files=files(class_image(0))))
        await until(lambda: engine.forward_count == 1)
        status = await asyncio.wait_for(_post_then_disconnect(app, class_image(1)), 10.0)
        assert status == 499  # the handler noticed the disconnect and gave up
        engine.gate.set()
        assert (await first).status_code == 200
        assert (await client.post("/classify", files=files(class_image(2)))).status_code == 200
        assert engine.batch_sizes == [1, 1]  # the disconnected request's image never ran


async def _post_then_disconnect(app, image: bytes) -> int:  # type: ignore[no-untyped-def]
    """Call the ASGI app directly: send a multipart body, then report the client as gone."""
    request = httpx.Request("POST", "http://t/classify", files=files(image))
    body = request.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []
    disconnect = asyncio.Event()

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)  # the request is queued by now
        disconnect.set()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(asgi_scope(request), receive, send)
    assert disconnect.is_set()
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def test_graceful_shutdown_finishes_in_flight_requests() -> None:
    settings = dummy_settings(max_batch_size=1, max_wait_ms=0.0, warmup=False)
    app = create_app(settings)
    async with running(app) as client:
        engine = engine_of(app)
        engine.gate = threading.Event()
        in_flight = [asyncio.ensure_future(client.post("/classify", files=files(class_image(i)))) for i in (0, 1)]
        await until(lambda: engine.forward_count == 1 and app.state.runtime.batcher.depth == 1)
        stopping = asyncio.ensure_future(app.state.runtime.stop())
        await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).json()["status"] == "stopping"
        r = await client.post("/classify", files=files(class_image(2)))
        assert r.status_code == 503  # no new work while stopping
        engine.gate.set()
        await stopping
        assert [x.status_code for x in await asyncio.gather(*in_flight)] == [200, 200]


async def test_shutdown_past_its_drain_time_closes_the_engine_only_after_the_forward_ends() -> None:
    settings = dummy_settings(max_batch_size=1, max_wait_ms=0.0, warmup=False, graceful_shutdown_s=0.05)
    app = create_app(settings)
    async with running(app) as client:
        engine = engine_of(app)
        engine.gate = threading.Event()
        in_flight = asyncio.ensure_future(client.post("/classify", files=files(class_image(0))))
        await until(lambda: engine.forward_count == 1)
        stopping = asyncio.ensure_future(app.state.runtime.stop())
        r = await asyncio.wait_for(in_flight, 10.0)  # past the drain time the request is answered ...
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        await asyncio.sleep(0.1)
        assert not stopping.done() and "close" not in engine.events  # ... but the engine stays open
        engine.gate.set()
        await asyncio.wait_for(stopping, 10.0)
        assert list(engine.events)[-2:] == ["forward-end", "close"]


async def test_several_instances_share_the_load_and_each_is_described() -> None:
    settings = dummy_settings(instances=2, intra_op_threads=1, max_batch_size=2, max_wait_ms=0.0, warmup=True)
    async with serve(settings) as (client, app):
        a, b = engines_of(app)
        assert a is not b and a.batch_sizes == b.batch_sizes == settings.batch_buckets()  # each warmed up
        a.gate = threading.Event()
        blocked = asyncio.ensure_future(client.post("/classify", files=files(class_image(0))))
        await until(lambda: a.forward_count == len(settings.batch_buckets()) + 1)
        r = await client.post("/classify", files=files(class_image(1)))  # instance 1 serves while 0 is busy
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "class_1"
        a.gate.set()
        assert (await blocked).status_code == 200
        info = (await client.get("/model")).json()
        assert len(info["instances"]) == 2 and info["batching"]["instances"] == 2
        assert all(i["device"] == "cpu" and i["intra_op_threads"] == "1" for i in info["instances"])
        metrics = (await client.get("/metrics")).text
        assert 'instances="2"' in metrics and 'providers="numpy"' in metrics


async def test_device_cuda_without_cuda_fails_the_start_with_a_clear_error(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA present")
    app = create_app(dummy_settings(engine="onnx", bundle_path=tiny_bundle, device="cuda"))
    async with running(app) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "cuda" in r.json()["error"]
