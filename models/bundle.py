"""The model bundle: a self-contained directory the service loads.

Layout::

    <bundle>/
      manifest.json         versioned, validated with pydantic on load (BundleManifest)
      weights.safetensors   the scoring module's state dict (vision tower + class embeddings)
      model.onnx            the scoring module exported to ONNX (optional but usual)
      model.int8.onnx       an int8 quantization of model.onnx (optional; ``deltagate export --quantize int8``)
      model.fp16.onnx       a float16 conversion of model.onnx (optional; ``deltagate export --quantize fp16``)
      text.onnx             the text side (optional): token ids -> class embeddings, learned context inside
      scores.onnx           (image features, class embeddings) -> the scoring module's outputs
      tokenizer.json        CLIP's BPE tokenizer (Hugging Face ``tokenizers`` format)
      label-sets/           named label sets (``deltagate label-set create``), not hashed: they change at run time

Like open_clip shipping its config beside its weights and timm carrying its eval preprocessing,
the manifest holds every number needed to use the weights: architecture config, preprocessing,
class names, score parameters, the calibrated threshold with its statistics, an evaluation
summary and SHA-256 hashes of every file.

This module is the format only (manifest schema, reading, writing, hashing) and imports neither
torch nor open_clip: the ONNX service loads bundles with it. The torch module is rebuilt from a
bundle by :func:`models.scoring_module.load_scoring_module`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.calibration import CalibrationRecord
from models.errors import BundleError
from models.preprocess import PreprocessConfig
from models.quality import ValidationRecord
from models.scoring_spec import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES, ScoreParams, renamed_legacy_keys
from models.tokenizer import TOKENIZER_FILE
from models.version import DELTAGATE_VERSION

if TYPE_CHECKING:  # torch loads only when weights are written (save_bundle): ONNX serving needs none of it
    from models.scoring_module import ScoringModule

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "ONNX_FILE",
    "INT8_ONNX_FILE",
    "FP16_ONNX_FILE",
    "TEXT_ONNX_FILE",
    "SCORES_ONNX_FILE",
    "TOKENIZER_FILE",
    "LABEL_SETS_DIR",
    "FP16_DISABLED_OPTIMIZERS",
    "BundleError",
    "ArchitectureInfo",
    "OnnxInfo",
    "GraphParity",
    "GraphSpeed",
    "Int8Info",
    "Fp16Info",
    "AdHocRule",
    "TextSideInfo",
    "FileEntry",
    "BundleManifest",
    "Bundle",
    "load_bundle",
    "save_bundle",
    "update_manifest",
    "sha256_file",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
FP16_ONNX_FILE = "model.fp16.onnx"
TEXT_ONNX_FILE = "text.onnx"
SCORES_ONNX_FILE = "scores.onnx"
LABEL_SETS_DIR = "label-sets"  # the bundle's own named label sets (DELTAGATE_LABEL_SETS_DIR overrides)
# ONNX Runtime sessions of the float16 graph run without these graph optimizers. On x86-64 CPUs the NCHWc layout
# pass dereferences a null kernel on the Cast(float16 -> float32) that ONNX Runtime inserts before a MatMul without
# a float16 CPU kernel (microsoft/onnxruntime#28392): a float16 ViT crashes session creation (ORT 1.32). The pass
# only re-lays convolutions for the CPU provider.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


class ArchitectureInfo(BaseModel):
    """Which network the weights belong to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str  # open_clip architecture name, e.g. "ViT-B-32" or "tiny-clip"
    open_clip_config: dict[str, Any]  # the full open_clip config (embed_dim, vision_cfg, ...)
    pretrained: str | None = None  # tag or checkpoint the encoders came from (None: random init)


class OnnxInfo(BaseModel):
    """How the ONNX file was made and how closely it matched PyTorch at export."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    opset: int
    input_name: str = INPUT_NAME
    output_names: list[str] = Field(default_factory=lambda: list(OUTPUT_NAMES))
    dynamic_batch: bool = True
    parity_atol: float  # tolerance the export checked against
    parity_max_abs_diff: dict[str, float]  # worst |onnx - torch| per output over the checked batches
    parity_batch_sizes: list[int]


class GraphParity(BaseModel):
    """A reduced-precision graph (int8, float16) against the float32 graph on the same preprocessed images.

    Per-graph numbers are keyed by the graph's tag: ``"fp32"`` and ``"int8"`` or ``"fp16"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str  # which images, e.g. "id_test + ood/* of DATA" or "synthetic drawings"
    images: int  # images both graphs ran on
    # The images are the bundle's own evaluation or calibration data (False: drawings that stand in for missing
    # data; None: a record written before this field). engine=auto trusts only a record on the bundle's data.
    bundle_data: bool | None = None
    provider: str = "CPUExecutionProvider"  # the ONNX Runtime provider both graphs ran on
    label_agreement: float  # share of images with the same argmax class
    max_abs_delta_energy_diff: float  # worst |ΔEnergy_variant - ΔEnergy_fp32|
    mean_abs_delta_energy_diff: float
    gate_flips: int | None = None  # images whose OOD decision differs, each graph at its threshold (None: none given)
    thresholds: dict[str, float] = Field(default_factory=dict)  # tag -> the threshold gate_flips used
    # Of the images both graphs accept (each at its threshold; the labels clients are given): how many, and the
    # share with the same label. None: no thresholds, or a record written before these fields.
    accepted_images: int | None = None
    accepted_label_agreement: float | None = None
    id_delta_energy_std: float | None = None  # std of the float32 ΔEnergy on the ID images: the error's yardstick
    id_accuracy: dict[str, float] = Field(default_factory=dict)  # tag -> accuracy on ID test (empty: no labels)
    near_ood_auroc: dict[str, float] = Field(default_factory=dict)  # tag -> ΔEnergy AUROC, ID test vs near OOD
    ood_auroc: dict[str, dict[str, float]] = Field(default_factory=dict)  # set -> {tag: AUROC}, e.g. fp32 and int8

    @model_validator(mode="before")
    @classmethod
    def _read_int8_fields(cls, data: Any) -> Any:
        """Manifests written before the record was shared by int8 and float16 named these per-graph fields
        ``id_accuracy_fp32``, ``id_accuracy_int8``, ``near_ood_auroc_fp32``, ``near_ood_auroc_int8``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field in ("id_accuracy", "near_ood_auroc"):
            for tag in ("fp32", "int8"):
                value = data.pop(f"{field}_{tag}", None)
                if value is not None:
                    data.setdefault(field, {})[tag] = value
        return data


class GraphSpeed(BaseModel):
    """A reduced-precision graph's speed against the float32 graph's, measured where it was made.

    Each graph ran in its own single-threaded ONNX Runtime session on the same preprocessed images, timed by
    the CPU time of the thread that ran it, in interleaved rounds; ``speedup`` is the median over rounds of the
    per-round ratio (variant / float32 images per CPU second). CPU time, not wall time: on a shared machine the
    other processes' load moves wall time by 1.5x within minutes, CPU time much less.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str  # the ONNX Runtime provider both graphs ran on
    cpu: str  # the machine's processor (speed ratios of int8 kernels depend on its instruction set)
    clock: str = "thread CPU time, 1 intra-op thread"
    rounds: int
    images_per_cpu_s: dict[str, dict[str, float]]  # tag ("fp32", "int8", "fp16") -> batch size -> median
    speedup: dict[str, float]  # batch size -> median over rounds of variant / float32 images per CPU second


class Int8Info(BaseModel):
    """The bundle's int8 graph: how it was quantized, its parity record and its own threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = INT8_ONNX_FILE
    method: Literal["dynamic", "static"]  # ONNX Runtime quantize_dynamic / quantize_static (QDQ)
    weight_type: str = "QInt8"
    per_channel: bool
    op_types: list[str] | None = None  # node types quantized (None: every type ONNX Runtime quantizes)
    calibration_images: int = 0  # activation-range images of static quantization (ID val)
    parity: GraphParity
    calibration: CalibrationRecord | None = None  # the int8 graph's ΔEnergy threshold (its own ID val scores)
    speed: GraphSpeed | None = None  # against model.onnx (None: written before speed was recorded)


class Fp16Info(BaseModel):
    """The bundle's float16 graph (for ONNX Runtime's CUDA provider): float16 vision tower, float32 scores.

    It is served with the float32 threshold: its ΔEnergy moves too little to need its own (docs/bundle.md has the
    measurement). ``parity.gate_flips`` counts the decisions that change at that threshold, and
    ``refit_threshold`` says where a threshold fitted on its own ID val scores would lie.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = FP16_ONNX_FILE
    converter: str = "onnxruntime.transformers.float16.convert_float_to_float16"
    features: list[str]  # the tower's output tensors: float16 up to them, float32 from them on
    float32_nodes: int  # nodes of the scoring head kept in float32 (normalisation, logits, scores)
    parity: GraphParity
    refit_threshold: float | None = None  # fitted on its own ID val scores, for comparison only (None: no ID val)
    speed: GraphSpeed | None = None  # against model.onnx, on the provider that made the parity record


class AdHocRule(BaseModel):
    """The gate of a label set without examples: a threshold as a function of the number of labels K.

    Fitted offline (``deltagate label-set fit-rule``, :mod:`models.train.label_rules`) on random subsets
    of the bundle's own classes and their ID validation images: for each K of ``ks`` the gate scores of
    ID images under many random K-label sets are pooled, and ``thresholds[i]`` is their ``1 - target_tpr``
    quantile (``quantiles[i]``: the 101-point summary, for ``ood_p_value``). Between fitted K the values are
    interpolated linearly in 1/K; above the largest fitted K the rule is not defined and an ad-hoc set that
    large is refused (docs/label-sets.md).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: str = "delta_energy"  # the gate (the bundle's calibration.score)
    target_tpr: float = Field(0.95, gt=0.0, le=1.0)
    ks: list[int] = Field(min_length=1)  # fitted numbers of labels, increasing
    thresholds: list[float]  # per K
    quantiles: list[list[float]]  # per K: the gate score at levels 0, 0.01, ..., 1
    subsets_per_k: int  # random label sets drawn per K
    images: int  # ID validation images the scores came from
    data: str  # which images (e.g. "id_val of runs/demo/world")
    seed: int
    measured: dict[str, Any] = Field(default_factory=dict)  # the rule's ID pass-rate error on held-out images

    @model_validator(mode="after")
    def _check(self) -> AdHocRule:
        if sorted(set(self.ks)) != self.ks or self.ks[0] < 2:
            raise ValueError("ks must be increasing, each >= 2")
        if len(self.thresholds) != len(self.ks) or len(self.quantiles) != len(self.ks):
            raise ValueError("one threshold and one quantile summary per K")
        return self


class TextSideInfo(BaseModel):
    """The bundle's text side: label sets at request time (docs/label-sets.md).

    ``text.onnx`` maps token ids to class embeddings (with the learned context when asked), ``scores.onnx``
    maps image features and class embeddings to the scoring module's outputs, and ``model.onnx`` gives the
    image features as its output ``features_output``. Each prompt mode has its own default rule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_file: str = TEXT_ONNX_FILE
    scores_file: str = SCORES_ONNX_FILE
    tokenizer_file: str = TOKENIZER_FILE
    features_output: str = FEATURES_NAME
    context_length: int = Field(gt=3)
    embed_dim: int = Field(gt=0)
    n_ctx: int = Field(ge=0)  # learned context vectors in text.onnx (0: only zero-shot prompts)
    learned_prefix: str | None = None  # the placeholder text before a name in a learned prompt (None: no context)
    templates: list[str] = Field(min_length=1)  # zero-shot prompt templates
    default_prompts: Literal["learned", "zero-shot"]
    parity: dict[str, float] = Field(default_factory=dict)  # worst |onnx - torch| of embeddings, per check
    rules: dict[str, AdHocRule] = Field(default_factory=dict)  # prompt mode -> default rule (ad-hoc sets)

    @property
    def prompt_modes(self) -> list[str]:
        return ["learned", "zero-shot"] if self.n_ctx > 0 else ["zero-shot"]


class FileEntry(BaseModel):
    """A file of the bundle with its content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    size: int


class BundleManifest(BaseModel):
    """Everything the service needs to know about the bundle's weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1  # SCHEMA_VERSION; bump both together
    name: str  # model name shown to clients
    version: str  # model version shown to clients
    description: str | None = None  # what the model knows, for people (shown by /model and the try-it page)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    deltagate_version: str = Field(default_factory=lambda: DELTAGATE_VERSION)  # the deltagate that wrote it
    architecture: ArchitectureInfo
    preprocess: PreprocessConfig
    classes: list[str] = Field(min_length=1)
    logit_scale: float = Field(gt=0)  # multiplier of cosine similarities
    scores: ScoreParams = Field(default_factory=ScoreParams)
    prompt: dict[str, Any] = Field(default_factory=dict)  # how class embeddings were made (method, n_ctx, ...)
    calibration: CalibrationRecord | None = None
    validation: ValidationRecord | None = None  # the prompts' ID val accuracy at the end of `deltagate train`
    evaluation: dict[str, Any] | None = None  # summary written by `deltagate evaluate`
    onnx: OnnxInfo | None = None
    int8: Int8Info | None = None  # the int8 graph, when exported with --quantize int8
    fp16: Fp16Info | None = None  # the float16 graph, when exported with --quantize fp16
    text: TextSideInfo | None = None  # the text side (label sets); None: fixed classes only
    files: dict[str, FileEntry]

    @field_validator("scores", mode="before")
    @classmethod
    def _read_old_score_names(cls, data: Any) -> Any:
        """Manifests written before every score parameter was named after its score call ΔEnergy's
        ``top_c``, ``temperature``, ``reset`` and ``reset_logit`` (:func:`models.scoring_spec.renamed_legacy_keys`)."""
        return renamed_legacy_keys(data) if isinstance(data, dict) else data

    def graph_calibrations(self) -> list[CalibrationRecord]:
        """Every gate calibration the bundle's graphs carry, on its gate score: the float32 graph's
        (``calibration``; the float16 graph serves with it too) and the int8 graph's own, when present.
        Read it on the manifest as stored (:attr:`Bundle.stored_manifest`): a graph's view replaces
        ``calibration`` with that graph's."""
        if self.calibration is None:
            return []
        int8 = self.int8.calibration if self.int8 is not None else None
        return [self.calibration, *([int8] if int8 is not None and int8.score == self.calibration.score else [])]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded (validated) bundle directory."""

    path: Path
    manifest: BundleManifest

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path:
        """Path of the ONNX file. Raises BundleError if the bundle has none."""
        if ONNX_FILE not in self.manifest.files:
            raise BundleError(f"{self.path}: bundle has no {ONNX_FILE} (export it with `deltagate export`)")
        return self.path / ONNX_FILE

    @property
    def stored_manifest(self) -> BundleManifest:
        """The manifest as the bundle stores it; differs from ``manifest`` in a graph's view
        (:meth:`int8_variant`), whose ``calibration`` is that graph's."""
        return self.manifest

    @overload
    def _graph_info(self, tag: Literal["int8"]) -> Int8Info: ...

    @overload
    def _graph_info(self, tag: Literal["fp16"]) -> Fp16Info: ...

    def _graph_info(self, tag: Literal["int8", "fp16"]) -> Int8Info | Fp16Info:
        info: Int8Info | Fp16Info | None = getattr(self.manifest, tag)
        if info is None or info.file not in self.manifest.files:
            raise BundleError(
                f"{self.path}: bundle has no {tag} graph (export it with `deltagate export --quantize {tag}`)"
            )
        return info

    @property
    def int8_path(self) -> Path:
        """Path of the int8 ONNX file. Raises BundleError if the bundle has none."""
        return self.path / self._graph_info("int8").file

    def int8_variant(self) -> Bundle:
        """This bundle as served by its int8 graph: ``onnx_path`` is the int8 file, and the manifest's
        ``calibration`` is the int8 graph's own threshold (the float32 one does not fit its ΔEnergy).

        Raises:
            BundleError: no int8 graph, or it has no calibrated threshold.
        """
        info = self._graph_info("int8")
        if info.calibration is None:
            raise BundleError(f"{self.path}: the int8 graph has no calibrated threshold (quantize with ID val data)")
        view = self.manifest.model_copy(update={"calibration": info.calibration})
        return _GraphBundle(self.path, view, info.file, self.stored_manifest)

    def fp16_variant(self) -> Bundle:
        """This bundle as served by its float16 graph: ``onnx_path`` is the float16 file, with the float32
        threshold (see :class:`Fp16Info`).

        Raises:
            BundleError: no float16 graph.
        """
        return _GraphBundle(self.path, self.manifest, self._graph_info("fp16").file, self.stored_manifest)

    @property
    def has_onnx(self) -> bool:
        return ONNX_FILE in self.manifest.files

    @property
    def has_text(self) -> bool:
        """Whether the bundle serves label sets: a text side whose files are all listed."""
        t = self.manifest.text
        return t is not None and all(f in self.manifest.files for f in (t.text_file, t.scores_file, t.tokenizer_file))

    def text_side(self) -> TextSideInfo:
        """The text side. Raises BundleError if the bundle has none."""
        if not self.has_text:
            raise BundleError(f"{self.path}: bundle has no text side (label sets need a bundle exported by "
                              "deltagate 0.1 or later with its text tower: re-export it)")
        assert self.manifest.text is not None
        return self.manifest.text

    def fingerprint(self) -> str:
        """SHA-256 over the hashes of the files a label set depends on (vision and text graphs, tokenizer,
        weights): a label-set file records it, and a bundle with other files refuses the set."""
        names = sorted(f for f in self.manifest.files if f not in (INT8_ONNX_FILE, FP16_ONNX_FILE))
        h = hashlib.sha256()
        for f in names:
            h.update(f"{f}:{self.manifest.files[f].sha256}\n".encode())
        return h.hexdigest()


@dataclass
class _GraphBundle(Bundle):
    """The bundle served by another of its graphs (:meth:`Bundle.int8_variant`, :meth:`Bundle.fp16_variant`)."""

    graph_file: str
    stored: BundleManifest  # the manifest as stored (the float32 graph's calibration included)

    @property
    def onnx_path(self) -> Path:
        return self.path / self.graph_file

    @property
    def stored_manifest(self) -> BundleManifest:
        return self.stored


def _read_manifest(path: Path) -> BundleManifest:
    mpath = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: bundle directory not found")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: manifest missing (is {path} a deltagate bundle?)")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath}: manifest must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: schema_version {version!r} is not supported (this deltagate reads {SCHEMA_VERSION}); "
            "re-export the bundle with this version"
        )
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"{mpath}: invalid manifest: {problems}") from exc


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory.

    Args:
        path: the bundle directory.
        verify: check every file's SHA-256 against the manifest.

    Returns:
        The bundle.

    Raises:
        BundleError: missing directory/manifest/file, invalid JSON or schema, hash mismatch.
    """
    p = Path(path)
    manifest = _read_manifest(p)
    if WEIGHTS_FILE not in manifest.files:
        raise BundleError(f"{p / MANIFEST_FILE}: lists no {WEIGHTS_FILE}")
    for fname, entry in manifest.files.items():
        fpath = p / fname
        if not fpath.is_file():
            raise BundleError(f"{fpath}: file listed in the manifest is missing")
        if verify and sha256_file(fpath) != entry.sha256:
            raise BundleError(f"{fpath}: content hash does not match the manifest (corrupt or modified)")
    logger.debug("loaded bundle %s (%s %s, %d classes)", p, manifest.name, manifest.version, len(manifest.classes))
    return Bundle(p, manifest)


def _file_entries(path: Path) -> dict[str, FileEntry]:
    return {
        f: FileEntry(sha256=sha256_file(path / f), size=(path / f).stat().st_size)
        for f in (WEIGHTS_FILE, ONNX_FILE, INT8_ONNX_FILE, FP16_ONNX_FILE, TEXT_ONNX_FILE, SCORES_ONNX_FILE,
                  TOKENIZER_FILE)
        if (path / f).is_file()
    }


def save_bundle(path: str | Path, module: ScoringModule, **manifest_fields: Any) -> Bundle:
    """Write weights and manifest; hashes every bundle file present (write the ONNX file first).

    Args:
        path: output directory (created).
        module: the scoring module whose state dict is saved.
        **manifest_fields: the :class:`BundleManifest` fields except ``files``, ``logit_scale`` and
            ``scores`` (taken from the module).

    Returns:
        The written bundle.
    """
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(p / WEIGHTS_FILE))
    manifest = BundleManifest(
        logit_scale=module.logit_scale, scores=module.score_params, files=_file_entries(p), **manifest_fields
    )
    _write_manifest(p, manifest)
    return Bundle(p, manifest)


def update_manifest(path: str | Path, **changes: Any) -> Bundle:
    """Change manifest fields (e.g. calibration, evaluation, onnx) and re-hash the files.

    Args:
        path: bundle directory.
        **changes: fields to replace; validated.

    Returns:
        The updated bundle.
    """
    p = Path(path)
    current = _read_manifest(p).model_dump()
    current.update({k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in changes.items()})
    current["files"] = {k: v.model_dump() for k, v in _file_entries(p).items()}
    manifest = BundleManifest.model_validate(current)
    _write_manifest(p, manifest)
    return Bundle(p, manifest)


def _write_manifest(path: Path, manifest: BundleManifest) -> None:
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path / MANIFEST_FILE)
