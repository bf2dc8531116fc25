"""The try-it page's route: served by default, 404 when switched off, self-contained; and the
/model fields the page needs (quantile summary, evaluation)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest

from models.bundle import load_bundle
from service.engines.dummy import dummy_bundle
from service.routes.ui import ASSETS, CONTENT_SECURITY_POLICY
from service.settings import Settings
from tests.service_support import dummy_settings, serve

pytestmark = pytest.mark.unit

DEFAULT_BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "default"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML namespace name (app.js, favicon.svg), never fetched


def asset_text(name: str) -> str:
    return (files("service") / "ui" / name).read_text(encoding="utf-8")


async def test_the_page_and_its_assets_are_served_by_default() -> None:
    async with serve() as (client, _):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert 'src="ui/app.js"' in page.text and 'href="ui/app.css"' in page.text
        assert 'href="ui/favicon.svg"' in page.text
        for name, media_type in {"app.js": "text/javascript", "app.css": "text/css",
                                 "favicon.svg": "image/svg+xml"}.items():
            r = await client.get(f"/ui/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
            assert r.text == asset_text(name)
        missing = await client.get("/ui/secrets.txt")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert "/" not in (await client.get("/openapi.json")).json()["paths"]  # not part of the API


async def test_switched_off_the_page_is_404_and_the_api_still_serves() -> None:
    async with serve(dummy_settings(ui=False)) as (client, _):
        for path in ("/", *(f"/ui/{name}" for name in ASSETS)):
            r = await client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/model")).status_code == 200


def test_the_switch_reads_deltagate_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELTAGATE_UI", raising=False)
    assert Settings().ui is True
    monkeypatch.setenv("DELTAGATE_UI", "false")
    assert Settings().ui is False


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_assets_fetch_nothing_from_outside(name: str) -> None:
    text = asset_text(name)
    urls = re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"'`)]+", text, flags=re.IGNORECASE)
    assert set(urls) <= {SVG_NAMESPACE}, urls
    assert not re.search(r"""(src|href)\s*=\s*["']//""", text)  # no protocol-relative URLs
    assert "@import" not in text and "localStorage" not in text and "document.cookie" not in text


async def test_model_reports_the_quantile_summary_and_no_evaluation_when_none() -> None:
    calibration = dummy_bundle(4).manifest.calibration
    assert calibration is not None
    async with serve() as (client, _):
        info = (await client.get("/model")).json()
    assert info["calibration_quantiles"] == {"levels": calibration.quantile_levels,
                                             "values": calibration.quantile_values}
    assert info["evaluation"] is None
    assert "quantile_levels" not in info["calibration"]  # the summary is reported once


async def test_model_reports_the_bundles_evaluation() -> None:
    manifest = load_bundle(DEFAULT_BUNDLE).manifest
    assert manifest.evaluation is not None and manifest.calibration is not None
    async with serve(dummy_settings(bundle_path=DEFAULT_BUNDLE)) as (client, _):
        info = (await client.get("/model")).json()
    assert info["evaluation"] == manifest.evaluation
    assert info["calibration_quantiles"]["values"] == manifest.calibration.quantile_values
