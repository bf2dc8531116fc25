"""The scoring module's interface without torch: its tensor names, its score parameters and the gate.

:mod:`models.scoring_module` (the torch module) and :mod:`models.scores` (the score functions)
re-export these names; this module exists so that the bundle manifest and the ONNX engine can be
imported on an ONNX-only install (no torch, no open_clip; see ``docs/operations.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

if TYPE_CHECKING:
    import numpy as np

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "FEATURES_NAME", "TEXT_INPUT_NAMES", "TEXT_OUTPUT_NAME",
           "SCORE_INPUT_NAMES", "RESET_MODES", "ResetMode", "ScoreParams", "ScoreParamSpec",
           "score_param_specs", "score_param_fields", "renamed_legacy_keys", "grid_values", "score_params_table",
           "LOGIT_SCALE",
           "NUM_CLASSES", "gate_scores"]

INPUT_NAME = "pixel_values"  # (B, 3, H, W) float32, preprocessed with the bundle's config
OUTPUT_NAMES: tuple[str, str, str, str] = ("logits", "probs", "delta_energy", "energy")
# Bundles with a text side: model.onnx also gives the L2-normalised image features (B, D), so that
# label sets are scored against them (scores.onnx) without a second vision forward.
FEATURES_NAME = "image_features"
# text.onnx: token ids (N, T, L) int64 and use_context (N,) float32 (1: the learned context replaces
# the prompt's placeholder tokens) -> (N, D) L2-normalised text embeddings (mean over the T prompts).
TEXT_INPUT_NAMES: tuple[str, str] = ("input_ids", "use_context")
TEXT_OUTPUT_NAME = "text_embeddings"
# scores.onnx: image features (B, D) and class embeddings (K, D) -> OUTPUT_NAMES (the scoring head).
SCORE_INPUT_NAMES: tuple[str, str] = (FEATURES_NAME, "class_embeddings")


ResetMode = Literal["value", "min", "mean"]
RESET_MODES: tuple[str, ...] = get_args(ResetMode)

# Symbolic grid entries, resolved per model by grid_values().
LOGIT_SCALE = "logit_scale"  # the model's logit scale, rounded to 4 digits
NUM_CLASSES = "num_classes"  # the task's number of classes K (a grid of counts keeps values in 1..K)
TEMPERATURES: tuple[Any, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, LOGIT_SCALE)  # protocol §4


def _param(default: Any, *, score: str, help: str, grid: tuple[Any, ...], legacy: str | None = None) -> Any:
    """One score parameter: its default, the score it belongs to, its help text, its search grid, and the
    key it had in manifests written before the parameters were named after their score (read, never written)."""
    return field(default=default, metadata={"score": score, "help": help, "grid": grid, "legacy": legacy})


@dataclass(frozen=True)
class ScoreParams:
    """Parameters of the scores (never of the loss); stored in every bundle so serving matches evaluation.

    **The one declaration** of every score parameter: its name (the manifest key, ``/model``'s key and
    the command-line flag ``--<name>``), type, default (METHOD.md's), help text and search grid
    (``docs/evidence/protocol.md`` §4). :func:`score_param_specs` reads it; the selection grid
    (:mod:`models.train.selection`), the ``deltagate train`` / ``export`` flags
    (``deltagate/commands/score_options.py``), the manifest and ``/model`` all come from here. Each
    parameter is named ``<score>_<parameter>`` and belongs to one score, selected on its own: ΔEnergy's
    T, c and reset are independent of energy's T and of MCM's τ.
    """

    delta_energy_temperature: float = _param(
        1.0, score="delta_energy", grid=TEMPERATURES, legacy="temperature",
        help="ΔEnergy: T of the energy E_T(z) = -T·logsumexp(z/T) whose rise it measures.")
    delta_energy_top_c: int = _param(
        1, score="delta_energy", grid=(1, 2, 4, NUM_CLASSES), legacy="top_c",
        help="ΔEnergy: c, how many of the largest logits are reset, one at a time.")
    delta_energy_reset: ResetMode = _param(
        "value", score="delta_energy", grid=RESET_MODES, legacy="reset",
        help="ΔEnergy: what a reset logit becomes: 'value' (delta_energy_reset_logit) or the image's own 'min' / "
             "'mean' logit.")
    delta_energy_reset_logit: float = _param(
        0.0, score="delta_energy", grid=(0.0,), legacy="reset_logit",
        help="ΔEnergy: the value of a reset logit when delta_energy_reset is 'value' (0: the cosine cropped to zero).")
    energy_temperature: float = _param(
        1.0, score="energy", grid=TEMPERATURES, help="energy score: its own T.")
    mcm_tau: float = _param(
        1.0, score="mcm", grid=(0.01, 0.03, 0.1, 0.3, 1.0),
        help="MCM: softmax temperature over cosine similarities (Ming et al., 2022).")

    def __post_init__(self) -> None:
        if self.delta_energy_reset not in RESET_MODES:
            raise ValueError(f"unknown delta_energy_reset {self.delta_energy_reset!r}; valid: {', '.join(RESET_MODES)}")
        if min(self.delta_energy_temperature, self.energy_temperature, self.mcm_tau) <= 0:
            raise ValueError("delta_energy_temperature, energy_temperature and mcm_tau must be > 0")
        if self.delta_energy_top_c < 1:
            raise ValueError(f"delta_energy_top_c must be >= 1, got {self.delta_energy_top_c}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreParams:
        """Score parameters from a mapping, reading the keys of older manifests too (:func:`renamed_legacy_keys`).

        Raises:
            ValueError: an unknown key (the message lists the valid ones), or a bad value.
        """
        data = renamed_legacy_keys(data)
        names = [s.name for s in score_param_specs()]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown score parameter(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**data)


@dataclass(frozen=True)
class ScoreParamSpec:
    """What :class:`ScoreParams` declares about one parameter (read with :func:`score_param_specs`)."""

    name: str  # field, manifest key, /model key; the flag is --name with '-' for '_'
    score: str  # the score it belongs to (a name of models.scores.SCORE_NAMES)
    type: type  # int, float or str
    default: Any
    help: str
    grid: tuple[Any, ...]  # searched values; LOGIT_SCALE / NUM_CLASSES are resolved by grid_values()
    choices: tuple[str, ...] | None  # the allowed values of a str parameter
    legacy: str | None  # its key in older manifests


def score_param_specs() -> tuple[ScoreParamSpec, ...]:
    """Every score parameter as :class:`ScoreParams` declares it, in declaration order."""
    hints = get_type_hints(ScoreParams)
    out = []
    for f in fields(ScoreParams):
        choices = get_args(hints[f.name]) or None
        out.append(ScoreParamSpec(f.name, f.metadata["score"], str if choices else hints[f.name], f.default,
                                  f.metadata["help"], f.metadata["grid"], choices, f.metadata["legacy"]))
    return tuple(out)


def score_param_fields(score: str) -> tuple[str, ...]:
    """The parameters of one score (empty for a score without any, such as ``msp``)."""
    return tuple(s.name for s in score_param_specs() if s.score == score)


def renamed_legacy_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """A score-parameter mapping with the keys of older manifests (``top_c``, ``temperature``, ``reset``,
    ``reset_logit``) renamed to today's names.

    Raises:
        ValueError: a parameter given under both its old and its new name.
    """
    out = dict(data)
    for spec in score_param_specs():
        if spec.legacy is not None and spec.legacy in out:
            if spec.name in out:
                raise ValueError(f"score parameter given twice: {spec.legacy!r} (old name) and {spec.name!r}")
            out[spec.name] = out.pop(spec.legacy)
    return out


def grid_values(spec: ScoreParamSpec, logit_scale: float, num_classes: int) -> tuple[Any, ...]:
    """The values searched for one parameter on a model with this logit scale and this many classes.

    :data:`LOGIT_SCALE` becomes the scale rounded to 4 digits and :data:`NUM_CLASSES` becomes K (a
    grid that holds it keeps the values in 1..K); numeric grids are sorted without repeats.
    """
    values = [round(float(logit_scale), 4) if v == LOGIT_SCALE else num_classes if v == NUM_CLASSES else v
              for v in spec.grid]
    if NUM_CLASSES in spec.grid:
        values = [v for v in values if 1 <= v <= num_classes]
    if spec.choices is None:
        return tuple(sorted(set(values)))
    return tuple(dict.fromkeys(values))


def score_params_table() -> str:
    """The Markdown table of every score parameter (docs/bundle.md), generated from the declaration."""
    from models.markdown import markdown_table

    def shown(v: Any) -> str:
        return {LOGIT_SCALE: "s (the logit scale)", NUM_CLASSES: "K"}.get(v, str(v)) if isinstance(v, str) else f"{v:g}"

    rows = [[f"`{s.name}`", f"`--{s.name.replace('_', '-')}`", f"`{s.default}`",
             "{" + ", ".join(shown(v) for v in s.grid) + "}", s.help] for s in score_param_specs()]
    return markdown_table(["manifest key", "flag", "default", "searched", "meaning"], rows)


def gate_scores(outputs: Mapping[str, np.ndarray], score: str, logit_scale: float, params: ScoreParams) -> np.ndarray:
    """The gating score (higher = ID) of a batch of module outputs.

    Args:
        outputs: the module's outputs for N images (``logits`` (N, K), ``delta_energy`` (N,), ...).
        score: the gate's score name (the bundle's ``calibration.score``).
        logit_scale: the bundle's logit scale (for MCM).
        params: the bundle's score parameters.

    Returns:
        (N,) float64 scores; ΔEnergy is the graph's own output, other scores are computed from the logits
        with :func:`models.scores.id_score` (imported on first use: it needs torch).
    """
    import numpy as np  # on use: the command line reads ScoreParams for its flags, and `deltagate --help` stays light

    if score == "delta_energy":
        return np.asarray(outputs["delta_energy"], dtype=np.float64).reshape(-1)  # (N,)
    # Another gate is computed from the logits with the one torch definition of the scores, so it
    # needs the 'torch' extra; the default ΔEnergy gate is the graph's output and needs no torch.
    import torch

    from models.scores import id_score

    logits = torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32))  # (N, K)
    return id_score(score, logits, logit_scale, params).numpy().astype(np.float64)  # (N,)
