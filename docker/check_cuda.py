"""Check that CUDA really runs in this image: torch kernels, cuDNN, and ONNX Runtime's CUDA provider.

Listing ``CUDAExecutionProvider`` among the available providers proves nothing: ONNX Runtime
falls back to the CPU when the provider's libraries do not load. This script creates real CUDA
sessions and checks what runs:

1. torch: a matmul and a convolution (cuDNN) on ``cuda:0``, compared with the CPU result;
2. ONNX Runtime: an ``InferenceSession`` on the bundle's ONNX model with only the CUDA provider
   requested, checked to have kept it (``get_providers()[0]``), and one forward whose outputs
   match the CPU provider's.

Without a visible GPU (the usual case at ``docker build``: builders do not pass GPUs through) it
logs that it skipped and exits 0, unless ``--require-gpu`` is given. Run it on a GPU host with::

    docker run --rm --gpus all deltagate:cuda python /app/check_cuda.py --require-gpu

Exit codes: 0 ok or skipped, 1 a check failed, 2 no GPU with ``--require-gpu``.
Uses only the image's packages (torch, numpy, onnxruntime-gpu); no deltagate import, so a broken
service install cannot hide a broken CUDA stack or the reverse.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("deltagate.check_cuda")


def gpu_visible() -> bool:
    """True when torch sees at least one CUDA device."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def check_torch() -> None:
    """Matmul and conv2d on the GPU agree with the CPU."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    w = torch.randn(8, 3, 3, 3, generator=gen)
    mm = (a.cuda() @ a.cuda()).cpu()
    conv = torch.nn.functional.conv2d(x.cuda(), w.cuda()).cpu()
    torch.cuda.synchronize()
    assert torch.allclose(mm, a @ a, rtol=1e-3, atol=1e-2), "CUDA matmul differs from the CPU"
    assert torch.allclose(conv, torch.nn.functional.conv2d(x, w), rtol=1e-3, atol=1e-2), "cuDNN conv differs"
    logger.info("torch %s: CUDA %s, cuDNN %s, %s ok", torch.__version__, torch.version.cuda,
                torch.backends.cudnn.version(), torch.cuda.get_device_name(0))


def onnx_model(bundle: Path) -> Path:
    """The bundle's ONNX file (``model.onnx``, as ``models.bundle.Bundle.onnx_path``)."""
    path = bundle / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundle has no ONNX model")
    return path


def check_onnxruntime(bundle: Path) -> None:
    """A CUDA-provider session on the bundle's model runs on CUDA and matches the CPU provider."""
    import numpy as np
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # ORT >= 1.21: load the pip CUDA/cuDNN libraries explicitly
        ort.preload_dlls()
    path = str(onnx_model(bundle))
    cuda = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    providers = cuda.get_providers()
    assert providers[0] == "CUDAExecutionProvider", f"ONNX Runtime fell back to {providers}"
    (inp,) = cuda.get_inputs()
    shape = [d if isinstance(d, int) else 2 for d in inp.shape]  # dynamic batch -> 2
    dtype = np.float16 if "float16" in inp.type else np.float32
    pixels = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    got = cuda.run(None, {inp.name: pixels})
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {inp.name: pixels})
    for name, g, w in zip((o.name for o in cuda.get_outputs()), got, want, strict=True):
        assert np.allclose(g, w, rtol=1e-2, atol=1e-2), f"output {name}: CUDA differs from CPU"
    logger.info("onnxruntime %s: %s on %s, outputs match the CPU provider", ort.__version__, providers[0], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, nargs="?", default=Path("/app/bundles/default"))
    parser.add_argument("--require-gpu", action="store_true", help="fail (exit 2) when no GPU is visible")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="check_cuda: %(message)s")
    if not gpu_visible():
        if args.require_gpu:
            logger.error("no CUDA device visible (run with --gpus all / the NVIDIA Container Toolkit)")
            return 2
        logger.info("no CUDA device visible: skipped (run it on a GPU host: --require-gpu)")
        return 0
    try:
        check_torch()
        check_onnxruntime(args.bundle)
    except Exception as exc:  # any failure of the CUDA stack fails the build / the check
        logger.error("FAILED: %s: %s", type(exc).__name__, exc)
        return 1
    logger.info(json.dumps({"cuda_check": "ok"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
