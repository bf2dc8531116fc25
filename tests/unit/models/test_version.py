"""One version: pyproject.toml's, as the CLI, the OpenAPI document and new bundles report it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import deltagate
from models.version import DELTAGATE_VERSION, package_version
from service.engines.dummy import dummy_bundle

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).parents[3] / "pyproject.toml"


def test_every_place_reports_the_pyproject_version() -> None:
    from service.app import create_app
    from tests.service_support import dummy_settings

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert DELTAGATE_VERSION == declared == deltagate.__version__  # the test run installs the checkout
    assert create_app(dummy_settings()).version == declared
    assert dummy_bundle(2).manifest.deltagate_version == declared


def test_an_uninstalled_package_has_no_version() -> None:
    assert package_version("no-such-package-deltagate") is None
