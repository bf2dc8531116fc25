"""Making a named label set from labels and example images, on ONNX Runtime (no torch).

``deltagate label-set create`` calls :func:`create_label_set`; the service's ``PUT /label-sets/{name}``
gets its image features from its own engine and calls :func:`example_gate_scores` and
:func:`models.label_sets.make_label_set` as this module does, so both write the same file for the same
inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.bundle import LABEL_SETS_DIR, Bundle, load_bundle
from models.label_sets import LabelLimits, LabelSetFile, check_labels, make_label_set, write_label_set
from models.preprocess import IMAGE_EXTENSIONS, decode_image, preprocess_batch
from models.prompts import PromptMode, label_text
from models.scoring_spec import FEATURES_NAME, INPUT_NAME, gate_scores
from models.text_runtime import LabelError, LabelScorer, TextEncoder, ort_session
from models.tokenizer import clean_text

__all__ = ["VisionFeatures", "example_gate_scores", "read_examples", "create_label_set"]

logger = logging.getLogger(__name__)


class VisionFeatures:
    """Preprocessed pixels -> (B, D) normalised image features with the bundle's ``model.onnx``."""

    def __init__(self, bundle: Bundle, intra_op_threads: int | None = None, batch_size: int = 64) -> None:
        bundle.text_side()  # a bundle without a text side has no features output
        self._session = ort_session(bundle.onnx_path, intra_op_threads)
        self.preprocess = bundle.manifest.preprocess
        self.batch_size = batch_size

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = [self._session.run([FEATURES_NAME], {INPUT_NAME: pixels[i : i + self.batch_size]})[0]
               for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(out).astype(np.float32)  # (B, D)

    def of_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Features of image files, decoded and preprocessed as the service does (full-size decode)."""
        feats = []
        for i in range(0, len(paths), self.batch_size):
            images = [decode_image(p.read_bytes()) for p in paths[i : i + self.batch_size]]
            feats.append(self(preprocess_batch(images, self.preprocess)))
        return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def example_gate_scores(bundle: Bundle, scorer: LabelScorer, embeddings: np.ndarray,
                        features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each label's example images scored against the whole set: label -> (n,) gate scores (higher = ID)."""
    m = bundle.manifest
    gate = m.calibration.score if m.calibration is not None else "delta_energy"
    return {label: gate_scores(scorer.score(f, embeddings), gate, m.logit_scale, m.scores)
            for label, f in features.items() if len(f)}


def read_examples(directory: str | Path, labels: Sequence[str]) -> dict[str, list[Path]]:
    """``DIR/<label>/*`` image files per label; a folder name's underscores read as spaces.

    Raises:
        LabelError: a folder that names no label, or a label without a folder (every label or none).
    """
    root = Path(directory)
    if not root.is_dir():
        raise LabelError(f"{root}: examples directory not found")
    by_key = {clean_text(label_text(label)): label for label in labels}
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = by_key.get(clean_text(label_text(sub.name)))
        if label is None:
            raise LabelError(f"{sub}: folder names no label of the set ({', '.join(labels)})")
        out[label] = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in IMAGE_EXTENSIONS)
    missing = [label for label in labels if not out.get(label)]
    if missing:
        raise LabelError(f"{root}: no example images for {missing} (one folder per label, named as the label)")
    return out


def create_label_set(
    bundle_dir: str | Path, name: str, labels: Sequence[str], *, prompts: PromptMode | None = None,
    examples: str | Path | None = None, out_dir: str | Path | None = None, target_tpr: float = 0.95,
    limits: LabelLimits | None = None,
) -> tuple[LabelSetFile, Path]:
    """Embed the labels, calibrate on the examples (if any), write the set's file atomically.

    Args:
        bundle_dir: the bundle (with a text side).
        name: the set's name.
        labels: its labels.
        prompts: prompt mode (default: the bundle's).
        examples: one folder per label (``DIR/<label>/``), or None for the default rule (calibrated: false).
        out_dir: where the file goes (default: the bundle's ``label-sets/``).
        target_tpr: share of ID images that must pass.
        limits: label limits (default: :class:`LabelLimits`).

    Returns:
        The set and its path.
    """
    bundle = load_bundle(bundle_dir)
    info = bundle.text_side()
    labels = check_labels(labels, limits or LabelLimits())
    encoder = TextEncoder(bundle)
    mode = encoder.check_mode(prompts or info.default_prompts)
    embeddings = encoder.embed(labels, mode)  # (K, D)
    scores = None
    if examples is not None:
        files = read_examples(examples, labels)
        vision = VisionFeatures(bundle)
        feats = {label: vision.of_files(paths) for label, paths in files.items()}
        scores = example_gate_scores(bundle, LabelScorer(bundle), embeddings, feats)
    label_set = make_label_set(bundle, name, labels, mode, embeddings, source="cli", example_scores=scores,
                               target_tpr=target_tpr)
    path = write_label_set(Path(out_dir) if out_dir is not None else bundle.path / LABEL_SETS_DIR, label_set)
    logger.info("label set %s (%d labels, %s prompts, calibrated: %s, threshold %.4g) written to %s", name,
                len(labels), mode, label_set.calibrated, label_set.calibration.threshold, path)
    return label_set, path
