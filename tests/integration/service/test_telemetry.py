"""Metrics appear and count; one JSON-able log line per request without secrets or image bytes."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service_support import b64, class_image, dummy_settings, files, serve, uniform_image

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_metrics_appear_and_count() -> None:
    async with serve(dummy_settings(warmup=False)) as (client, _):
        before = samples((await client.get("/metrics")).text)
        assert before[("deltagate_ready", ())] == 1.0
        assert before[("deltagate_ood_flags_total", (("label_set", "bundle"), ("predicted_class", "class_0")))] == 0.0
        await client.post("/classify", files=files(class_image(1), uniform_image()))
        await client.post("/classify", files=files(b"not an image"))
        await client.post("/classify", content=b"{}", headers={"content-length": str(10**9),
                                                               "content-type": "application/json"})
        r = await client.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        m = samples(r.text)
    ok = (("method", "POST"), ("route", "/classify"), ("status", "200"))
    bad = (("method", "POST"), ("route", "/classify"), ("status", "400"))
    assert m[("deltagate_http_requests_total", ok)] == 1.0 and m[("deltagate_http_requests_total", bad)] == 1.0
    assert m[("deltagate_http_request_duration_seconds_count", ok)] == 1.0
    early = (("method", "POST"), ("route", "/classify"), ("status", "413"))  # refused before routing
    assert m[("deltagate_http_requests_total", early)] == 1.0
    assert m[("deltagate_images_classified_total", (("label_set", "bundle"), ("predicted_class", "class_1")))] == 1.0
    assert sum(v for (n, _), v in m.items() if n == "deltagate_ood_flags_total") == 1.0
    assert m[("deltagate_gate_score_count", ())] == 2.0
    assert not any(n.startswith("deltagate_delta_energy") for n, _ in m)  # the default gate: ΔEnergy is the gate score
    assert m[("deltagate_batch_size_images_count", ())] >= 1.0 and m[("deltagate_batch_size_images_sum", ())] == 2.0
    assert m[("deltagate_inference_duration_seconds_count", ())] >= 1.0
    assert m[("deltagate_queue_depth_images", ())] == 0.0
    info = next(labels for (n, labels), _ in m.items() if n == "deltagate_model_info")
    assert dict(info)["engine"] == "dummy" and dict(info)["version"] == "0"


async def test_one_log_line_per_request_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    image = class_image(2)
    async with serve(dummy_settings(api_key="topsecret-key")) as (client, _):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="deltagate.access"):
            r = await client.post("/classify", json={"images": [b64(image)]},
                                  headers={"Authorization": "Bearer topsecret-key", "X-Request-ID": "req-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    lines = [rec for rec in caplog.records if rec.name == "deltagate.access"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "req-42" and fields["status"] == 200 and fields["route"] == "/classify"
    assert fields["labels"] == ["class_2"] and fields["is_ood"] == [False] and fields["batch_sizes"] == [1]
    assert fields["latency_ms"] > 0
    everything = caplog.text + repr([rec.__dict__ for rec in caplog.records])
    assert "topsecret-key" not in everything and b64(image)[:40] not in everything
