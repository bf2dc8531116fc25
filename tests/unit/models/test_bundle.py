"""Bundle round trip and every failure mode of loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE, BundleError, load_bundle, update_manifest
from models.calibration import CalibrationRecord
from models.scoring_module import load_scoring_module

pytestmark = pytest.mark.unit


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_round_trip_matches_the_exported_module(tiny_bundle, micro_clip):
    from models.train.export import scoring_module_from_clip
    from tests.conftest import MICRO_CLASSES

    b = load_bundle(tiny_bundle)
    m = b.manifest
    assert m.classes == MICRO_CLASSES and m.name == "micro-test" and m.schema_version == 1
    assert m.scores.delta_energy_top_c == 2 and m.calibration is not None and m.onnx is not None
    assert set(m.files) == {WEIGHTS_FILE, ONNX_FILE}
    assert m.preprocess == micro_clip.preprocess
    x = torch.randn(3, 3, 32, 32)
    reloaded = load_scoring_module(b)
    original = scoring_module_from_clip(micro_clip, MICRO_CLASSES)
    for a, o in zip(reloaded(x), original(x), strict=True):
        if a.ndim == 2:  # logits/probs do not depend on the score params
            torch.testing.assert_close(a, o)


def test_a_manifest_with_the_old_score_names_still_loads(bundle_copy):
    """Manifests written before the parameters were named after their score say top_c, temperature, reset,
    reset_logit; they load as today's names, and the next write uses the new ones."""
    path = bundle_copy / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["scores"] = {"top_c": 3, "reset_logit": 0.5, "temperature": 100.0, "reset": "value", "energy_temperature": 2.0,
                     "mcm_tau": 1.0}
    path.write_text(json.dumps(doc))
    s = load_bundle(bundle_copy).manifest.scores
    assert (s.delta_energy_top_c, s.delta_energy_reset_logit, s.delta_energy_temperature) == (3, 0.5, 100.0)
    assert s.energy_temperature == 2.0
    update_manifest(bundle_copy, name="renamed")
    assert json.loads(path.read_text())["scores"]["delta_energy_top_c"] == 3
    doc["scores"] = {"top_c": 3, "delta_energy_top_c": 2}
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="given twice"):
        load_bundle(bundle_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nope")


def test_missing_manifest(bundle_copy):
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: manifest missing"):
        load_bundle(bundle_copy)


def test_manifest_not_json(bundle_copy):
    (bundle_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_wrong_schema_version(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    raw["schema_version"] = 99
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(bundle_copy)


def test_invalid_field(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    raw["classes"] = []
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="invalid manifest(.|\n)*classes"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("fname", [WEIGHTS_FILE, ONNX_FILE])
def test_missing_file_named(bundle_copy, fname):
    (bundle_copy / fname).unlink()
    with pytest.raises(BundleError, match=f"{fname}: file listed in the manifest is missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("fname", [WEIGHTS_FILE, ONNX_FILE])
def test_corrupt_file_named(bundle_copy, fname):
    with (bundle_copy / fname).open("r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    with pytest.raises(BundleError, match=f"{fname}: content hash does not match"):
        load_bundle(bundle_copy)


def test_corrupt_weights_without_verification_fail_on_build(bundle_copy):
    (bundle_copy / WEIGHTS_FILE).write_bytes(b"truncated")
    b = load_bundle(bundle_copy, verify=False)
    with pytest.raises(BundleError, match=f"{WEIGHTS_FILE}: cannot read weights"):
        load_scoring_module(b)


def test_update_manifest_keeps_hashes_valid(bundle_copy):
    rec = CalibrationRecord.from_scores(np.linspace(0, 1, 50), target_tpr=0.9)
    update_manifest(bundle_copy, calibration=rec, evaluation={"id_accuracy": 0.5})
    b = load_bundle(bundle_copy)
    assert b.manifest.calibration == rec and b.manifest.evaluation == {"id_accuracy": 0.5}


def test_an_int8_record_written_before_graph_parity_still_loads(bundle_copy):
    """Manifests written before the int8 and float16 graphs shared one parity record keep loading."""
    from models.bundle import INT8_ONNX_FILE

    (bundle_copy / INT8_ONNX_FILE).write_bytes(b"int8 graph")  # hashed by update_manifest; not parsed here
    legacy = {"method": "dynamic", "per_channel": False, "parity": {
        "data": "64 synthetic drawings", "images": 64, "label_agreement": 0.9375,
        "max_abs_delta_energy_diff": 0.0048, "mean_abs_delta_energy_diff": 0.001,
        "id_accuracy_fp32": 0.98, "id_accuracy_int8": 0.97,
        "near_ood_auroc_fp32": 0.88, "near_ood_auroc_int8": 0.87, "ood_auroc": {"near": {"fp32": 0.88, "int8": 0.87}}}}
    raw = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps({**raw, "int8": legacy}))
    parity = update_manifest(bundle_copy).manifest.int8.parity  # re-hashes, then validates the old fields
    assert parity.id_accuracy == {"fp32": 0.98, "int8": 0.97}
    assert parity.near_ood_auroc == {"fp32": 0.88, "int8": 0.87}
    assert parity.provider == "CPUExecutionProvider" and parity.gate_flips is None
    assert "id_accuracy_int8" not in json.loads((bundle_copy / MANIFEST_FILE).read_text())["int8"]["parity"]


def test_the_default_manifest_names_no_path_of_the_machine_that_built_it() -> None:
    """Records of the shipped bundle (the int8 parity's and the default rules' data, ...) say where their data
    came from relative to the repository or in words, never as an absolute path of a build machine."""
    manifest = Path(__file__).resolve().parents[3] / "bundles" / "default" / MANIFEST_FILE

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    found = strings(json.loads(manifest.read_text(encoding="utf-8")))
    assert any("runs/demo/world" in s for s in found)  # the records do name their data
    absolute = [s for s in found if s.startswith(("/", "~")) or any(m in s for m in (" /", "(/", "/tmp/", "/home/",
                                                                                    "/work/", "/root/"))]
    assert not absolute, absolute
