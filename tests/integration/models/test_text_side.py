"""The bundle's text side (models/train/text_export.py) reproduces the torch model: tokens, embeddings in both
prompt modes, the baked class embeddings, the image features and the scores (models/scores.py, the one
definition), and a label set made from it by the CLI gates as calibrated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.label_set_create import VisionFeatures, create_label_set
from models.label_sets import read_label_set
from models.preprocess import preprocess_batch
from models.prompt_learner import TextEmbedder, zero_shot_class_embeddings
from models.scores import delta_energy, energy
from models.text_runtime import LabelError, LabelScorer, TextEncoder
from models.train.export import parity_images
from tests.conftest import MICRO_CLASSES
from tests.train_support import make_image_folder

pytestmark = pytest.mark.integration


def test_zero_shot_embeddings_equal_open_clips_encode_text(text_bundle: Path, micro_clip) -> None:
    labels = ["octagon", "lightning bolt", "six-pointed star", "rounded_square"]
    want = zero_shot_class_embeddings(micro_clip.model, micro_clip.tokenizer, labels).numpy()
    got = TextEncoder(load_bundle(text_bundle)).embed(labels, "zero-shot")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_learned_embeddings_of_the_bundle_classes_are_its_baked_ones(text_bundle: Path) -> None:
    from safetensors.torch import load_file

    bundle = load_bundle(text_bundle)
    baked = load_file(str(bundle.weights_path))["class_embeddings"].numpy()
    np.testing.assert_allclose(TextEncoder(bundle).embed(MICRO_CLASSES, "learned"), baked, atol=1e-5)
    assert bundle.manifest.text is not None and bundle.manifest.text.parity["baked_learned"] < 1e-4


def test_the_learned_context_changes_the_embedding(text_bundle: Path) -> None:
    enc = TextEncoder(load_bundle(text_bundle))
    a, b = enc.embed(["octagon"], "learned"), enc.embed(["octagon"], "zero-shot")
    assert float(a[0] @ b[0]) < 0.999


def test_scores_graph_equals_models_scores_on_the_features(text_bundle: Path) -> None:
    """scores.onnx on (model.onnx's features, label embeddings) = models.scores in torch on the same inputs."""
    bundle = load_bundle(text_bundle)
    m = bundle.manifest
    pixels = preprocess_batch(parity_images(9, seed=3), m.preprocess)
    feats = VisionFeatures(bundle)(pixels)  # (9, D)
    emb = TextEncoder(bundle).embed(["octagon", "pentagon", "hexagon"], "zero-shot")  # (3, D)
    got = LabelScorer(bundle).score(feats, emb)
    z = m.logit_scale * torch.nn.functional.normalize(torch.from_numpy(feats), dim=-1) @ torch.from_numpy(emb).T
    p = m.scores
    np.testing.assert_allclose(got["logits"], z.numpy(), atol=1e-4)
    expected = delta_energy(z, p.delta_energy_top_c, p.delta_energy_reset_logit, p.delta_energy_temperature,
                            p.delta_energy_reset)
    np.testing.assert_allclose(got["delta_energy"], expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["energy"], energy(z, p.energy_temperature).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["probs"], torch.softmax(z, -1).numpy(), atol=1e-5)


def test_features_output_scored_on_the_baked_classes_is_the_fixed_class_output(text_bundle: Path) -> None:
    """The label-set path on the bundle's own classes answers as the fixed-class path does."""
    import onnxruntime as ort

    bundle = load_bundle(text_bundle)
    pixels = preprocess_batch(parity_images(6, seed=4), bundle.manifest.preprocess)
    fixed = ort.InferenceSession(str(bundle.onnx_path)).run(None, {"pixel_values": pixels})
    emb = TextEncoder(bundle).embed(MICRO_CLASSES, "learned")
    via_set = LabelScorer(bundle).score(fixed[4], emb)
    np.testing.assert_allclose(via_set["logits"], fixed[0], atol=1e-3)
    np.testing.assert_allclose(via_set["delta_energy"], fixed[2], atol=1e-3)


def test_text_graph_batches_labels_and_templates_dynamically(text_bundle: Path, micro_clip) -> None:
    enc = TextEncoder(load_bundle(text_bundle), batch_size=3)  # several forwards of 3 prompts
    labels = [f"shape number {i}" for i in range(7)]
    np.testing.assert_allclose(enc.embed(labels, "learned"), TextEncoder(load_bundle(text_bundle)).embed(
        labels, "learned"), atol=1e-6)
    emb = TextEmbedder(micro_clip.model)  # zero-shot only: a model without context
    assert emb.n_ctx == 0


def test_a_label_too_long_for_the_text_context_is_refused(text_bundle: Path) -> None:
    enc = TextEncoder(load_bundle(text_bundle))
    with pytest.raises(LabelError, match="too long for the model's text context"):
        enc.embed(["a very long label " * 5], "learned")
    with pytest.raises(LabelError, match="not available"):
        enc.embed(["a", "b"], "manual")  # type: ignore[arg-type]


def test_the_cli_set_with_examples_is_calibrated_on_them(text_bundle: Path, tmp_path: Path) -> None:
    examples = make_image_folder(tmp_path / "ex", {"circle": 12, "red_square": 12}, seed=5)
    ls, path = create_label_set(text_bundle, "pair", ["circle", "red square"], examples=examples,
                                out_dir=tmp_path / "sets")
    assert read_label_set(path) == ls and ls.calibrated and ls.examples == {"circle": 12, "red square": 12}
    assert ls.calibration.n == 24 and ls.calibration.target_tpr == 0.95
    assert ls.bundle.fingerprint == load_bundle(text_bundle).fingerprint()
    no_examples, _ = create_label_set(text_bundle, "pair2", ["circle", "red square"], out_dir=tmp_path / "sets")
    assert not no_examples.calibrated and no_examples.calibration.split == "default rule, K=2"


def test_examples_must_cover_every_label_and_name_only_labels(text_bundle: Path, tmp_path: Path) -> None:
    only_one = make_image_folder(tmp_path / "one", {"circle": 3}, seed=5)
    with pytest.raises(LabelError, match="no example images for"):
        create_label_set(text_bundle, "x", ["circle", "square"], examples=only_one, out_dir=tmp_path)
    stray = make_image_folder(tmp_path / "stray", {"circle": 3, "square": 3, "hexagon": 3}, seed=5)
    with pytest.raises(LabelError, match="names no label"):
        create_label_set(text_bundle, "x", ["circle", "square"], examples=stray, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.json"))
