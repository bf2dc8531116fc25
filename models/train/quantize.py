"""int8 quantization of a bundle's ONNX graph, with its parity record and its own threshold.

``quantize_bundle`` writes ``model.int8.onnx`` beside ``model.onnx`` with ONNX Runtime's
quantization tools and records in the manifest (:class:`models.bundle.Int8Info`) how far the int8
graph is from the float32 one on the same preprocessed images: label agreement, the largest
|ΔEnergy| difference and, when the bundle's evaluation data is given, the ID accuracy and the OOD
AUROC of both graphs. The int8 graph's ΔEnergy differs from the float32 one's, so it gets its own
threshold, fitted on the ID validation split exactly as ``deltagate calibrate`` fits the float32
threshold (:meth:`models.calibration.CalibrationRecord.from_scores`).

The parity record (:func:`graph_parity`) and the threshold fit (:func:`variant_threshold`) serve every
reduced-precision graph: the float16 graph of :mod:`models.train.float16` uses them too.

Methods (ONNX Runtime's names):

- ``dynamic`` (``quantize_dynamic``): int8 weights; activations quantized per batch at run time.
  No calibration data, and the usual choice for transformers (ViT MatMuls). Only MatMul and Gemm nodes
  are quantized (:data:`DYNAMIC_OP_TYPES`): ONNX Runtime's dynamic ``ConvInteger`` made the default
  bundle's ResNet graph 0.28x as fast as float32 at batch 8, and it moved 1 % of the gate decisions
  (docs/bundle.md).
- ``static`` (``quantize_static``, QDQ format): int8 weights and activations with ranges fixed from
  ID validation images (MinMax). Faster kernels, but a ViT's LayerNorm/softmax activations have
  outliers that fixed ranges clip; the parity record shows the cost.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from models.bundle import INT8_ONNX_FILE, Bundle, GraphParity, GraphSpeed, Int8Info, load_bundle, update_manifest
from models.calibration import CalibrationRecord
from models.preprocess import PreprocessConfig, preprocess_batch
from models.scoring_module import INPUT_NAME, OUTPUT_NAMES
from models.scoring_spec import gate_scores

if TYPE_CHECKING:
    from models.train.data.folders import TaskData

__all__ = ["QuantizeConfig", "EvalImages", "quantize_onnx", "graph_outputs", "graph_parity", "graph_speed",
           "variant_threshold", "DYNAMIC_OP_TYPES", "quantize_bundle", "eval_images_from_data", "default_eval_images",
           "PARITY_PROVIDER"]

logger = logging.getLogger(__name__)

PARITY_PROVIDER = "CPUExecutionProvider"  # what every parity record runs both graphs on

QuantMethod = Literal["dynamic", "static"]


@dataclass(frozen=True)
class QuantizeConfig:
    """How the int8 graph is made."""

    method: QuantMethod = "dynamic"  # dynamic kept ID accuracy and near-OOD AUROC best (docs/benchmarks.md)
    per_channel: bool = False  # per-channel weight scales (dynamic: ORT's default is per-tensor)
    # Node types quantized; None: every type ONNX Runtime quantizes (the default of static, and of dynamic
    # before DYNAMIC_OP_TYPES). "default" picks the method's own default (QuantizeConfig.resolved_op_types).
    op_types: tuple[str, ...] | None | Literal["default"] = "default"
    calibration_images: int = 256  # static: ID val images the activation ranges are taken from
    batch_size: int = 32  # images per forward while scoring
    speed_rounds: int = 5  # interleaved rounds of the speed record (graph_speed)
    speed_seconds: float = 0.2  # thread CPU time per graph, batch size and round

    def resolved_op_types(self) -> tuple[str, ...] | None:
        """The node types quantized: dynamic's MatMul and Gemm, static's every type (None), unless set."""
        if self.op_types == "default":
            return DYNAMIC_OP_TYPES if self.method == "dynamic" else None
        return self.op_types


DYNAMIC_OP_TYPES = ("MatMul", "Gemm")  # what dynamic quantization pays off on (transformer layers, projections)


@dataclass
class EvalImages:
    """Preprocessed images the two graphs are compared on (see :func:`eval_images_from_data`)."""

    description: str
    id_test: np.ndarray  # (N, 3, H, W)
    id_labels: np.ndarray | None  # (N,) class indices, or None for unlabelled images
    ood: dict[str, np.ndarray]  # set name -> (M, 3, H, W)
    id_val: np.ndarray | None  # (V, 3, H, W): threshold (and static calibration) images
    val_split: str = "id_val"  # recorded as the variant graph's threshold split
    bundle_data: bool = True  # the bundle's own evaluation or calibration data (False: drawings standing in)


def _index_pixels(index: Any, preprocess: PreprocessConfig, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from torch.utils.data import DataLoader, Subset

    from models.train.data.folders import ImageFolderDataset, collate_skip_bad

    dataset: Any = ImageFolderDataset(index, preprocess)
    if limit is not None and len(dataset) > limit:
        step = len(dataset) / limit  # an even spread over the classes (the index is sorted by class)
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    xs, ys = [], []
    for batch in DataLoader(dataset, batch_size=64, collate_fn=collate_skip_bad):
        if batch is not None:
            xs.append(batch[0].numpy())
            ys.append(batch[1].numpy())
    if not xs:
        raise ValueError(f"{index.root}: no readable images")
    return np.concatenate(xs), np.concatenate(ys)  # (N, 3, H, W), (N,)


def eval_images_from_data(data: Path | TaskData, preprocess: PreprocessConfig, classes: Sequence[str],
                          max_per_split: int | None = None) -> EvalImages:
    """The bundle's evaluation data (``root/id/{val,test}``, ``root/ood/*``), preprocessed.

    Args:
        data: a data root in the standard layout (what ``deltagate evaluate --data`` reads), or a task
            already read (a caller that reads another layout, e.g. the CLI reading a synthetic world,
            passes its :class:`~models.train.data.folders.TaskData`).
        preprocess: the bundle's preprocessing.
        classes: the bundle's classes (must match the data's, in order).
        max_per_split: cap per split or set (None: every image).

    Raises:
        ValueError: classes differ, or the data has no ID val or test split.
    """
    from models.train.data.folders import TaskData, TaskPaths, load_task

    task = data if isinstance(data, TaskData) else load_task(TaskPaths.from_root(data))
    root = data if not isinstance(data, TaskData) else Path(os.path.commonpath(
        [str(i.root) for i in (task.test, *task.ood.values()) if i is not None]))
    if list(task.class_names) != list(classes):
        raise ValueError(
            f"{root}: classes {list(task.class_names)[:5]}... differ from the bundle's {list(classes)[:5]}..."
        )
    if task.val is None or task.test is None:
        raise ValueError(f"{root}: graph parity needs ID val (threshold) and ID test (accuracy) splits")
    x_test, y_test = _index_pixels(task.test, preprocess, max_per_split)
    x_val, _ = _index_pixels(task.val, preprocess, max_per_split)
    ood = {name: _index_pixels(idx, preprocess, max_per_split)[0] for name, idx in task.ood.items()}
    return EvalImages(f"id/test + ood/{{{','.join(ood)}}} of {root} (threshold: id/val)", x_test, y_test, ood, x_val)


def _drawings(preprocess: PreprocessConfig, n: int, seed: int) -> np.ndarray:
    from models.train.export import parity_images

    images: list[Image.Image] = parity_images(n, seed=seed)
    return preprocess_batch(images, preprocess)  # (n, 3, H, W)


def default_eval_images(bundle: Bundle, data: Path | TaskData | None, images: EvalImages | None,
                        max_per_split: int | None) -> EvalImages:
    """``images`` if given, else the bundle's evaluation data at ``data``, else 64 synthetic drawings (no labels,
    no ID val: parity only, no threshold)."""
    m = bundle.manifest
    if images is None and data is not None:
        images = eval_images_from_data(data, m.preprocess, m.classes, max_per_split)
    if images is None:
        images = EvalImages("64 synthetic drawings (models.train.export.parity_images, seed 0)",
                            _drawings(m.preprocess, 64, 0), None, {}, None, bundle_data=False)
    return images


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, pixels: np.ndarray, batch_size: int) -> None:
        batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]  # each (b, 3, H, W)
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_onnx(src: Path, dst: Path, cfg: QuantizeConfig, calibration: np.ndarray | None = None) -> None:
    """Write an int8 copy of an ONNX graph.

    Args:
        src: float32 graph.
        dst: int8 graph to write.
        cfg: method and options.
        calibration: (N, 3, H, W) images for static quantization's activation ranges.

    Raises:
        ValueError: static quantization without calibration images.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if cfg.method == "dynamic":
        ops = cfg.resolved_op_types()
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                         op_types_to_quantize=list(ops) if ops else None)
        return
    if calibration is None or len(calibration) == 0:
        raise ValueError("static quantization needs calibration images (ID val)")
    ops = cfg.resolved_op_types()
    quantize_static(
        str(src), str(dst), _CalibrationReader(calibration[: cfg.calibration_images], cfg.batch_size),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        per_channel=cfg.per_channel, calibrate_method=CalibrationMethod.MinMax,
        calibration_providers=["CPUExecutionProvider"], op_types_to_quantize=list(ops) if ops else None,
    )


def graph_outputs(path: Path, pixels: np.ndarray, batch_size: int,
                  disabled_optimizers: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Logits and ΔEnergy of an ONNX graph (ONNX Runtime, :data:`PARITY_PROVIDER`) on preprocessed images.

    A float16 graph runs there too: where the CPU provider has no float16 kernel, ONNX Runtime inserts
    casts to float32 around the node (the values stay rounded to float16 between nodes).

    Args:
        path: the graph.
        pixels: (N, 3, H, W) preprocessed images.
        batch_size: images per forward.
        disabled_optimizers: ONNX Runtime graph optimizers the session runs without.

    Returns:
        (N, K) logits and (N,) ΔEnergy.
    """
    session = _session(path, disabled_optimizers)
    logits, delta = [], []
    for i in range(0, len(pixels), batch_size):
        out = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels[i:i + batch_size]}),
                       strict=True))
        logits.append(out["logits"])
        delta.append(out["delta_energy"])
    return np.concatenate(logits), np.concatenate(delta)  # (N, K), (N,)


def _session(path: Path, disabled_optimizers: Sequence[str] = (), single_thread: bool = False) -> Any:
    """An ONNX Runtime session of a graph on :data:`PARITY_PROVIDER` (``single_thread``: one thread, no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if single_thread:  # the forward runs on the calling thread, so its CPU time is the forward's
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=[PARITY_PROVIDER],
                                disabled_optimizers=list(disabled_optimizers))


SPEED_BATCH_SIZES = (1, 8)  # a lone request and a batch at saturation (the bench's max_batch_size)


def _cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _images_per_cpu_s(session: Any, batch: np.ndarray, seconds: float) -> float:
    """Forwards of ``batch`` back to back for ``seconds`` of this thread's CPU time (at least two)."""
    start, n = time.thread_time(), 0
    while n < 2 or time.thread_time() - start < seconds:
        session.run(None, {INPUT_NAME: batch})
        n += 1
    return n * len(batch) / max(time.thread_time() - start, 1e-9)


def graph_speed(bundle: Bundle, variant: Path, tag: str, pixels: np.ndarray, *, rounds: int = 5,
                seconds: float = 0.2, batch_sizes: Sequence[int] = SPEED_BATCH_SIZES,
                disabled_optimizers: Sequence[str] = ()) -> GraphSpeed:
    """The variant graph's speed against the float32 graph's (what ``engine=auto`` reads): :class:`GraphSpeed`.

    In every round each batch size is timed for ``seconds`` of CPU time per graph, the two graphs in alternating
    order; the record keeps per graph the median images per CPU second and per batch size the median of the
    per-round ratios.

    Args:
        bundle: the bundle (its ``model.onnx`` is the reference).
        variant: the other graph.
        tag: its key in the record (``int8``, ``fp16``).
        pixels: (N, 3, H, W) preprocessed images; batches cycle through them.
        rounds: interleaved rounds.
        seconds: CPU time per graph, batch size and round.
        batch_sizes: batch sizes measured.
        disabled_optimizers: ONNX Runtime graph optimizers the variant's session runs without.
    """
    sessions = {"fp32": _session(bundle.onnx_path, (), True), tag: _session(variant, disabled_optimizers, True)}
    batches = {b: np.ascontiguousarray(np.resize(pixels, (b, *pixels.shape[1:]))) for b in batch_sizes}  # (b, 3, H, W)
    for session in sessions.values():  # first runs allocate and pick kernels
        for batch in batches.values():
            session.run(None, {INPUT_NAME: batch})
    rates: dict[str, dict[int, list[float]]] = {t: {b: [] for b in batch_sizes} for t in sessions}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for b, batch in batches.items():
            for t in order:
                rates[t][b].append(_images_per_cpu_s(sessions[t], batch, seconds))
    speedup = {str(b): round(statistics.median(v / f for v, f in zip(rates[tag][b], rates["fp32"][b], strict=True)), 3)
               for b in batch_sizes}
    logger.info("%s speed-up over float32 (images per CPU second): %s", tag, speedup)
    return GraphSpeed(provider=PARITY_PROVIDER, cpu=_cpu_name(), rounds=rounds,
                      images_per_cpu_s={t: {str(b): round(statistics.median(v), 2) for b, v in rs.items()}
                                        for t, rs in rates.items()},
                      speedup=speedup)


def _auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    from models.train.evaluate import ood_metrics

    return round(ood_metrics(id_scores, ood_scores)["auroc"], 6)


def _gate(bundle: Bundle, score: str, out: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(N,) gate scores (the bundle's ``score``) of a graph's (logits, ΔEnergy)."""
    m = bundle.manifest
    return gate_scores({"logits": out[0], "delta_energy": out[1]}, score, m.logit_scale, m.scores)


def graph_parity(bundle: Bundle, variant: Path, tag: str, images: EvalImages, batch_size: int = 32,
                 threshold: CalibrationRecord | None = None, disabled_optimizers: Sequence[str] = ()) -> GraphParity:
    """Compare a variant graph with the bundle's float32 graph on the same images: labels, ΔEnergy, gate
    decisions, ID accuracy, OOD AUROC.

    Args:
        bundle: the bundle (its ``model.onnx`` and float32 threshold are the reference).
        variant: the other graph.
        tag: the variant's key in the record (``int8``, ``fp16``).
        images: what to compare on.
        batch_size: images per forward.
        threshold: the variant's threshold; with the bundle's own, the record counts the gate decisions
            that differ (each graph at its threshold).
        disabled_optimizers: ONNX Runtime graph optimizers the variant's session runs without.
    """
    tags = ("fp32", tag)
    sets = {"id_test": images.id_test, **{f"ood/{k}": v for k, v in images.ood.items()}}
    runs = {"fp32": (bundle.onnx_path, ()), tag: (variant, disabled_optimizers)}
    out = {t: {name: graph_outputs(path, pixels, batch_size, off) for name, pixels in sets.items()}
           for t, (path, off) in runs.items()}
    labels = {t: np.concatenate([out[t][n][0].argmax(-1) for n in sets]) for t in tags}  # each (N_all,)
    diff = np.concatenate([np.abs(out[tag][n][1] - out["fp32"][n][1]) for n in sets])  # (N_all,)
    same = labels["fp32"] == labels[tag]  # (N_all,)
    fields: dict[str, Any] = {
        "data": images.description, "images": int(len(diff)), "bundle_data": images.bundle_data,
        "provider": PARITY_PROVIDER, "label_agreement": round(float(same.mean()), 6),
        "max_abs_delta_energy_diff": float(diff.max()), "mean_abs_delta_energy_diff": float(diff.mean()),
        "id_delta_energy_std": float(out["fp32"]["id_test"][1].std()),
    }
    if bundle.manifest.calibration is not None and threshold is not None:
        records = {"fp32": bundle.manifest.calibration, tag: threshold}
        ood = {t: np.concatenate([r.is_ood(_gate(bundle, r.score, out[t][n])) for n in sets])  # each (N_all,)
               for t, r in records.items()}
        fields["gate_flips"] = int((ood["fp32"] != ood[tag]).sum())
        fields["thresholds"] = {t: r.threshold for t, r in records.items()}
        accepted = ~ood["fp32"] & ~ood[tag]  # (N_all,) the images whose label a client is given by both graphs
        fields["accepted_images"] = int(accepted.sum())
        fields["accepted_label_agreement"] = round(float(same[accepted].mean()), 6) if accepted.any() else None
    if images.id_labels is not None:
        fields["id_accuracy"] = {t: round(float((out[t]["id_test"][0].argmax(-1) == images.id_labels).mean()), 6)
                                 for t in tags}
    aurocs = {k: {t: _auroc(out[t]["id_test"][1], out[t][f"ood/{k}"][1]) for t in tags} for k in images.ood}
    fields["ood_auroc"] = aurocs
    if "near" in aurocs:
        fields["near_ood_auroc"] = aurocs["near"]
    return GraphParity(**fields)


def quantize_bundle(bundle_dir: str | Path, cfg: QuantizeConfig | None = None, *, data: Path | TaskData | None = None,
                    images: EvalImages | None = None, max_per_split: int | None = None) -> Bundle:
    """Add ``model.int8.onnx`` to a bundle, with its parity record and its own ΔEnergy threshold.

    Args:
        bundle_dir: a bundle with ``model.onnx`` (its manifest is updated).
        cfg: quantization options.
        data: the bundle's evaluation data root (``root/id/{val,test}``, ``root/ood/*``) or its task
            (:func:`eval_images_from_data`): parity on ID test and every OOD set, threshold on ID val (and
            static calibration on ID val).
        images: instead of ``data``, images to compare on (tests, random-weight bench bundles).
            Without either, the parity uses 64 synthetic drawings and the int8 graph gets no
            threshold (like a float32 export before ``deltagate calibrate``).
        max_per_split: cap of images per split or set read from ``data``.

    Returns:
        The updated bundle.
    """
    cfg = cfg or QuantizeConfig()
    bundle = load_bundle(bundle_dir)
    images = default_eval_images(bundle, data, images, max_per_split)
    dst = bundle.path / INT8_ONNX_FILE
    logger.info("quantizing %s -> %s (%s)", bundle.onnx_path, dst, cfg.method)
    quantize_onnx(bundle.onnx_path, dst, cfg, images.id_val)
    calibration = variant_threshold(bundle, dst, images, cfg.batch_size)
    parity = graph_parity(bundle, dst, "int8", images, cfg.batch_size, calibration)
    speed = graph_speed(bundle, dst, "int8", images.id_test, rounds=cfg.speed_rounds, seconds=cfg.speed_seconds)
    ops = cfg.resolved_op_types()
    info = Int8Info(method=cfg.method, per_channel=cfg.per_channel, op_types=list(ops) if ops else None,
                    parity=parity, calibration=calibration, speed=speed,
                    calibration_images=min(cfg.calibration_images, len(images.id_val))
                    if cfg.method == "static" and images.id_val is not None else 0)
    logger.info("int8 parity: label agreement %.4f, max |ΔE diff| %.3g", parity.label_agreement,
                parity.max_abs_delta_energy_diff)
    return update_manifest(bundle.path, int8=info)


def variant_threshold(bundle: Bundle, graph: Path, images: EvalImages, batch_size: int = 32,
                      disabled_optimizers: Sequence[str] = ()) -> CalibrationRecord | None:
    """A variant graph's own threshold: the bundle's gate score at the float32 threshold's target TPR, fitted on
    the graph's ID val scores as ``deltagate calibrate`` fits the float32 one (None without ID val images).

    ``disabled_optimizers``: ONNX Runtime graph optimizers the graph's session runs without."""
    if images.id_val is None:
        logger.warning("no ID val images: %s gets no threshold of its own", graph.name)
        return None
    fp32_cal = bundle.manifest.calibration
    score, tpr = (fp32_cal.score, fp32_cal.target_tpr) if fp32_cal else ("delta_energy", 0.95)
    scores = _gate(bundle, score, graph_outputs(graph, images.id_val, batch_size, disabled_optimizers))  # (V,)
    return CalibrationRecord.from_scores(scores, target_tpr=tpr, score=score, split=images.val_split)
