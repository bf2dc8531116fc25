"""Error answers have a bounded size, whatever the request (issue 16, case 2).

Before, a validation error listed every problem and echoed every input: one entry per item of a
1M-item array, a 115.8 MB 422. Now ``details`` lists at most ``max_error_details`` problems and
then one entry counting the rest, and every echoed string (a location part, a message) is clipped.
"""

from __future__ import annotations

import json

import pytest

from service.errors import validation_details
from tests.service_support import b64, class_image, dummy_settings, files, serve

pytestmark = pytest.mark.hostile

JSON = {"content-type": "application/json"}


def many_problems(extra_fields: int = 21) -> bytes:
    """A body within the structure bounds with 16 + ``extra_fields`` problems: 16 non-image items, unknown fields."""
    body = {"images": list(range(16)), **{f"field{i}": 0 for i in range(extra_fields)}}
    return json.dumps(body).encode()


async def test_details_list_the_first_problems_then_count_the_rest() -> None:
    async with serve() as (client, _):  # max_error_details defaults to 20
        r = await client.post("/classify", content=many_problems(), headers=JSON)
        assert r.status_code == 422, r.text[:300]
        details, message = r.json()["error"]["details"], r.json()["error"]["message"]
        assert len(details) == 21 and details[-1] == {"loc": [], "msg": "17 more problems not listed",
                                                      "type": "too_many_errors", "count": 17}
        assert details[0]["loc"] == ["images", 0] and message.endswith("and 17 more")
        assert len(r.content) < 4096


async def test_the_cap_is_the_setting() -> None:
    async with serve(dummy_settings(max_error_details=3)) as (client, _):
        r = await client.post("/classify", content=many_problems(), headers=JSON)
        details = r.json()["error"]["details"]
        assert len(details) == 4 and details[-1]["count"] == 34


async def test_a_huge_key_is_clipped_in_the_answer() -> None:
    key = "k" * 1_000_000
    body = json.dumps({"images": [b64(class_image(0))], key: 1}).encode()
    async with serve() as (client, _):
        r = await client.post("/classify", content=body, headers=JSON)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["type"] == "extra_forbidden"
        assert len(r.content) < 2048, len(r.content)
        assert "(1000000 characters)" in r.json()["error"]["details"][0]["loc"][0]


async def test_query_validation_uses_the_same_bounded_details() -> None:
    async with serve(dummy_settings(max_error_details=1)) as (client, _):
        r = await client.post("/classify", files=files(class_image(0)), params={"top_k": "x" * 20_000})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["query", "top_k"]
        assert len(r.content) < 2048


def test_a_hundred_thousand_problems_make_a_bounded_answer() -> None:
    long = "m" * 10_000  # one string shared by every problem
    errors = [{"loc": ("images", i), "msg": long, "type": "bytes_type"} for i in range(100_000)]
    details, message = validation_details(errors, 20)
    assert len(details) == 21 and details[-1]["count"] == 99_980
    assert len(json.dumps(details)) < 8192 and len(message) < 1024
