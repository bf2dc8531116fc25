"""pyproject's dependency layout: the core install serves ONNX without torch; extras add the rest."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
TORCH_STACK = {"torch", "torchvision", "open-clip-torch", "safetensors"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_core_is_onnx_only_and_the_torch_stack_is_an_extra_that_train_includes() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core, extras = names(project["dependencies"]), project["optional-dependencies"]
    assert not core & TORCH_STACK, core & TORCH_STACK
    assert {"onnxruntime", "fastapi", "uvicorn", "prometheus-client", "numpy", "pillow"} <= core
    assert names(extras["torch"]) == TORCH_STACK
    assert "deltagate[torch]" in extras["train"] and any(r.startswith("deltagate[train") for r in extras["dev"])
    assert "torch==2.14.1" in extras["torch"] and "torchvision==0.29.1" in extras["torch"]  # the pins
