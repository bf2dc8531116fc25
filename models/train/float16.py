"""float16 conversion of a bundle's ONNX graph for ONNX Runtime's CUDA provider: float16 tower, float32 scores.

``float16_bundle`` writes ``model.fp16.onnx`` beside ``model.onnx`` with ONNX Runtime's own converter
(``onnxruntime.transformers.float16.convert_float_to_float16``, ``keep_io_types=True``: the engine feeds float32
pixels and reads float32 outputs) and records in the manifest (:class:`models.bundle.Fp16Info`) how far the
float16 graph is from the float32 one, with the parity record int8 uses (:func:`models.train.quantize.graph_parity`).

As the torch engine does on CUDA (``service/engines/torch_engine.py``), only the vision tower runs in float16: the
scoring head (L2 normalisation, logits, softmax, energy, ΔEnergy) stays float32, because differences of
log-sum-exps at a logit scale near 100 lose their precision in half precision.

How the boundary is found, without node names: the dynamo exporter (:func:`models.train.export.export_onnx`)
records on every node the module scopes it came from (node metadata ``pkg.torch.onnx.name_scopes``, e.g.
``['', 'visual', 'visual.transformer', ...]``). Nodes in the ``visual`` scope are the vision tower; the tensors they
hand to any other node are the image features (:func:`tower_features`). Every node that depends on the features is
the head (:func:`head_nodes`), given to the converter as its ``node_block_list``. A graph without that metadata
(another exporter) is refused rather than guessed at.

The converter puts a Cast to float16 after every blocked node and a Cast back to float32 before the next one, so
even a blocked head would round each of its intermediate tensors to float16. :func:`convert_float16` replaces each
such float32 -> float16 -> float32 pair by an Identity, then checks that no float16 tensor is left in the head
(:func:`float16_in_head`).
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.bundle import FP16_DISABLED_OPTIMIZERS, FP16_ONNX_FILE, Bundle, Fp16Info, load_bundle, update_manifest
from models.train.quantize import EvalImages, default_eval_images, graph_parity, graph_speed, variant_threshold

if TYPE_CHECKING:
    from models.train.data.folders import TaskData

__all__ = ["Float16Error", "Float16Graph", "tower_features", "head_nodes", "float16_in_head", "convert_float16",
           "float16_bundle"]

logger = logging.getLogger(__name__)

TOWER_SCOPE = "visual"  # ScoringModule's attribute holding the vision tower (models/scoring_module.py)
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16 (onnx is imported only when converting)


class Float16Error(ValueError):
    """The graph cannot be split into a float16 tower and a float32 head."""


@dataclass(frozen=True)
class Float16Graph:
    """What :func:`convert_float16` did."""

    features: list[str]  # the tower's output tensors (float16 -> float32 at the boundary)
    float32_nodes: int  # head nodes left in float32
    folded_casts: int  # float32 -> float16 -> float32 round trips the converter had inserted, removed


def _in_tower(node: Any) -> bool:
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            scopes = ast.literal_eval(prop.value)  # a Python list literal written by the exporter
            return len(scopes) > 1 and scopes[1] == TOWER_SCOPE
    return False


def tower_features(model: Any) -> list[str]:
    """The image features: tensors written by a vision-tower node and read by a node outside the tower.

    Raises:
        Float16Error: the graph carries no module scopes, or no tensor leaves the tower.
    """
    nodes = model.graph.node
    tower = [n for n in nodes if _in_tower(n)]
    if not tower:
        raise Float16Error(f"no node carries the exporter's {_SCOPES_KEY!r} metadata of the {TOWER_SCOPE!r} module "
                           "(export the bundle with this deltagate: `deltagate export`)")
    written = {o for n in tower for o in n.output}
    features = sorted({i for n in nodes if not _in_tower(n) for i in n.input if i in written})
    if not features:
        raise Float16Error("no tensor leaves the vision tower")
    return features


def head_nodes(model: Any, features: list[str]) -> set[str]:
    """Names of the nodes that depend on the features (the scoring head), which must produce every graph output.

    Raises:
        Float16Error: a graph output does not come from the head.
    """
    reached, head = set(features), set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted: one pass reaches every dependant
        if any(i in reached for i in node.input):
            head.add(node.name)
            reached.update(node.output)
    missing = [o.name for o in model.graph.output if o.name not in reached]
    if missing:
        raise Float16Error(f"graph outputs {missing} do not depend on the tower's features {features}")
    return head


def _cast_to(node: Any) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((int(a.i) for a in node.attribute if a.name == "to"), None)


def _elem_types(model: Any) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _fold_cast_round_trips(model: Any) -> int:
    """Replace each Cast to float32 of a float32 tensor, or of a Cast of one to float16, by an Identity of it.

    The converter inserts both kinds around blocked nodes: the round trips, and casts of the float32
    initializers that only blocked nodes read. ORT's ``OnnxModel.remove_cascaded_cast_nodes`` would fold every
    Cast of a Cast, a float -> int -> float one of the original graph too, so this folds only these two.
    """
    nodes = model.graph.node
    types = _elem_types(model)
    producer = {o: n for n in nodes for o in n.output}
    folded = 0
    for node in nodes:
        if _cast_to(node) != _FLOAT:
            continue
        source = node.input[0]
        src = producer.get(source)
        if src is not None and _cast_to(src) == _FLOAT16:
            source = src.input[0]
        if types.get(source) == _FLOAT:
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = source
            folded += 1
    read = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    dead = [n for n in nodes if _cast_to(n) == _FLOAT16 and not any(o in read for o in n.output)]
    for node in dead:
        nodes.remove(node)
    return folded


def float16_in_head(model: Any, head: set[str], features: list[str]) -> list[str]:
    """Tensors that a head node reads or writes in float16, or that reach it through a cast from float16 other
    than the features' (empty: the head is float32)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]  # types from inference alone, not from what the converter wrote
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    types = _elem_types(inferred)
    producer = {o: n for n in inferred.graph.node for o in n.output}
    bad = []
    for node in inferred.graph.node:
        if node.name not in head:
            continue
        bad += [t for t in (*node.input, *node.output) if types.get(t) == _FLOAT16]
        for t in node.input:
            src = producer.get(t)
            if src is not None and src.name not in head and _cast_to(src) == _FLOAT \
                    and types.get(src.input[0]) == _FLOAT16 and src.input[0] not in features:
                bad.append(src.input[0])
    return sorted(set(bad))


def convert_float16(src: Path, dst: Path) -> Float16Graph:
    """Write a float16 copy of an ONNX graph: the tower in float16, the head and the graph's inputs and outputs
    in float32.

    Args:
        src: the float32 graph (exported by :func:`models.train.export.export_onnx`).
        dst: the float16 graph to write.

    Raises:
        Float16Error: no tower/head split in the graph, or the converted head is not float32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    features = tower_features(model)
    head = head_nodes(model, features)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(head))
    folded = _fold_cast_round_trips(converted)
    OnnxModel.graph_topological_sort(converted.graph)  # the converter appends its casts at the end
    # The converter retypes the value_info of every float tensor, the initializers it keeps in float32 too;
    # an initializer's value_info says nothing its own type does not, so it goes.
    kept = {t.name for t in converted.graph.initializer}
    infos = [v for v in converted.graph.value_info if v.name not in kept]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(infos)
    leaks = float16_in_head(converted, head, features)
    if leaks:
        raise Float16Error(f"the converted head still holds float16 tensors: {leaks[:5]}")
    onnx.save(converted, str(dst))
    logger.info("float16 graph %s: tower up to %s, %d head nodes float32, %d cast round trips folded",
                dst, features, len(head), folded)
    return Float16Graph(features, len(head), folded)


def float16_bundle(bundle_dir: str | Path, *, data: Path | TaskData | None = None, images: EvalImages | None = None,
                   max_per_split: int | None = None, batch_size: int = 32) -> Bundle:
    """Add ``model.fp16.onnx`` to a bundle, with its parity record against ``model.onnx``.

    The float16 graph keeps the float32 threshold (docs/bundle.md has the measured shift that decided it); the
    parity record counts the gate decisions that flip at it, and with ID val images the record says where a
    threshold of its own would lie (``refit_threshold``).

    Args:
        bundle_dir: a bundle with ``model.onnx`` (its manifest is updated).
        data: the bundle's evaluation data root (``root/id/{val,test}``, ``root/ood/*``) or its task
            (:func:`models.train.quantize.eval_images_from_data`): parity on ID test and every OOD set, with ID
            accuracy and AUROC.
        images: instead of ``data``, images to compare on. Without either: 64 synthetic drawings.
        max_per_split: cap of images per split or set read from ``data``.
        batch_size: images per forward.

    Returns:
        The updated bundle.
    """
    bundle = load_bundle(bundle_dir)
    images = default_eval_images(bundle, data, images, max_per_split)
    dst = bundle.path / FP16_ONNX_FILE
    logger.info("converting %s -> %s (float16 tower, float32 scores)", bundle.onnx_path, dst)
    graph = convert_float16(bundle.onnx_path, dst)
    parity = graph_parity(bundle, dst, "fp16", images, batch_size, bundle.manifest.calibration,
                          FP16_DISABLED_OPTIMIZERS)
    refit = None if images.id_val is None else variant_threshold(bundle, dst, images, batch_size,
                                                                 FP16_DISABLED_OPTIMIZERS)
    speed = graph_speed(bundle, dst, "fp16", images.id_test, disabled_optimizers=FP16_DISABLED_OPTIMIZERS)
    info = Fp16Info(features=graph.features, float32_nodes=graph.float32_nodes, parity=parity,
                    refit_threshold=refit.threshold if refit else None, speed=speed)
    logger.info("fp16 parity: label agreement %.4f, max |ΔE diff| %.3g, gate flips %s", parity.label_agreement,
                parity.max_abs_delta_energy_diff, parity.gate_flips)
    return update_manifest(bundle.path, fp16=info)
