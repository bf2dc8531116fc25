"""Malformed multipart bodies are 4xx, never a 500 (issue 16, item 2: every malformed body a 4xx).

The multipart parser (Starlette's, on python-multipart) caps parts at 1000 files and 1000 fields
(10,000 parts held before: 400) and non-file fields at 1 MB; these are the other ways a form can
be broken.
"""

from __future__ import annotations

import pytest

from tests.service_support import serve

pytestmark = pytest.mark.hostile

FORM = b"multipart/form-data; boundary=x"
PART = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
LONG = b"b" * 10_000
CASES: list[tuple[str, bytes, bytes, int]] = [
    ("no boundary", b"multipart/form-data", PART + b"\r\nabc\r\n--x--\r\n", 400),
    ("binary garbage", FORM, b"\x00\xff" * 1000, 400),
    ("no content-disposition", FORM, b"--x\r\nContent-Type: image/png\r\n\r\nabc\r\n--x--\r\n", 400),
    ("unterminated", FORM, PART + b"\r\nabc", 422),
    ("non-UTF-8 names", FORM,
     b'--x\r\nContent-Disposition: form-data; name="\xff\xfe"; filename="\xff"\r\n\r\nabc\r\n--x--\r\n', 422),
    ("2 MB part header", FORM, PART + b"X-A: " + b"a" * 2_000_000 + b"\r\n\r\nabc\r\n--x--\r\n", 400),
    ("10k-byte boundary", b"multipart/form-data; boundary=" + LONG,
     b"--" + LONG + PART[3:] + b"\r\nabc\r\n--" + LONG + b"--\r\n", 400),
    ("unknown charset", FORM + b"; charset=nonexistent",
     b'--x\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--x--\r\n', 422),
    ("10,000 parts", FORM, (PART + b"\r\nabc\r\n") * 10_000 + b"--x--\r\n", 400),
]


@pytest.mark.parametrize(("name", "content_type", "body", "status"), CASES, ids=[c[0] for c in CASES])
async def test_a_malformed_form_is_a_4xx(name: str, content_type: bytes, body: bytes, status: int) -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", content=body, headers={"content-type": content_type.decode("latin-1")})
        assert r.status_code == status, r.text[:300]
        assert set(r.json()["error"]) == {"status", "code", "message", "details"} and len(r.content) < 2048
