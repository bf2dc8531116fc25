"""Label sets in the service: named sets from a directory (picked up when they change), ad-hoc labels with
cached embeddings, and their scores (docs/label-sets.md).

Every worker process holds its own :class:`LabelSetStore` over the same directory. A worker looks at the
directory's files (name, size, modification time) at most every ``label_sets_poll_s`` seconds when a
request needs a set, and always before it answers 404 for an unknown name, so a set written by one
worker (``PUT``) or by ``deltagate label-set create`` (or a Kubernetes ConfigMap) is answered by every
worker without a restart. Files are written atomically (:func:`models.label_sets.write_label_set`); a
file that does not load (damaged, another bundle's) is skipped and logged, and the set it held before
stays served until it is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.bundle import LABEL_SETS_DIR, Bundle
from models.calibration import CalibrationRecord
from models.label_sets import (
    AD_HOC,
    LABEL_SET_SUFFIX,
    LabelLimits,
    LabelSetFile,
    check_labels,
    check_name,
    read_label_set,
    rule_calibration,
    write_label_set,
)
from models.prompts import PromptMode
from models.text_runtime import LabelError, LabelScorer, TextEncoder
from service.errors import (
    InvalidFieldError,
    InvalidLabelsError,
    LabelSetLimitError,
    LabelSetNotFoundError,
    LabelSetsUnavailableError,
)
from service.metrics import BUNDLE_LABEL_SET
from service.settings import Settings

__all__ = ["Vocabulary", "LoadedSet", "LabelSetStore", "LabelSets", "label_sets_directory"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocabulary:
    """The classes a request is answered with: a named set's or ad-hoc labels' (the bundle's own: None)."""

    label_set: str  # the set's name, or AD_HOC
    labels: list[str]
    embeddings: np.ndarray  # (K, D) float32
    calibration: CalibrationRecord  # the gate (examples or the default rule)
    calibrated: bool
    prompts: str


@dataclass(frozen=True)
class LoadedSet:
    """A named set as served: its file and its embeddings."""

    file: LabelSetFile
    embeddings: np.ndarray  # (K, D)
    path: Path

    def vocabulary(self) -> Vocabulary:
        f = self.file
        return Vocabulary(f.name, f.labels, self.embeddings, f.calibration, f.calibrated, f.prompts)


def label_sets_directory(settings: Settings, bundle: Bundle) -> Path:
    return settings.label_sets_dir if settings.label_sets_dir is not None else bundle.path / LABEL_SETS_DIR


@dataclass
class _Stamp:
    mtime_ns: int
    size: int
    ino: int


@dataclass
class LabelSetStore:
    """The named sets of one directory, as this worker sees them.

    Args:
        directory: the label-set directory (created on the first write).
        bundle: the served bundle; a set made for another bundle (fingerprint) is refused.
        max_sets: sets loaded at most (the first by name); files beyond are logged and skipped.
        poll_s: least time between two looks at the directory.
        limits: label limits a loaded set must respect too.
    """

    directory: Path
    bundle: Bundle
    max_sets: int
    poll_s: float
    limits: LabelLimits
    sets: dict[str, LoadedSet] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # file name -> why it is not served
    _stamps: dict[str, _Stamp] = field(default_factory=dict)
    _last_scan: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, force: bool = False) -> None:
        """Load new and changed files, drop removed ones (at most every ``poll_s`` unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_scan < self.poll_s:
            return
        with self._lock:
            self._last_scan = now
            self._scan()

    def _scan(self) -> None:
        try:
            entries = sorted(p for p in self.directory.iterdir()
                             if p.suffix == LABEL_SET_SUFFIX and not p.name.startswith("."))
        except FileNotFoundError:
            entries = []
        seen: set[str] = set()
        for path in entries:
            try:
                st = path.stat()
            except FileNotFoundError:  # removed between the listing and now
                continue
            seen.add(path.name)
            stamp = _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)
            if self._stamps.get(path.name) == stamp:
                continue
            self._stamps[path.name] = stamp
            self._load(path)
        for name in set(self._stamps) - seen:  # the file is gone: so is its set
            del self._stamps[name]
            self.errors.pop(name, None)
            self.sets.pop(Path(name).stem, None)

    def _load(self, path: Path) -> None:
        try:
            ls = read_label_set(path)
            if ls.bundle.fingerprint != self.bundle.fingerprint():
                raise LabelError(f"{path}: made for bundle {ls.bundle.name} {ls.bundle.version} "
                                 f"(fingerprint {ls.bundle.fingerprint[:12]}), not the served one: recreate it")
            check_labels(ls.labels, self.limits)
            if ls.name not in self.sets and len(self.sets) >= self.max_sets:
                raise LabelError(f"{path}: not loaded, {self.max_sets} label sets are loaded already "
                                 "(DELTAGATE_MAX_LABEL_SETS)")
        except LabelError as exc:
            if self.errors.get(path.name) != str(exc):
                logger.warning("label set not served: %s", exc)
            self.errors[path.name] = str(exc)
            return
        self.errors.pop(path.name, None)
        self.sets[ls.name] = LoadedSet(ls, ls.embeddings(), path)
        logger.info("label set loaded", extra={"fields": {
            "label_set": ls.name, "labels": len(ls.labels), "prompts": ls.prompts, "calibrated": ls.calibrated,
            "threshold": ls.calibration.threshold, "path": str(path)}})

    def get(self, name: str) -> LoadedSet | None:
        """The set of that name; an unknown name is looked up on disk at once (another worker may have made it)."""
        self.refresh()
        found = self.sets.get(name)
        if found is None:
            self.refresh(force=True)
            found = self.sets.get(name)
        return found

    def all(self) -> list[LoadedSet]:
        self.refresh()
        return [self.sets[name] for name in sorted(self.sets)]

    def put(self, label_set: LabelSetFile) -> LoadedSet:
        """Write a set atomically and serve it here at once (other workers: at their next look).

        Raises:
            LabelSetLimitError: a new name while ``max_sets`` sets exist.
        """
        self.refresh(force=True)
        if label_set.name not in self.sets and len(self.sets) >= self.max_sets:
            raise LabelSetLimitError(f"{self.max_sets} label sets exist already (DELTAGATE_MAX_LABEL_SETS); "
                                     "replace one of them or raise the limit")
        path = write_label_set(self.directory, label_set)
        self.refresh(force=True)
        return self.sets[label_set.name] if label_set.name in self.sets else LoadedSet(
            label_set, label_set.embeddings(), path)


class LabelSets:
    """The text side of one worker: named sets, ad-hoc labels' embeddings (LRU cache) and scoring.

    Args:
        bundle: the served bundle (with a text side).
        settings: limits, cache size, directory.
        intra_op_threads: ONNX Runtime threads of the text graph.
    """

    def __init__(self, bundle: Bundle, settings: Settings, intra_op_threads: int | None = None) -> None:
        self.bundle = bundle
        self.info = bundle.text_side()
        self.limits = LabelLimits(settings.max_labels, settings.max_label_chars)
        self.encoder = TextEncoder(bundle, intra_op_threads)
        self.scorer = LabelScorer(bundle)
        self.store = LabelSetStore(label_sets_directory(settings, bundle), bundle, settings.max_label_sets,
                                   settings.label_sets_poll_s, self.limits)
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (mode, label) -> (D,)
        self._cache_size = settings.label_cache_size
        self._cache_lock = threading.Lock()
        self.text_forwards = 0  # labels embedded by the text graph (cache misses), for tests and /model
        self._rule_gates: dict[tuple[int, str], CalibrationRecord] = {}  # (K, mode) -> the default rule's gate
        self._metric_sets: set[str] = set()
        self._metric_cap = settings.metrics_label_sets
        self.store.refresh(force=True)

    # --- resolving a request's labels ---------------------------------------------------------------
    def mode(self, prompts: str | None) -> PromptMode:
        try:
            return self.encoder.check_mode(prompts or self.info.default_prompts)
        except LabelError as exc:
            raise InvalidFieldError(str(exc), details=[{"loc": ["prompts"]}]) from exc

    def named(self, name: str) -> Vocabulary:
        """A named set's vocabulary. Raises LabelSetNotFoundError (404)."""
        found = self.store.get(name)
        if found is None:
            known = ", ".join(sorted(self.store.sets)) or "none"
            raise LabelSetNotFoundError(f"no label set named {name!r} (known: {known})")
        return found.vocabulary()

    def embed(self, labels: Sequence[str], mode: PromptMode) -> np.ndarray:
        """(K, D) embeddings of ad-hoc labels, from the cache or the text graph (blocking: run in a pool)."""
        with self._cache_lock:
            cached = {label: self._cache.get((mode, label)) for label in labels}
            for label, emb in cached.items():
                if emb is not None:
                    self._cache.move_to_end((mode, label))
        missing = [label for label, emb in cached.items() if emb is None]
        if missing:
            new = self.encoder.embed(missing, mode)  # (M, D)
            with self._cache_lock:
                self.text_forwards += len(missing)
                for label, emb in zip(missing, new, strict=True):
                    cached[label] = emb
                    if self._cache_size:
                        self._cache[(mode, label)] = emb
                        self._cache.move_to_end((mode, label))
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        rows = [cached[label] for label in labels]
        return np.stack([r for r in rows if r is not None]).astype(np.float32)  # (K, D): every label is there

    def checked_labels(self, labels: Sequence[str], mode: PromptMode) -> list[str]:
        """The labels if valid (count, length, duplicates, prompt fits the text context). Raises 422."""
        try:
            out = check_labels(labels, self.limits)
            self.encoder.check_fits(out, mode)
        except LabelError as exc:
            raise InvalidLabelsError(str(exc), details=[{"loc": ["labels"]}]) from exc
        return out

    def rule_gate(self, k: int, mode: PromptMode) -> CalibrationRecord:
        """The default rule's gate for K labels in a prompt mode. Raises LabelSetsUnavailableError."""
        rule = self.info.rules.get(mode)
        if rule is None:
            raise LabelSetsUnavailableError(f"the bundle has no default rule for {mode} prompts, so ad-hoc labels "
                                            "cannot be gated; use a named label set calibrated on examples")
        gate = self._rule_gates.get((k, mode))
        if gate is None:
            try:
                gate = rule_calibration(rule, k)
            except LabelError as exc:
                raise LabelSetsUnavailableError(str(exc)) from exc
            self._rule_gates[(k, mode)] = gate  # at most max_labels x 2 entries
        return gate

    async def ad_hoc(self, labels: Sequence[str], prompts: str | None, pool: Executor) -> Vocabulary:
        """An ad-hoc vocabulary: labels checked, embedded (cached) in the pool, gated by the default rule."""
        mode = self.mode(prompts)
        checked = self.checked_labels(labels, mode)
        gate = self.rule_gate(len(checked), mode)
        emb = await asyncio.get_running_loop().run_in_executor(pool, self.embed, checked, mode)
        return Vocabulary(AD_HOC, checked, emb, gate, False, mode)

    # --- scores ----------------------------------------------------------------------------------------
    def score(self, vocab: Vocabulary, features: np.ndarray) -> dict[str, np.ndarray]:
        """The scoring head on (N, D) image features and the vocabulary's embeddings (blocking)."""
        return self.scorer.score(features, vocab.embeddings)

    def metric_label(self, vocab: Vocabulary | None) -> str:
        """The metrics' label_set value: 'bundle', 'ad-hoc', a named set among the first
        ``metrics_label_sets`` used by this worker, else 'other' (bounded cardinality)."""
        if vocab is None:
            return BUNDLE_LABEL_SET
        if vocab.label_set == AD_HOC:
            return AD_HOC
        if vocab.label_set in self._metric_sets:
            return vocab.label_set
        if len(self._metric_sets) < self._metric_cap:
            self._metric_sets.add(vocab.label_set)
            return vocab.label_set
        return "other"

    def check_name(self, name: str) -> str:
        try:
            return check_name(name)
        except LabelError as exc:
            raise InvalidFieldError(str(exc), details=[{"loc": ["path", "name"]}]) from exc
