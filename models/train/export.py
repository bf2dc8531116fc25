"""Export: scoring module -> bundle directory (safetensors weights + ONNX + manifest).

Like timm's exporters, every export checks its ONNX outputs against the PyTorch module on real
preprocessed images in the same call and fails when they differ beyond the stated tolerance.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.bundle import (
    FP16_ONNX_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    SCORES_ONNX_FILE,
    TEXT_ONNX_FILE,
    TOKENIZER_FILE,
    ArchitectureInfo,
    Bundle,
    OnnxInfo,
    save_bundle,
    update_manifest,
)
from models.clip_loading import LoadedClip
from models.preprocess import PreprocessConfig, preprocess_batch
from models.prompt_learner import DEFAULT_TEMPLATES, zero_shot_class_embeddings
from models.scores import ScoreParams
from models.scoring_module import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES, ScoringModule

__all__ = [
    "ExportConfig",
    "OnnxParityError",
    "export_onnx",
    "check_onnx_parity",
    "parity_images",
    "scoring_module_from_clip",
    "export_bundle",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """How the ONNX file is produced and checked."""

    opset: int = 18  # ONNX opset of the dynamo exporter's default translation
    onnx: bool = True  # also write model.onnx (weights.safetensors is always written)
    # |onnx - torch| allowed on every output; logits are cosines times ~100, so 1e-3 is ~1e-5 in cosine.
    atol: float = 1e-3
    rtol: float = 1e-4  # relative part of the tolerance (numpy.allclose semantics)
    parity_batch_sizes: tuple[int, ...] = (1, 3, 8)  # several sizes prove the batch axis is dynamic
    seed: int = 0  # for the synthetic parity images


class OnnxParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


# model.onnx's outputs: the scoring module's four, then the normalised image features (label sets score them).
GRAPH_OUTPUT_NAMES: tuple[str, ...] = (*OUTPUT_NAMES, FEATURES_NAME)


def export_onnx(module: ScoringModule, path: Path, image_size: int, opset: int = 18) -> None:
    """Export the scoring module to ONNX with a dynamic batch axis, with the image features as a fifth output
    (``ScoringModule.features_output``).

    Args:
        module: the module (CPU, float32).
        path: output ``.onnx`` file (single file, no external data).
        image_size: input side length.
        opset: ONNX opset.
    """
    module = module.eval().float().cpu()
    example = torch.randn(2, 3, image_size, image_size)  # (2, 3, H, W); 2 keeps the batch axis symbolic
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad(), _features_output(module, True):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(GRAPH_OUTPUT_NAMES),
            dynamic_shapes={"pixel_values": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


@contextlib.contextmanager
def _features_output(module: ScoringModule, on: bool) -> Iterator[None]:
    before = module.features_output
    module.features_output = on
    try:
        yield
    finally:
        module.features_output = before


def parity_images(n: int, seed: int = 0, size: int = 96) -> list[Image.Image]:
    """Deterministic drawings (shapes on coloured backgrounds) to check export parity on.

    They go through the real preprocessing, so the check sees the value range of real inputs.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = Image.new("RGB", (size, size + int(rng.integers(0, 32))), bg)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            x1, y1 = x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        out.append(img)
    return out


def check_onnx_parity(
    module: ScoringModule, onnx_path: Path, batches: Sequence[np.ndarray], atol: float, rtol: float
) -> dict[str, float]:
    """Run both engines on the same batches; raise if any output differs beyond tolerance.

    Every output of the graph is checked: the scoring module's four and, where the graph has it, the image
    features (against the module with ``features_output`` on).

    Returns:
        Worst absolute difference per output name.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for x in batches:
        with torch.no_grad(), _features_output(module, FEATURES_NAME in names):
            ref = [t.numpy() for t in module(torch.from_numpy(x))]
        got = session.run(names, {INPUT_NAME: x})
        for name, r, g in zip(names, ref, got, strict=True):
            if r.shape != g.shape:
                raise OnnxParityError(f"{name}: ONNX shape {g.shape} != PyTorch {r.shape} at batch {x.shape[0]}")
            worst[name] = max(worst[name], float(np.abs(r - g).max()))
            if not np.allclose(g, r, atol=atol, rtol=rtol):
                raise OnnxParityError(
                    f"{name}: ONNX differs from PyTorch by {np.abs(r - g).max():.3g} at batch {x.shape[0]} "
                    f"(atol {atol}, rtol {rtol})"
                )
    return worst


def scoring_module_from_clip(
    loaded: LoadedClip,
    classnames: Sequence[str],
    class_embeddings: torch.Tensor | None = None,
    score_params: ScoreParams | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> ScoringModule:
    """Scoring module from a CLIP and class embeddings (zero-shot prompts when none are given)."""
    if class_embeddings is None:
        class_embeddings = zero_shot_class_embeddings(loaded.model, loaded.tokenizer, classnames, templates)
    model: Any = loaded.model
    scale = float(model.logit_scale.exp().item())
    return ScoringModule(model.visual, class_embeddings, scale, score_params).eval()


def export_bundle(
    out_dir: str | Path,
    module: ScoringModule,
    *,
    name: str,
    version: str,
    architecture: ArchitectureInfo,
    preprocess: PreprocessConfig,
    classes: Sequence[str],
    prompt: dict[str, Any] | None = None,
    config: ExportConfig | None = None,
    images: Sequence[Image.Image] | None = None,
    **manifest_fields: Any,
) -> Bundle:
    """Write a complete bundle and check its ONNX file against PyTorch.

    Args:
        out_dir: bundle directory (created; existing bundle files are overwritten).
        module: the scoring module to export.
        name: model name.
        version: model version.
        architecture: what the weights are.
        preprocess: eval preprocessing.
        classes: class names (length K).
        prompt: how the class embeddings were made.
        config: export options.
        images: real images for the parity check (default: synthetic drawings).
        **manifest_fields: more manifest fields (calibration, evaluation).

    Returns:
        The bundle, loaded back.

    Raises:
        OnnxParityError: ONNX and PyTorch outputs differ beyond tolerance.
    """
    cfg = config or ExportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(classes) != module.num_classes:
        raise ValueError(f"{len(classes)} class names for {module.num_classes} class embeddings")
    (out / ONNX_FILE).unlink(missing_ok=True)
    (out / INT8_ONNX_FILE).unlink(missing_ok=True)  # an int8 graph of an earlier export would be stale
    (out / FP16_ONNX_FILE).unlink(missing_ok=True)  # so would a float16 one
    for stale in (TEXT_ONNX_FILE, SCORES_ONNX_FILE, TOKENIZER_FILE):  # and a text side (export_text_side)
        (out / stale).unlink(missing_ok=True)
    bundle = save_bundle(
        out, module, name=name, version=version, architecture=architecture, preprocess=preprocess,
        classes=list(classes), prompt=prompt or {}, **manifest_fields,
    )
    if not cfg.onnx:
        return bundle
    onnx_path = out / ONNX_FILE
    logger.info("exporting ONNX to %s", onnx_path)
    export_onnx(module, onnx_path, preprocess.image_size, cfg.opset)
    pool = list(images) if images else parity_images(max(cfg.parity_batch_sizes), cfg.seed)
    batches = [preprocess_batch([pool[i % len(pool)] for i in range(b)], preprocess) for b in cfg.parity_batch_sizes]
    try:
        worst = check_onnx_parity(module, onnx_path, batches, cfg.atol, cfg.rtol)
    except Exception:
        onnx_path.unlink(missing_ok=True)
        raise
    logger.info("ONNX parity OK: %s", {k: f"{v:.2g}" for k, v in worst.items()})
    info = OnnxInfo(
        opset=cfg.opset, output_names=list(GRAPH_OUTPUT_NAMES), parity_atol=cfg.atol, parity_max_abs_diff=worst,
        parity_batch_sizes=list(cfg.parity_batch_sizes),
    )
    return update_manifest(out, onnx=info)
