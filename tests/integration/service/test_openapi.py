"""The OpenAPI document follows the settings: security only with a key, image limits, error envelopes."""

from __future__ import annotations

import pytest

from service.app import create_app
from tests.service_support import dummy_settings

pytestmark = pytest.mark.integration


def operations(schema: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {f"{m.upper()} {p}": op for p, item in schema["paths"].items() for m, op in item.items()}


def test_no_key_declares_no_security_and_no_401() -> None:
    schema = create_app(dummy_settings()).openapi()
    assert "securitySchemes" not in schema.get("components", {})
    for name, op in operations(schema).items():
        assert "security" not in op and "401" not in op["responses"], name


def test_a_key_declares_bearer_security_on_the_protected_routes() -> None:
    schema = create_app(dummy_settings(api_key="k")).openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ops = operations(schema)
    for name in ("POST /classify", "GET /model"):
        assert ops[name]["security"] and "401" in ops[name]["responses"], name
    for name in ("GET /healthz", "GET /readyz", "GET /metrics"):
        assert "security" not in ops[name], name


def test_the_request_body_states_the_image_limits_and_errors_use_the_envelope() -> None:
    op = operations(create_app(dummy_settings(max_images_per_request=5)).openapi())["POST /classify"]
    content = op["requestBody"]["content"]
    file = content["multipart/form-data"]["schema"]["properties"]["file"]
    images = content["application/json"]["schema"]["properties"]["images"]
    assert (file["minItems"], file["maxItems"]) == (1, 5) and (images["minItems"], images["maxItems"]) == (1, 5)
    assert "file" in content["multipart/form-data"]["schema"]["required"]
    assert images["items"]["pattern"].startswith("^") and images["examples"]
    for status in ("400", "413", "415", "422", "500", "503", "504"):
        ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), status


def test_the_api_docs_use_the_services_own_assets() -> None:
    """/docs loads nothing from a CDN: every script, style and icon it names is served here (no /redoc: ReDoc's
    bundle fetches its logo from its CDN)."""
    import re

    from fastapi.testclient import TestClient

    with TestClient(create_app(dummy_settings())) as client:
        html = client.get("/docs").text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
        assert "https://" not in html and "http://" not in html
        for url in urls:
            assert client.get(url).status_code == 200 and len(client.get(url).content) > 1000, url
        assert client.get("/redoc").status_code == 404
        metrics = client.get("/metrics").text
    assert 'route="/docs/assets",status="200"' in metrics  # one label for every asset: bounded
