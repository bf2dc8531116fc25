"""deltagate.client against live servers: it classifies (paths, bytes, PIL images, arrays; a long list in parts
of the server's max_images_per_request; sync and async) as POST /classify does, and it retries a real 503.

The 503 is made, not hoped for: a server whose one engine instance waits while a file exists
(tests/gated_engine.py) and whose admission budget is 2 images gets one image stuck in a forward and two
queued behind it; the budget is then spent and every new request is answered 503 before its body is read,
until the test removes the file, which it does only once the client has reported a 503 it will retry.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deltagate.client import AsyncClient, Client, DeltagateError, RetryPolicy
from tests.gated_engine import GATE_ENV, GATED_SERVE
from tests.server_process import DEFAULT_BUNDLE, REPO, ServerProcess, _port_range, serving
from tests.service_support import SHAPES, drawn_shape

pytestmark = pytest.mark.e2e

IMAGES = [drawn_shape(kind) for kind in SHAPES]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # float32 ONNX: batch composition changes its ΔEnergy by rounding only (the int8 graph's activation
    # scales follow the batch), so answers in parts compare with answers in one request.
    env = {"DELTAGATE_LOG_LEVEL": "warning", "DELTAGATE_ENGINE": "onnx", "DELTAGATE_MAX_IMAGES_PER_REQUEST": "4",
           "DELTAGATE_ADMIN_KEY": "k", "DELTAGATE_LABEL_SETS_DIR": str(tmp_path_factory.mktemp("sets"))}
    with serving(tmp_path_factory.mktemp("client") / "server.log", env) as running:
        yield running


def one_request(server: ServerProcess, images: list[bytes]) -> list[dict[str, Any]]:
    r = httpx.post(f"{server.url}/classify", files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)],
                   timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def mixed_inputs(tmp_path: Path) -> list[Any]:
    """The same six images as a path, bytes, a PIL image, an RGB array, a greyscale-free RGBA array, bytes."""
    path = tmp_path / "circle.png"
    path.write_bytes(IMAGES[0])
    pil = Image.open(io.BytesIO(IMAGES[1]))
    rgb = np.asarray(Image.open(io.BytesIO(IMAGES[2])).convert("RGB"))
    rgba = np.asarray(Image.open(io.BytesIO(IMAGES[3])).convert("RGBA"))
    return [path, IMAGES[0], pil, rgb, rgba, IMAGES[5]]


def test_the_client_classifies_in_parts_as_classify_does(server: ServerProcess, tmp_path: Path) -> None:
    inputs = mixed_inputs(tmp_path) * 2  # 12 images: 3 requests of at most 4 (the server's limit)
    reference = one_request(server, IMAGES[:4]) + one_request(server, IMAGES[4:])
    by_image = dict(zip([0, 0, 1, 2, 3, 5], [reference[i] for i in (0, 0, 1, 2, 3, 5)], strict=True))
    expected = [by_image[i] for i in [0, 0, 1, 2, 3, 5] * 2]
    with Client(server.url, timeout=30) as client:
        answer = client.classify(inputs, top_k=2)
    assert len(answer) == 12 and len(answer.request_ids) == 3 and len(set(answer.request_ids)) == 3
    assert [r.index for r in answer] == list(range(12)) and answer.errors == []
    assert answer.model.name == "deltagate-default" and answer.label_set is None and answer.calibrated
    assert answer[0].filename == "circle.png" and len(answer[0].top_k) == 2
    for got, want in zip(answer, expected, strict=True):
        assert (got.label, got.is_ood) == (want["label"], want["is_ood"])
        assert got.delta_energy == pytest.approx(want["delta_energy"], abs=1e-4)


def test_the_client_passes_label_sets(server: ServerProcess) -> None:
    """Ad-hoc labels and a named set (made by PUT, no examples) through the client, in parts of 4 images, as
    /classify answers them in one request each."""
    shapes = ["octagon", "pentagon", "hexagon"]
    put = httpx.put(f"{server.url}/label-sets/client-shapes", files=[("labels", (None, s)) for s in SHAPES[:4]],
                    headers={"Authorization": "Bearer k"}, timeout=60)
    assert put.status_code in (200, 201), put.text
    with Client(server.url, timeout=30) as client:
        ad_hoc = client.classify(IMAGES, labels=shapes, prompts="zero-shot")
        named = client.classify(IMAGES, label_set="client-shapes")
    for answer, fields, query, set_name in (
        (ad_hoc, {"labels": shapes, "prompts": "zero-shot"}, "", "ad-hoc"),
        (named, None, "?label_set=client-shapes", "client-shapes"),
    ):
        expected = [r for part in (IMAGES[:4], IMAGES[4:]) for r in httpx.post(
            f"{server.url}/classify{query}", files=[("file", im) for im in part], data=fields,
            timeout=30).json()["results"]]
        assert (answer.label_set, answer.calibrated, len(answer.request_ids)) == (set_name, False, 2)
        assert [(r.label, r.is_ood) for r in answer] == [(r["label"], r["is_ood"]) for r in expected]
        assert [r.delta_energy for r in answer] == pytest.approx([r["delta_energy"] for r in expected], abs=1e-4)


def test_the_async_client_and_on_error(server: ServerProcess) -> None:
    async def run() -> tuple[Any, Any, DeltagateError]:
        async with AsyncClient(server.url, timeout=30, max_concurrency=2) as client:
            answer = await client.classify(IMAGES * 2)
            skipped = await client.classify([*IMAGES[:5], b"not an image", IMAGES[0]], on_error="skip")
            with pytest.raises(DeltagateError) as failed:
                await client.classify([*IMAGES[:5], b"not an image"])
            return answer, skipped, failed.value

    answer, skipped, failed = asyncio.run(run())
    assert [r.label for r in answer] == [r["label"] for r in one_request(server, IMAGES[:4])
                                         + one_request(server, IMAGES[4:])] * 2
    assert [r.index for r in answer] == list(range(12)) and len(answer.request_ids) == 3
    assert [r.index for r in skipped] == [0, 1, 2, 3, 4, 6]
    assert [(e.index, e.code) for e in skipped.errors] == [(5, "invalid_image")]
    assert failed.status == 400 and failed.code == "invalid_image" and failed.details["index"] == 5  # the call's


@pytest.fixture
def gated_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A server whose forwards wait while ``gate`` exists; one instance, batches of 1, a budget of 2 images."""
    gate = tmp_path / "gate"
    env = {"PYTHONPATH": str(REPO), "DELTAGATE_BUNDLE_PATH": str(DEFAULT_BUNDLE), "DELTAGATE_ENGINE": "onnx",
           "DELTAGATE_HOST": "127.0.0.1", "DELTAGATE_PORT": "{port}", "DELTAGATE_LOG_LEVEL": "warning",
           "DELTAGATE_INSTANCES": "1", "DELTAGATE_MAX_BATCH_SIZE": "1", "DELTAGATE_MAX_QUEUE_SIZE": "2",
           "DELTAGATE_MAX_IMAGES_PER_REQUEST": "2", "DELTAGATE_RETRY_AFTER_S": "1", GATE_ENV: str(gate)}
    argv = [sys.executable, "-c", GATED_SERVE, "serve"]
    with ServerProcess("gated deltagate", argv, env, cwd=REPO, port_range=_port_range(),
                       log_path=tmp_path / "server.log", ready_timeout_s=120) as running:
        yield running, gate
        gate.unlink(missing_ok=True)


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("deltagate_queue_depth_images "))
    return float(line.split()[1])


def test_the_client_retries_a_503_honouring_retry_after(gated_server: tuple[ServerProcess, Path]) -> None:
    server, gate = gated_server
    gate.touch()  # from now on every forward waits
    held: list[int] = []

    def occupy(images: list[bytes]) -> None:
        held.append(httpx.post(f"{server.url}/classify", files=[("file", im) for im in images], timeout=60).status_code)

    in_forward = threading.Thread(target=occupy, args=([IMAGES[0]],))
    in_forward.start()
    deadline = time.monotonic() + 30
    while not Path(f"{gate}.held").exists():  # its image is in the (waiting) forward, out of the budget
        assert time.monotonic() < deadline, "the forward never started"
        time.sleep(0.01)
    queued = threading.Thread(target=occupy, args=([IMAGES[1], IMAGES[2]],))
    queued.start()
    while queue_depth(server.url) < 2:  # the budget (2) is spent: the next request is refused at once
        assert time.monotonic() < deadline, "the queue never filled"
        time.sleep(0.01)
    assert httpx.post(f"{server.url}/classify", files=[("file", IMAGES[3])], timeout=10).status_code == 503

    retries: list[tuple[int, float, int | None]] = []

    def on_retry(attempt: int, delay: float, response: httpx.Response | None) -> None:
        retries.append((attempt, delay, response.status_code if response is not None else None))
        gate.unlink(missing_ok=True)  # only now may the queue drain

    started = time.monotonic()
    with Client(server.url, timeout=30, retry=RetryPolicy(attempts=4, total_s=30), on_retry=on_retry) as client:
        answer = client.classify(IMAGES[3])
    waited = time.monotonic() - started
    in_forward.join(60)
    queued.join(60)
    assert retries[0] == (1, 1.0, 503)  # the server's Retry-After: 1, honoured as it was given
    assert waited >= 1.0 and answer[0].label == "star" and not answer[0].is_ood
    assert held == [200, 200]  # the requests that held the budget were answered too

