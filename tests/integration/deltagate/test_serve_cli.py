"""`deltagate serve` refuses what cannot work with one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deltagate.cli import cli_main
from tests.service_support import forbid_server_start

pytestmark = pytest.mark.integration


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    forbid_server_start(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["deltagate", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    err = capsys.readouterr().err.strip()
    return int(exit_info.value.code or 0), err


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["serve", "--engine", "tensorrt"], {}, "engine (--engine / DELTAGATE_ENGINE): Input should be"),
    (["serve", "--engine", "dummy"], {"DELTAGATE_MAX_BATCH_SIZE": "abc"}, "max_batch_size"),
    (["serve", "--engine", "dummy", "--device", "tpu"], {}, "device"),
    (["serve", "--engine", "dummy", "--max-batch-size", "64"], {"DELTAGATE_MAX_QUEUE_SIZE": "8"},
     "a batch could never fill"),
    (["serve", "--engine", "dummy"], {"DELTAGATE_MAX_QUEUE_SIZE": "16", "DELTAGATE_MAX_IMAGES_PER_REQUEST": "32"},
     "a full request could never be admitted"),
])
def test_invalid_choices_print_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], env: dict[str, str],
    needle: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith("error: invalid setting") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_device_cuda_without_cuda_refuses_to_start(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA present")
    for engine in ("onnx", "torch"):
        code, err = run_cli(monkeypatch, capsys, "serve", "--engine", engine, "--device", "cuda",
                            "--bundle", str(tiny_bundle))
        assert code == 2 and err.startswith("error: device=cuda was asked for") and len(err.splitlines()) == 1


def _without_manifest(b: Path) -> None:
    (b / "manifest.json").unlink()


def _uncalibrated(b: Path) -> None:
    from models.bundle import update_manifest

    update_manifest(b, calibration=None)


def _tampered(b: Path) -> None:
    with (b / "weights.safetensors").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 8)


def _file_gone(b: Path) -> None:
    (b / "model.onnx").unlink()


def _invalid_manifest(b: Path) -> None:
    doc = json.loads((b / "manifest.json").read_text())
    doc["classes"] = []
    (b / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(("damage", "args", "needle"), [
    (_without_manifest, [], "no manifest.json"),
    (_uncalibrated, [], "no calibrated threshold (run `deltagate calibrate"),
    (_tampered, [], "weights.safetensors: content hash does not match"),
    (_file_gone, [], "model.onnx: file listed in the manifest is missing"),
    (_invalid_manifest, [], "invalid manifest: classes: List should have at least 1 item"),
    (lambda b: None, ["--engine", "onnx-int8"], "no int8 graph"),
], ids=["no-manifest", "uncalibrated", "hash", "missing-file", "invalid-manifest", "no-int8-graph"])
def test_serve_checks_the_bundle_before_the_server_starts(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None], args: list[str], needle: str,
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    damage(bundle)
    code, err = run_cli(monkeypatch, capsys, "serve", "--bundle", str(bundle), *args)
    assert code == 2 and err.startswith("error: ") and needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_serve_help_shows_every_default() -> None:
    from typer.testing import CliRunner

    from deltagate.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for default in ("[default: (bundles/default)]", "[default: (127.0.0.1)]", "[default: (8000)]",
                    "[default: (auto)]", "[default: (json)]"):
        assert default in out, default
