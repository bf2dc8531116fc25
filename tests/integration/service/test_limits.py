"""Every bad input gets its status and a JSON error body saying what was wrong; the service keeps answering."""

from __future__ import annotations

import struct
import zlib

import httpx
import numpy as np
import pytest

from deltagate.bench.hostile import PNG_SIGNATURE, png_chunk
from tests.service_support import b64, class_image, dummy_settings, encode, files, serve

pytestmark = pytest.mark.integration

LIMITS = {"max_body_bytes": 64 * 1024, "max_image_pixels": 100_000, "max_images_per_request": 3}


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def ppm() -> bytes:
    return encode(np.zeros((8, 8, 3), np.uint8), "PPM")


async def chunked(data: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), 8192):  # no Content-Length: the limit must count the stream
        yield data[i : i + 8192]


CASES: list[tuple[str, dict[str, object], int, str]] = [
    ("not an image", {"files": files(b"hello, this is text")}, 400, "invalid_image"),
    ("empty file", {"files": files(b"")}, 400, "invalid_image"),
    ("truncated png", {"files": files(class_image(1, size=256)[:300])}, 400, "invalid_image"),
    ("unsupported format", {"files": files(ppm())}, 400, "invalid_image"),
    ("malformed json", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "invalid_body"),
    ("too many pixels", {"files": files(class_image(0, size=400))}, 413, "payload_too_large"),
    ("decompression bomb header", {"files": files(png_claiming(30_000, 30_000))}, 413, "payload_too_large"),
    ("body over limit", {"files": files(b"\0" * 100_000)}, 413, "payload_too_large"),
    ("chunked body over limit", {"content": chunked(b"x" * 200_000), "headers": {"content-type": "application/json"}},
     413, "payload_too_large"),
    ("too many images", {"files": files(*[class_image(0)] * 4)}, 413, "payload_too_large"),
    ("wrong content type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("no content type", {"content": b"abc"}, 415, "unsupported_media_type"),
    ("bad base64", {"json": {"images": ["%%%"]}}, 422, "invalid_request"),
    ("image url", {"json": {"images": ["http://169.254.169.254/latest/meta-data"]}}, 422, "invalid_request"),
    ("no images json", {"json": {"images": []}}, 422, "invalid_request"),
    ("unknown json field", {"json": {"images": [b64(class_image(0))], "urls": ["x"]}}, 422, "invalid_request"),
    ("top_k zero in json", {"json": {"images": [b64(class_image(0))], "top_k": 0}}, 422, "invalid_request"),
    ("top_k not a number in form", {"files": files(class_image(0)), "data": {"top_k": "many"}}, 422,
     "invalid_request"),
    ("file as text field", {"data": {"file": "abc"}, "files": [("other", ("a", b"x", "text/plain"))]}, 422,
     "invalid_request"),
    ("no file field", {"files": [("image", ("a.png", class_image(0), "image/png"))]}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_its_status_and_the_service_still_answers(
    name: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    async with serve(dummy_settings(**LIMITS)) as (client, _):
        r = await client.post("/classify", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["status"] == status and err["code"] == code and err["message"]
        ok = await client.post("/classify", files=files(class_image(1)))
        assert ok.status_code == 200 and ok.json()["results"][0]["label"] == "class_1"


async def test_query_validation_404_and_405_use_the_same_error_body() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify?top_k=0", files=files(class_image(0)))
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["query", "top_k"]
        r = await client.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await client.get("/classify")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_error_names_the_bad_image() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", files=files(class_image(0), b"garbage"))
        assert r.status_code == 400
        assert r.json()["error"]["details"] == {"index": 1, "filename": "img1.png"}
        assert "image 1" in r.json()["error"]["message"]


async def test_api_key_when_configured() -> None:
    async with serve(dummy_settings(api_key="s3cret")) as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            r = await client.post("/classify", files=files(class_image(0)), headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "unauthorized"
        assert (await client.get("/model")).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert (await client.post("/classify", files=files(class_image(0)), headers=auth)).status_code == 200
        assert (await client.get("/model", headers=auth)).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no key
            assert (await client.get(probe)).status_code == 200


async def test_api_key_is_off_by_default() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", files=files(class_image(0)), headers={"Authorization": "Bearer x"})
        assert r.status_code == 200


def test_chunked_helper_really_sends_no_content_length() -> None:
    request = httpx.Request("POST", "http://x/classify", content=chunked(b"abc"))
    assert "content-length" not in request.headers
