"""The random-weight bench bundle (one builder for ``bench bundle`` and the GPU run) and the GPU run's
onnx-fp16 phase, on the micro CLIP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deltagate.bench import gpu
from deltagate.bench.bundle import BENCH_SPLIT, make_bench_bundle
from models.bundle import (
    FP16_ONNX_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    SCORES_ONNX_FILE,
    TEXT_ONNX_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from tests.conftest import ASSETS, MICRO_ARCH

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench_bundle(micro_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:  # micro_clip registers the arch
    return make_bench_bundle(tmp_path_factory.mktemp("bench") / "b", MICRO_ARCH, int8=True, fp16=True).path


def test_every_graph_with_its_threshold(bench_bundle: Path) -> None:
    from models.bundle import load_bundle

    m = load_bundle(bench_bundle).manifest
    assert set(m.files) == {WEIGHTS_FILE, ONNX_FILE, INT8_ONNX_FILE, FP16_ONNX_FILE, TEXT_ONNX_FILE, SCORES_ONNX_FILE,
                            TOKENIZER_FILE}
    assert m.text is not None and m.text.rules["zero-shot"].data == BENCH_SPLIT  # a bench-only default rule
    assert m.text.rules["zero-shot"].ks == list(range(2, 11))
    assert m.calibration is not None and m.calibration.split == BENCH_SPLIT and m.calibration.n == 64
    assert m.int8 is not None and m.int8.calibration is not None and m.int8.calibration.split == BENCH_SPLIT
    assert m.fp16 is not None and m.fp16.parity.images == 64 and m.fp16.parity.gate_flips is not None
    assert m.fp16.parity.thresholds["fp16"] == m.calibration.threshold  # float16 keeps the float32 threshold
    assert m.name == f"bench-{MICRO_ARCH}-random"


def test_reduced_precision_graphs_need_the_onnx_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx=True"):
        make_bench_bundle(tmp_path / "b", MICRO_ARCH, onnx=False, fp16=True)


def test_the_weights_only_bundle_imports_neither_onnx_nor_onnxscript(tmp_path: Path) -> None:
    """The GPU machine has neither package: the GPU run's bundle (no ONNX export) must not need them."""
    script = (
        "import sys\n"
        "sys.modules['onnx'] = None; sys.modules['onnxscript'] = None  # any import of them raises\n"
        "from pathlib import Path\n"
        "from models.clip_loading import register_architecture\n"
        "from deltagate.bench.bundle import make_bench_bundle\n"
        f"register_architecture(Path({str(ASSETS / f'{MICRO_ARCH}.json')!r}))\n"
        f"b = make_bench_bundle(Path({str(tmp_path / 'b')!r}), {MICRO_ARCH!r}, onnx=False, int8=False)\n"
        "print('FILES', sorted(b.manifest.files), b.manifest.calibration.split)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert f"FILES ['{WEIGHTS_FILE}'] {BENCH_SPLIT}" in out.stdout, out.stdout + out.stderr[-3000:]


def test_the_onnx_fp16_phase_runs_on_the_cpu_and_is_skipped_without_the_cuda_provider(
        bench_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltagate.bench.gpu import Plan, jpeg, onnx_fp16_phase

    image, cpu = jpeg(64, 48), Plan(device="cpu", sweep_sizes=(1, 2), sweep_seconds=0.1)
    ran = onnx_fp16_phase(bench_bundle, cpu, image, tmp_path)
    assert [r["batch_size"] for r in ran["rows"]] == [1, 2] and all(r["images_per_s"] > 0 for r in ran["rows"])
    assert ran["engine"]["engine"] == "onnx-fp16" and ran["engine"]["precision"] == "float16"
    assert ran["bundle"] == str(bench_bundle)  # it has a float16 graph: no conversion
    monkeypatch.setattr(gpu, "onnx_cuda_missing", lambda: "no CUDA provider here")
    assert onnx_fp16_phase(bench_bundle, Plan(device="cuda"), image, tmp_path) == {"skipped": "no CUDA provider here"}


def test_onnx_cuda_missing_names_the_package_to_install() -> None:
    import onnxruntime as ort

    if gpu.ONNX_CUDA_EP in ort.get_available_providers():
        assert gpu.onnx_cuda_missing() is None
    else:
        reason = gpu.onnx_cuda_missing()
        assert reason is not None and "onnxruntime-gpu" in reason and gpu.ONNX_CUDA_EP in reason


def test_the_onnx_fp16_phase_says_what_it_lacks(micro_clip, bench_bundle: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    weights_only = make_bench_bundle(tmp_path / "w", MICRO_ARCH, onnx=False, int8=False).path
    assert gpu._fp16_blocker("cpu", weights_only) == f"{weights_only} has no model.onnx to convert"
    assert gpu._fp16_blocker("cpu", bench_bundle) is None  # it has its float16 graph already
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    assert gpu._fp16_blocker("cpu", None) == "the float16 graph needs onnxscript, not installed here"
    assert gpu._fp16_blocker("cpu", bench_bundle) is None  # nothing to export


def test_the_int8_and_float16_graphs_keep_the_features_output(bench_bundle: Path) -> None:
    import onnx

    for graph in (INT8_ONNX_FILE, FP16_ONNX_FILE):
        outputs = onnx.load(str(bench_bundle / graph)).graph.output
        assert [o.name for o in outputs][-1] == "image_features", graph
        assert outputs[-1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 out, as model.onnx


def test_bench_label_sets_measures_every_condition(bench_bundle: Path, tmp_path: Path) -> None:
    from deltagate.bench.label_sets import label_sets_report
    from service.settings import Settings

    settings = Settings(bundle_path=bench_bundle, engine="onnx", device="cpu", max_batch_size=4,
                        log_level="warning", label_sets_dir=tmp_path / "sets")
    report = label_sets_report("test", settings, rounds=2, seconds=0.3, concurrency=2, ks=(2, 3), warmup_s=0.2,
                               image_size=(64, 48))
    assert set(report["text_forward"]["per_k"]) == {"2", "3"}
    assert report["first_request"]["k"] == 3 and len(report["first_request"]["first_minus_cached_ms"]) == 2
    conditions = [(row["round"], row["condition"]) for row in report["throughput"]]
    assert conditions == [(0, "fixed"), (0, "named"), (0, "ad-hoc"), (1, "named"), (1, "ad-hoc"), (1, "fixed")]
    assert report["verdict"]["errors"] == 0 and all(row["requests_per_s"] > 0 for row in report["throughput"])
    assert len(report["ratios_to_fixed"]["named"]["per_round"]) == 2
    added = report["added_cost"]
    assert added["k"] == 10 and 0 < added["batch_1"]["scores_onnx_ms"] and 0 < added["batch_8"]["forward_ms"]
