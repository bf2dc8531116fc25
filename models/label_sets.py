"""Label sets: classes named at request time, with a gate (docs/label-sets.md). No torch.

A label set is K labels, a prompt mode, their (K, D) text embeddings and a gate:

* a **named set** is one small JSON file (:class:`LabelSetFile`) in a label-set directory, written
  atomically (:func:`write_label_set`) by ``deltagate label-set create`` or ``PUT /label-sets/{name}``.
  With example images per label its threshold is calibrated on them (``calibrated: true``), as the
  bundle's own threshold is calibrated on ID validation images; without examples it gates with the
  bundle's default rule (``calibrated: false``).
* an **ad-hoc set** is the labels of one request; it always gates with the default rule.

The default rule (:class:`models.bundle.AdHocRule`, fitted offline by :mod:`models.train.label_rules`)
gives a threshold for K labels: :func:`rule_calibration`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.bundle import AdHocRule, Bundle
from models.calibration import CalibrationRecord
from models.prompts import PromptMode, label_text
from models.text_runtime import LabelError
from models.tokenizer import clean_text

__all__ = [
    "LABEL_SET_FORMAT",
    "LABEL_SET_SUFFIX",
    "NAME_PATTERN",
    "RESERVED_NAMES",
    "AD_HOC",
    "LabelLimits",
    "LabelError",
    "LabelSetFile",
    "BundleRef",
    "check_name",
    "check_labels",
    "examples_needed",
    "rule_calibration",
    "make_label_set",
    "write_label_set",
    "read_label_set",
    "label_set_path",
]

LABEL_SET_FORMAT = 1
LABEL_SET_SUFFIX = ".json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AD_HOC = "ad-hoc"  # the label_set of a request that names its labels (responses and metrics)
RESERVED_NAMES = frozenset({AD_HOC, "bundle", "other"})  # values of the metrics' label_set label


@dataclass(frozen=True)
class LabelLimits:
    """What one label set may hold (service settings; the CLI uses the defaults)."""

    max_labels: int = 256
    max_label_chars: int = 100


def check_name(name: str) -> str:
    """A set name: 1-64 letters, digits, ``.``, ``_``, ``-`` (starting with a letter or digit), not reserved."""
    if not NAME_PATTERN.match(name):
        raise LabelError(f"label-set name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise LabelError(f"label-set name {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def check_labels(labels: Sequence[str], limits: LabelLimits) -> list[str]:
    """The labels of a set, checked: 2 to ``max_labels``, each non-empty, without surrounding whitespace or
    control characters, at most ``max_label_chars`` long, and no two reading the same (after the prompt's
    underscore-to-space and the tokenizer's cleaning: ``Red_Circle`` and ``red circle`` are one label).

    Raises:
        LabelError: what is wrong, naming the label.
    """
    if len(labels) < 2:
        raise LabelError(f"a label set needs at least 2 labels, got {len(labels)}")
    if len(labels) > limits.max_labels:
        raise LabelError(f"{len(labels)} labels; the limit is {limits.max_labels}")
    seen: dict[str, str] = {}
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise LabelError(f"label {i} is empty or only whitespace")
        if label != label.strip():
            raise LabelError(f"label {i} ({label!r}) has leading or trailing whitespace")
        if any(ord(c) < 32 or ord(c) == 127 for c in label):
            raise LabelError(f"label {i} ({label!r}) contains a control character")
        if len(label) > limits.max_label_chars:
            raise LabelError(f"label {i} is {len(label)} characters long; the limit is {limits.max_label_chars}")
        key = clean_text(label_text(label))
        if key in seen:
            raise LabelError(f"labels {seen[key]!r} and {label!r} are duplicates (both read {key!r})")
        seen[key] = label
    return list(labels)


def rule_calibration(rule: AdHocRule, k: int) -> CalibrationRecord:
    """The default rule's gate for K labels, as a calibration record (threshold and quantile summary).

    K between two fitted values: the threshold and every quantile are interpolated linearly in 1/K.

    Raises:
        LabelError: K outside the fitted range (the rule says nothing there).
    """
    ks = np.asarray(rule.ks, dtype=np.float64)
    if k < rule.ks[0] or k > rule.ks[-1]:
        raise LabelError(f"the bundle's default rule covers label sets of {rule.ks[0]} to {rule.ks[-1]} labels, "
                         f"not {k}: create a named label set with examples (calibrated) instead")
    x, xs = 1.0 / k, 1.0 / ks[::-1]  # increasing in 1/K
    q = np.asarray(rule.quantiles, dtype=np.float64)[::-1]  # (nK, Q)
    values = np.array([np.interp(x, xs, q[:, j]) for j in range(q.shape[1])])  # (Q,)
    threshold = float(np.interp(x, xs, np.asarray(rule.thresholds, dtype=np.float64)[::-1]))
    levels = np.linspace(0.0, 1.0, len(values))
    mids = (values[1:] + values[:-1]) / 2.0  # equally spaced levels: the summary's distribution, piecewise
    mean = float(mids.mean())
    return CalibrationRecord(
        score=rule.score, threshold=threshold, target_tpr=rule.target_tpr, split=f"default rule, K={k}",
        n=rule.images, mean=mean, std=float(np.sqrt(((mids - mean) ** 2).mean())),
        min=float(values[0]), max=float(values[-1]), achieved_tpr=rule.target_tpr,
        quantile_levels=levels.tolist(), quantile_values=np.maximum.accumulate(values).tolist(),
    )


def examples_needed(rule: AdHocRule | None, k: int) -> int | None:
    """The fewest examples per label for a calibrated set of K labels on this bundle (``rule.measured``), or None
    when it was not measured.

    ``examples_per_label`` maps each K where some n tried was enough to the fewest n that kept 90 % of the
    draws within ±2 points (fewer labels need more examples each). A K between measured ones takes the value
    of the nearest measured K at or below it; a K below every such K (where no n tried was enough) takes the
    most examples tried (``measured["examples"]``), the most that was measured.
    """
    if rule is None:
        return None
    found = {int(key): int(n) for key, n in (rule.measured.get("examples_per_label") or {}).items() if n is not None}
    tried = [int(n) for per in (rule.measured.get("examples") or {}).get("per_k", {}).values() for n in per]
    at_or_below = [key for key in found if key <= k]
    if at_or_below:
        return found[max(at_or_below)]
    if tried:
        return max(tried)
    return found[min(found)] if found else None


class BundleRef(BaseModel):
    """Which bundle a label set belongs to (its embeddings and threshold are that bundle's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    fingerprint: str  # models.bundle.Bundle.fingerprint()


class LabelSetFile(BaseModel):
    """The label-set file: one JSON object (docs/label-sets.md has the fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    name: str
    labels: list[str]
    prompts: PromptMode
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    source: str  # "cli" or "api"
    bundle: BundleRef
    embedding_dim: int
    embeddings_b64: str  # (K, D) float32 little-endian, base64
    embeddings_sha256: str
    score_params: dict[str, Any]  # the bundle's score parameters the gate was fitted with
    calibrated: bool  # True: threshold fitted on examples of every label; False: the default rule
    calibration: CalibrationRecord  # the gate: threshold, target_tpr, quantile summary
    examples: dict[str, int] = Field(default_factory=dict)  # label -> examples the threshold was fitted on
    sha256: str = ""  # of the file's JSON without this field (sorted keys): a damaged file is refused

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    def embeddings(self) -> np.ndarray:
        """(K, D) float32."""
        raw = base64.b64decode(self.embeddings_b64)
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return arr.reshape(len(self.labels), self.embedding_dim)

    def content_hash(self) -> str:
        body = self.model_dump(mode="json", exclude={"sha256"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_label_set(
    bundle: Bundle, name: str, labels: Sequence[str], prompts: PromptMode, embeddings: np.ndarray, *,
    source: str, example_scores: Mapping[str, np.ndarray] | None = None, target_tpr: float = 0.95,
    min_examples_per_label: int | None = None,
) -> LabelSetFile:
    """A label set's file content: calibrated on the examples' gate scores, or gated by the default rule.

    Args:
        bundle: the bundle (text side, calibration's gate score, score parameters, default rule).
        name: the set's name.
        labels: the checked labels (:func:`check_labels`).
        prompts: the prompt mode the embeddings were made in.
        embeddings: (K, D) their text embeddings.
        source: "cli" or "api".
        example_scores: label -> gate scores of that label's example images (scored against the whole set);
            None or empty: no examples, the default rule.
        target_tpr: share of ID images that must pass (with examples).
        min_examples_per_label: fewest examples per label for a calibrated set (default: the bundle's
            measured number, :func:`examples_needed`; 1 when it was not measured).

    Raises:
        LabelError: examples for some labels but not all, for an unknown label, too few, or no default rule
            for a set without examples.
    """
    check_name(name)
    info = bundle.text_side()
    gate = bundle.manifest.calibration.score if bundle.manifest.calibration is not None else "delta_energy"
    rule = info.rules.get(prompts)
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.shape != (len(labels), info.embed_dim):
        raise ValueError(f"embeddings of shape {emb.shape} for {len(labels)} labels of dimension {info.embed_dim}")
    counts: dict[str, int] = {}
    if example_scores:
        unknown = sorted(set(example_scores) - set(labels))
        if unknown:
            raise LabelError(f"examples for labels that are not in the set: {unknown}")
        missing = [label for label in labels if len(example_scores.get(label, ())) == 0]
        if missing:
            raise LabelError(f"examples are needed for every label or none; none for {missing}")
        counts = {label: len(example_scores[label]) for label in labels}
        need = min_examples_per_label or examples_needed(rule, len(labels)) or 1
        few = {label: n for label, n in counts.items() if n < need}
        if few:
            raise LabelError(
                f"a calibrated set of {len(labels)} labels needs at least {need} examples per label on this bundle "
                f"(measured: fewer do not keep the ID pass rate within ±2 points of the target; "
                f"docs/label-sets.md); too few for {few}. Send more, or none for the default rule (calibrated: false)")
        scores = np.concatenate([np.asarray(example_scores[label], dtype=np.float64) for label in labels])
        record = CalibrationRecord.from_scores(scores, target_tpr=target_tpr, score=gate,
                                               split=f"examples ({sum(counts.values())} images)")
    else:
        if rule is None:
            raise LabelError(f"the bundle has no default rule for {prompts} prompts: give examples per label "
                             "(or fit one: deltagate label-set fit-rule)")
        record = rule_calibration(rule, len(labels))
    out = LabelSetFile(
        name=name, labels=list(labels), prompts=prompts, source=source,
        bundle=BundleRef(name=bundle.manifest.name, version=bundle.manifest.version, fingerprint=bundle.fingerprint()),
        embedding_dim=info.embed_dim, embeddings_b64=base64.b64encode(emb.tobytes()).decode("ascii"),
        embeddings_sha256=hashlib.sha256(emb.tobytes()).hexdigest(),
        score_params=_score_params(bundle), calibrated=bool(example_scores), calibration=record, examples=counts,
    )
    return out.model_copy(update={"sha256": out.content_hash()})


def _score_params(bundle: Bundle) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(bundle.manifest.scores)


def label_set_path(directory: Path, name: str) -> Path:
    return directory / f"{check_name(name)}{LABEL_SET_SUFFIX}"


def write_label_set(directory: str | Path, label_set: LabelSetFile) -> Path:
    """Write a label set atomically: a temporary file in the same directory, flushed and fsynced, renamed over
    the target, then the directory fsynced. A crash at any point leaves the old file or the new one, never
    a part of one (a leftover temporary file starts with ``.`` and is never read as a set).

    Returns:
        The file's path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = label_set_path(d, label_set.name)
    data = (json.dumps(label_set.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{label_set.name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def read_label_set(path: str | Path, max_bytes: int = 64 << 20) -> LabelSetFile:
    """Read and check a label-set file (schema, content hash, embedding hash and shape).

    Raises:
        LabelError: unreadable, too large, invalid, or damaged (hash mismatch); the message names the file.
    """
    p = Path(path)
    try:
        if p.stat().st_size > max_bytes:
            raise LabelError(f"{p}: {p.stat().st_size} bytes, more than a label set may have ({max_bytes})")
        raw = json.loads(p.read_bytes())
        ls = LabelSetFile.model_validate(raw)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelError(f"{p}: cannot read the label set: {exc}") from exc
    except ValidationError as exc:
        raise LabelError(f"{p}: invalid label set: {exc.error_count()} error(s): {exc.errors()[0]['msg']}") from exc
    if ls.sha256 != ls.content_hash():
        raise LabelError(f"{p}: content hash does not match (damaged or edited by hand)")
    if p.stem != ls.name:
        raise LabelError(f"{p}: file name does not match the set's name {ls.name!r}")
    try:
        emb = ls.embeddings()
    except ValueError as exc:
        raise LabelError(f"{p}: embeddings do not have {len(ls.labels)} x {ls.embedding_dim} values") from exc
    if hashlib.sha256(np.ascontiguousarray(emb, dtype="<f4").tobytes()).hexdigest() != ls.embeddings_sha256:
        raise LabelError(f"{p}: embeddings hash does not match")
    return ls
