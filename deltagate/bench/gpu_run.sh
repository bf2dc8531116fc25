#!/usr/bin/env bash
# The prepared GPU measurement of issue 10 (docs/gpu.md). Two steps, from the repository root:
#
#   1. here (a machine with PyPI access):   bash deltagate/bench/gpu_run.sh fetch
#      downloads the wheels the device machine lacks into .whl/ (git-ignored; ~6.2 MB, list below);
#   2. on the lent GPU, once, with the device tool:
#      run(command="bash deltagate/bench/gpu_run.sh", carry=[".whl"], timeout_s=600), then give_back.
#
# Step 2 installs the wheels into /tmp/site, runs the GPU-only tests (they skip on a CPU), then
# `python -m deltagate.bench.gpu` (fp16 parity, nvJPEG parity, raw engine at batch 1..256 eager and
# with CUDA graphs, the service at saturation and concurrency 1 for a small and a 12 MP JPEG, NVML
# utilisation), skipping any phase that would start after 420 s. Everything lands in $OUT (gpu.json,
# the logs), at most 8 files, as the device tool returns them.
set -euo pipefail

# The device machine's image has torch, torchvision, numpy, pillow, httpx, typer, prometheus-client,
# safetensors, timm, huggingface-hub, regex, tqdm, onnxruntime (CPU) and nvidia-ml-py, but not these
# (KINDS.md's package list); versions are the ones CI runs with.
WHEELS=(
  annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 fastapi==0.165.0 ftfy==6.3.1 httptools==0.9.0
  open_clip_torch==3.3.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  python-multipart==0.0.34 starlette==1.10.0 typing_extensions==4.16.0 typing-inspection==0.4.5
  tabulate==0.10.0 uvicorn==0.54.0 wcwidth==0.9.4
)
# onnxruntime-gpu is not carried: its wheel (~250 MB with the CUDA provider) is over the 64 MiB the
# device tool carries, so the ONNX CUDA path is not measured by this run: gpu.json's engine_onnx_fp16
# says {"skipped": "... has no CUDAExecutionProvider ..."}, and the bundle is built without ONNX (nor
# the onnx/onnxscript packages, which are not carried either). Where onnxruntime-gpu is installed, the
# same run exports the float16 graph and measures the onnx-fp16 engine beside the torch engine.

if [[ "${1:-}" == "fetch" ]]; then
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

OUT="${OUT:-results/bench/gpu-run}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -c \
  'import torch, torchvision; print(torch.__version__, torch.version.cuda, torchvision.__version__)'; } \
  > "$OUT/machine.txt" 2>&1 || true
# GPU-only tests (CUDA graph replay, nvJPEG device path): they ran skipped in CI.
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/unit/service/test_cuda_graphs.py \
  tests/unit/service/test_device_input.py > "$OUT/gpu-tests.log" 2>&1 || echo "gpu tests failed (see gpu-tests.log)"
timeout 480 python3 -m deltagate.bench.gpu --out "$OUT" --work /tmp/deltagate-gpu --budget-s 420 2>&1 \
  | tail -c 2000000 > "$OUT/gpu-run.log"
tail -n 5 "$OUT/gpu-run.log"
