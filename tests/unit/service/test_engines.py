"""Engine registry and the dummy engine (the real engines are tested on a real bundle in integration)."""

from __future__ import annotations

import numpy as np
import pytest

from models.scoring_module import OUTPUT_NAMES
from service.engines import ENGINES, EngineError, check_outputs, create_engine
from service.engines.dummy import DummyEngine, dummy_bundle

pytestmark = pytest.mark.unit


def test_unknown_engine_lists_the_valid_ones() -> None:
    with pytest.raises(EngineError, match="torch, onnx, dummy"):
        create_engine("tensorrt", dummy_bundle(4))


def test_unknown_device_is_refused_not_run_on_the_cpu() -> None:
    with pytest.raises(EngineError, match="valid devices: auto, cpu, cuda"):
        create_engine("dummy", dummy_bundle(4), "tpu")  # type: ignore[arg-type]


def test_registry_holds_every_settings_choice() -> None:
    from typing import get_args

    from service.settings import EngineName

    assert set(ENGINES) == set(get_args(EngineName))


def test_dummy_engine_is_deterministic_and_shaped_like_the_scoring_module() -> None:
    engine = create_engine("dummy", dummy_bundle(4))
    engine.load()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)  # (B, 3, H, W)
    a, b = engine.infer(x), engine.infer(x)
    checked = check_outputs(a, 3, 4)
    assert set(checked) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
    assert isinstance(engine, DummyEngine)
    assert engine.describe() == {"engine": "dummy", "device": "cpu", "precision": "float32", "providers": "numpy",
                                 "intra_op_threads": "default"}


def test_dummy_engine_scores_follow_the_delta_energy_formula() -> None:
    """Independent formula (METHOD.md, top_c=1, r=0, T=1): ΔE = LSE(z) - LSE(z with max set to 0)."""
    engine = create_engine("dummy", dummy_bundle(4))
    engine.load()
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    out = engine.infer(x)
    z = out["logits"].astype(np.float64)  # (B, K)
    edited = z.copy()
    edited[np.arange(2), z.argmax(1)] = 0.0
    lse = lambda v: np.log(np.exp(v - v.max(1, keepdims=True)).sum(1)) + v.max(1)  # noqa: E731
    np.testing.assert_allclose(out["delta_energy"], lse(z) - lse(edited), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["energy"], -lse(z), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)


def test_check_outputs_rejects_missing_or_misshaped_outputs() -> None:
    good = {"logits": np.zeros((2, 4)), "probs": np.zeros((2, 4)), "delta_energy": np.zeros(2),
            "energy": np.zeros(2)}
    assert all(v.dtype == np.float32 for v in check_outputs(good, 2, 4).values())
    with pytest.raises(EngineError, match="lack"):
        check_outputs({k: v for k, v in good.items() if k != "energy"}, 2, 4)
    with pytest.raises(EngineError, match="shape"):
        check_outputs(good, 3, 4)


@pytest.mark.parametrize("name", ["torch", "onnx"])
def test_real_engines_refuse_cuda_when_absent(name: str) -> None:
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA present")
    with pytest.raises(EngineError, match="cuda"):
        create_engine(name, dummy_bundle(4), "cuda").load()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_onnx_cuda_provider_that_fails_to_initialise_is_refused(tiny_bundle, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """ORT silently falls back to the CPU when its CUDA provider cannot start; device=cuda must refuse."""
    import onnxruntime

    from models.bundle import load_bundle

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA present")
    # Pretend the CUDA provider is installed: the real session then falls back to the CPU, as it does
    # when the provider's libraries fail to load.
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(EngineError, match="failed to initialise"):
        create_engine("onnx", load_bundle(tiny_bundle), "cuda").load()
    auto = create_engine("onnx", load_bundle(tiny_bundle), "auto")
    auto.load()  # auto: allowed to fall back, and says so
    assert auto.device == "cpu" and auto.providers == ["CPUExecutionProvider"]


def test_onnx_session_takes_the_instance_thread_settings(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    from models.bundle import load_bundle
    from service.engines import EngineThreads

    engine = create_engine("onnx", load_bundle(tiny_bundle), "cpu", EngineThreads(intra_op=1, inter_op=1))
    options = engine._options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spin = create_engine("onnx", load_bundle(tiny_bundle), "cpu", EngineThreads(spin_wait=True))._options()  # type: ignore[attr-defined]
    assert spin.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spin.intra_op_num_threads == 0  # unset: ONNX Runtime's own default
