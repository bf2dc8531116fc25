"""The Open Inference Protocol route under the attacks of issue 16, and its own: every one a small 4xx at once.

The v2 inference request has what /classify's JSON has (a body to parse, images to count) and more: a JSON
header of a declared length, a declared binary size, length-prefixed elements and a shape. Each is bounded
before anything is built from it: the header's commas and containers (413 / 400, as /classify's JSON), the
shape and the data against max_images_per_request (413, before any base64 is decoded), each element's
length against the bytes that are really there (400), and the body itself by the middleware (413, 408, 503).
"""

from __future__ import annotations

import json
import struct
import time

import pytest

from service.v2_schemas import OUTPUTS
from service.v2_tensors import MAX_V2_CONTAINERS, v2_comma_bound
from tests.service_support import b64, class_image, serve

pytestmark = pytest.mark.hostile

INFER = "/v2/models/dummy/infer"


def header(n: int, size: int) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": size}}]}).encode()


def framed(head: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


CASES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("1M-item data array", b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ['
     + b",".join([b'"AAAA"'] * 1_000_000) + b"]}]}", {}, 413),
    ("100k-deep nesting", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400),
    ("1M outputs", b'{"outputs": [' + b",".join([b'{"name": "label"}'] * 1_000_000) + b"]}", {}, 413),
    ("a shape of 10^18 images", header(10**18, 0), {}, 413),
    ("a header of 1M commas", *framed(b"{" + b"," * 1_000_000 + b"}", b""), 413),
    ("an element claiming 4 GB", *framed(header(1, 8), struct.pack("<I", 2**32 - 1) + b"abcd"), 400),
    ("1M empty elements where 1 is declared", *framed(header(1, 4_000_000), b"\0" * 4_000_000), 400),
    ("a header length of 10^30", header(1, 0), {"Inference-Header-Content-Length": "1" + "0" * 30}, 400),
    ("a number of 5000 digits", json.dumps({"parameters": {"top_k": 1}}).replace("1", "9" * 5000).encode(), {}, 400),
]


@pytest.mark.parametrize(("body", "headers", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_abusive_v2_requests_are_a_small_4xx_at_once(body: bytes, headers: dict[str, str], status: int) -> None:
    async with serve() as (client, app):
        # CPU time of this process (the app runs in it, behind the ASGI client), not wall time: on a shared
        # machine a descheduled test took 2.2 s of wall time for a refusal that costs milliseconds of work.
        start = time.process_time()
        r = await client.post(INFER, content=body, headers={"Content-Type": "application/octet-stream", **headers})
        seconds = time.process_time() - start
        assert r.status_code == status, r.text[:500]
        assert set(r.json()) == {"error"} and len(r.content) < 2048
        assert seconds < 2.0, seconds  # CPU s: a scan of the bytes, never a parse of a million things
        assert app.state.runtime.batcher.depth == 0
        ok = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(class_image(1))]}]}
        assert (await client.post(INFER, json=ok)).status_code == 200


async def test_the_largest_valid_request_passes_the_structure_bounds() -> None:
    """Every image a data: URL, every output asked with every parameter, an id, pretty-printed: within the
    bounds (so they refuse only what no valid request is)."""
    images = [f"data:image/png;base64,{b64(class_image(i % 4))}" for i in range(16)]
    numeric = {"binary_data": False, "classification": 2}
    outputs = [{"name": name, "parameters": numeric if dtype in ("FP32", "INT64") else {"binary_data": False}}
               for name, (dtype, _) in OUTPUTS.items()]
    body = json.dumps({"id": "a,b", "model_name": "dummy", "parameters": {"top_k": 2, "binary_data_output": False},
                       "inputs": [{"name": "image", "shape": [16], "datatype": "BYTES", "data": images}],
                       "outputs": outputs}, indent=2).encode()
    assert body.count(b",") <= v2_comma_bound(16) and body.count(b"[") + body.count(b"{") <= MAX_V2_CONTAINERS
    async with serve() as (client, _):
        r = await client.post(INFER, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text[:500]
        assert [o["name"] for o in r.json()["outputs"]] == list(OUTPUTS)
