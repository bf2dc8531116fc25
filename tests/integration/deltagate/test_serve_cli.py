"""`deltagate serve` refuses what cannot work with one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import sys
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
