"""`make demo` / `deltagate demo build` leave the tracked bundle and results alone unless asked to publish."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deltagate.cli import app
from tests.server_process import REPO

pytestmark = pytest.mark.unit


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Where the (stubbed) pipeline was asked to write: (bundle, results) per run."""
    import proxy.demo as demo

    calls: list[tuple[Path, Path]] = []

    def fake_build(cfg: Any, work: Path, bundle: Path, results: Path, **_: Any) -> dict[str, Any]:
        calls.append((Path(bundle), Path(results)))
        return {"seconds": {}}

    monkeypatch.setattr(demo, "build_demo", fake_build)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "")  # the command prints evaluation.md
    return calls


def test_demo_build_writes_under_its_work_directory_by_default(built: list[tuple[Path, Path]]) -> None:
    result = CliRunner().invoke(app, ["demo", "build", "--work", "w"])
    assert result.exit_code == 0, result.output
    assert built == [(Path("w/bundle"), Path("w/results"))]


def test_publish_writes_the_bundled_default_model_and_results(built: list[tuple[Path, Path]]) -> None:
    assert CliRunner().invoke(app, ["demo", "build", "--publish"]).exit_code == 0
    assert built == [(Path("bundles/default"), Path("results"))]
    refused = CliRunner().invoke(app, ["demo", "build", "--publish", "--bundle", "elsewhere"])
    assert refused.exit_code == 2 and not built[1:]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_publishes_only_when_asked() -> None:
    def dry(*args: str) -> str:
        # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would make this one print
        # "Leaving directory ..." after the recipe: run it as a top-level make.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        return subprocess.run(["make", "--no-print-directory", "-n", "demo", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]

    assert dry().split()[-2:] == ["demo", "build"]
    assert dry("PUBLISH=1").endswith("demo build --publish")
