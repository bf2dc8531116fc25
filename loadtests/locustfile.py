"""Locust load test for ``POST /classify`` (multipart and JSON-base64), with response checks.

Headless, bounded run against a local server (see loadtests/README.md)::

    locust -f loadtests/locustfile.py --headless -u 8 -r 4 --run-time 20s \
        --host http://127.0.0.1:8000 --csv results/loadtest/run

Images are generated PNGs (random noise and class-like stripes, several sizes), encoded once per
user, so the client spends its time sending rather than encoding. A response counts as a
failure unless it is 200 and well-formed: one result per image with a label, a finite ΔEnergy,
an OOD flag consistent with the threshold, and a decision matching the flag. 503 (overload) is
reported as its own failure name so it can be told apart from wrong answers.

Only hosts on this machine are accepted unless ``--allow-remote`` is given: a load test is a
denial of service to whoever did not ask for it.
"""

from __future__ import annotations

import base64
import io
import math
import random
from typing import Any
from urllib.parse import urlparse

import numpy as np
from locust import HttpUser, between, events, task
from locust.env import Environment
from PIL import Image

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
IMAGE_SIZES = ((64, 64), (224, 224), (320, 240))  # (H, W): small, the model's size, a photo-ish shape


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--allow-remote", action="store_true", default=False,
                        help="Allow a --host that is not this machine (127.0.0.1/localhost).")
    parser.add_argument("--images-per-request", type=int, default=1, env_var="DELTAGATE_LOADTEST_IMAGES",
                        help="Images in each multipart request (the JSON task always sends one).")


@events.test_start.add_listener
def _refuse_remote_hosts(environment: Environment, **_kwargs: Any) -> None:
    host = urlparse(environment.host or "").hostname or ""
    options = environment.parsed_options
    if host not in LOCAL_HOSTS and not (options is not None and options.allow_remote):
        raise SystemExit(f"refusing to load-test {environment.host!r}: not this machine (use --allow-remote)")


def generate_png(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """A PNG of noise or of a bright vertical strip (what the dummy engine reads as a class)."""
    h, w = size
    if rng.random() < 0.5:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.zeros((h, w, 3), np.uint8)
        start = int(rng.integers(0, w - w // 4))
        arr[:, start : start + w // 4] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def check_classification(body: dict[str, Any], expected_images: int) -> str | None:
    """What is wrong with a /classify response body, or None if it is well-formed."""
    results = body.get("results")
    if body.get("num_images") != expected_images or not isinstance(results, list) or len(results) != expected_images:
        return f"expected {expected_images} results, got num_images={body.get('num_images')}"
    for i, r in enumerate(results):
        missing = {"label", "delta_energy", "threshold", "is_ood", "decision", "top_k"} - set(r)
        if missing:
            return f"result {i} lacks {sorted(missing)}"
        if r["index"] != i or not math.isfinite(r["delta_energy"]):
            return f"result {i}: bad index or ΔEnergy {r['delta_energy']}"
        if r["is_ood"] != (r["delta_energy"] < r["threshold"]):
            return f"result {i}: is_ood disagrees with ΔEnergy < threshold"
        if r["decision"] != ("rejected_ood" if r["is_ood"] else "accepted"):
            return f"result {i}: decision {r['decision']!r} disagrees with is_ood"
    return None


class ClassifyUser(HttpUser):
    """One client sending images to /classify, mostly as multipart uploads, sometimes as JSON."""

    host = "http://127.0.0.1:8000"
    wait_time = between(0.0, 0.05)  # near closed-loop: each user keeps about one request in flight

    def on_start(self) -> None:
        rng = np.random.default_rng(random.randrange(2**32))
        self.pngs = [generate_png(rng, IMAGE_SIZES[i % len(IMAGE_SIZES)]) for i in range(12)]
        self.b64 = [base64.b64encode(png).decode() for png in self.pngs]
        options = self.environment.parsed_options
        self.per_request = max(1, options.images_per_request if options is not None else 1)

    def _post(self, name: str, expected_images: int, **kwargs: Any) -> None:
        with self.client.post("/classify", name=name, catch_response=True, **kwargs) as response:
            if response.status_code == 503:
                response.failure(f"503 {response.headers.get('Retry-After', '')}s: overloaded or not ready")
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            problem = check_classification(response.json(), expected_images)
            if problem is not None:
                response.failure(problem)
            else:
                response.success()

    @task(3)
    def classify_multipart(self) -> None:
        picks = [random.randrange(len(self.pngs)) for _ in range(self.per_request)]
        files = [("file", (f"img{i}.png", self.pngs[i], "image/png")) for i in picks]
        self._post("/classify [multipart]", len(picks), files=files)

    @task(1)
    def classify_json(self) -> None:
        i = random.randrange(len(self.b64))
        self._post("/classify [json]", 1, json={"images": [self.b64[i]], "top_k": 3})
