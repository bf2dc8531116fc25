"""Engine choice: ``auto`` per bundle, lazy imports, a clear error when an engine's extra is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import ONNX_FILE, FileEntry
from service.engines import EngineError, engine_class, resolve_engine_name
from service.engines.dummy import dummy_bundle

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def test_auto_is_onnx_when_the_bundle_has_model_onnx_else_torch() -> None:
    bundle = dummy_bundle(4)
    assert resolve_engine_name("auto", bundle) == "torch"  # no model.onnx
    files = {ONNX_FILE: FileEntry(sha256="0" * 64, size=1)}
    bundle.manifest = bundle.manifest.model_copy(update={"files": files})
    assert resolve_engine_name("auto", bundle) == "onnx"
    assert resolve_engine_name("torch", bundle) == "torch" and resolve_engine_name("dummy", bundle) == "dummy"


def test_a_missing_extra_is_an_engine_error_naming_it() -> None:
    script = ("import sys; sys.modules['torch'] = None\n"
              "from service.engines import EngineError, engine_class\n"
              "try:\n    engine_class('torch')\nexcept EngineError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ERR engine 'torch' needs torch" in out.stdout and "deltagate[torch]" in out.stdout, out.stdout + out.stderr


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(EngineError, match="valid engines: torch, onnx, dummy"):
        engine_class("tensorrt")
