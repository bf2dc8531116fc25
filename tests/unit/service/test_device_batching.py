"""The device input path's pieces in the batcher and the torch engine, on the CPU (GPU checks skip)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.preprocess import PreprocessConfig
from service.batcher import Batcher
from service.device_input import batch_stacker, device_input_for
from service.engines import create_engine

pytestmark = pytest.mark.unit


async def test_batcher_hands_mixed_numpy_and_tensor_images_to_the_stack_padded_to_the_bucket() -> None:
    seen: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> dict[str, np.ndarray]:
        seen.append(x)
        first = x[:, 0, 0, 0].numpy().copy()  # (rows,)
        return {"delta_energy": first, "probs": np.ones((x.shape[0], 2), np.float32)}

    batcher = Batcher([forward], max_batch_size=4, max_wait_s=0.05, max_queue_size=8, pad_buckets=[1, 2, 4],
                      stack=batch_stacker("cpu"))
    batcher.start()
    images = [np.full((3, 2, 2), 1.0, np.float32), torch.full((3, 2, 2), 2.0), np.full((3, 2, 2), 3.0, np.float32)]
    rows = await asyncio.gather(*batcher.submit(images, timeout_s=5.0))
    await batcher.stop(1.0)
    assert [float(r.outputs["delta_energy"]) for r in rows] == [1.0, 2.0, 3.0]  # routed back in order
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor) and seen[0].shape == (4, 3, 2, 2)  # bucket 4
    assert float(seen[0][3].abs().sum()) == 0.0  # the padding row is zeros


@pytest.mark.parametrize(("mode", "engine", "device", "on"), [
    ("auto", "torch", "cuda:0", True), ("auto", "torch", "cpu", False), ("on", "torch", "cpu", True),
    ("off", "torch", "cuda:0", False), ("auto", "onnx", "cuda:0", False),
])
def test_device_decode_setting_decides_the_path(mode: str, engine: str, device: str, on: bool) -> None:
    path = device_input_for(mode, engine, device, PreprocessConfig(), 10**6, True)  # type: ignore[arg-type]
    assert (path is not None) == on
    if path is not None:
        assert str(path.device) == device


def test_torch_engine_takes_a_tensor_batch_and_has_no_graphs_on_the_cpu(tiny_bundle: Path) -> None:
    engine = create_engine("torch", load_bundle(tiny_bundle), "cpu")
    engine.load()
    size = engine.bundle.manifest.preprocess.image_size
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)  # (3, 3, S, S)
    from_numpy, from_tensor = engine.infer(x), engine.infer(torch.from_numpy(x))
    for name in from_numpy:
        np.testing.assert_array_equal(from_numpy[name], from_tensor[name])
    assert engine.enable_cuda_graphs([1, 2, 4]) is False  # type: ignore[attr-defined]
    assert engine.describe()["cuda_graphs"] == "off"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_engine_cuda_graphs_equal_eager(tiny_bundle: Path) -> None:  # pragma: no cover - GPU only
    bundle = load_bundle(tiny_bundle)
    eager, graphed = create_engine("torch", bundle, "cuda"), create_engine("torch", bundle, "cuda")
    eager.load()
    graphed.load()
    assert graphed.enable_cuda_graphs([1, 2, 4, 8]) is True  # type: ignore[attr-defined]
    assert graphed.describe()["cuda_graphs"] == "1,2,4,8"
    size = bundle.manifest.preprocess.image_size
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)  # (3, 3, S, S)
    a, b = eager.infer(x), graphed.infer(x)
    np.testing.assert_allclose(a["delta_energy"], b["delta_energy"], atol=1e-3)
    np.testing.assert_array_equal(a["probs"].argmax(1), b["probs"].argmax(1))
