"""The bundle's text side on ONNX Runtime: label texts -> class embeddings -> scores (no torch).

The service and the offline label-set commands both use these two classes, so a label set made by
``deltagate label-set create`` and one made by ``PUT /label-sets/{name}`` or sent ad hoc are embedded
and scored by the same graphs:

* :class:`TextEncoder`: the tokenizer (``tokenizer.json``) and ``text.onnx``; one prompt per label in
  ``learned`` mode, one per template in ``zero-shot`` mode (:mod:`models.prompts`).
* :class:`LabelScorer`: ``scores.onnx``, the bundle's scoring head traced from :mod:`models.scores`
  (image features and class embeddings in, logits, probabilities, ΔEnergy and energy out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.bundle import Bundle, TextSideInfo
from models.errors import DeltagateError
from models.prompts import PromptMode, learned_prompt, template_prompts
from models.scoring_spec import OUTPUT_NAMES, SCORE_INPUT_NAMES, TEXT_INPUT_NAMES, TEXT_OUTPUT_NAME
from models.tokenizer import ClipTokenizer

__all__ = ["LabelError", "TextEncoder", "LabelScorer", "ort_session"]


class LabelError(DeltagateError, ValueError):
    """Labels the text side cannot take (empty, duplicate, too long for the text context, unknown mode)."""


def ort_session(path: Any, intra_op_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with the service's usual options (no spinning, given thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TextEncoder:
    """Label texts -> (K, D) L2-normalised class embeddings with the bundle's text graph.

    Args:
        bundle: a bundle with a text side.
        intra_op_threads: ONNX Runtime threads of the text session (None: its default).
        batch_size: prompts per forward (bounds the memory of one call).
    """

    def __init__(self, bundle: Bundle, intra_op_threads: int | None = None, batch_size: int = 64) -> None:
        self.info: TextSideInfo = bundle.text_side()
        self.tokenizer = ClipTokenizer(bundle.path / self.info.tokenizer_file, self.info.context_length)
        self._session = ort_session(bundle.path / self.info.text_file, intra_op_threads)
        self.batch_size = batch_size

    def check_mode(self, mode: str) -> PromptMode:
        """The mode, if this bundle has it. Raises LabelError naming the available ones."""
        if mode not in self.info.prompt_modes:
            raise LabelError(f"prompt mode {mode!r} is not available on this bundle; available: "
                             f"{', '.join(self.info.prompt_modes)}")
        return mode  # type: ignore[return-value]  # checked against the two modes

    def prompts(self, label: str, mode: PromptMode) -> list[str]:
        """The prompts of one label in a mode (one learned prompt, or one per template)."""
        if mode == "learned":
            assert self.info.learned_prefix is not None
            return [learned_prompt(self.info.learned_prefix, label)]
        return template_prompts(self.info.templates, label)

    def check_fits(self, labels: Sequence[str], mode: PromptMode) -> None:
        """Raise LabelError if a label's prompt does not fit the text context (it would be truncated)."""
        for label in labels:
            worst = max(self.tokenizer.token_counts(self.prompts(label, mode)))
            if worst > self.info.context_length:
                raise LabelError(f"label {label!r} is too long for the model's text context: its prompt has "
                                 f"{worst} tokens, the limit is {self.info.context_length}")

    def embed(self, labels: Sequence[str], mode: PromptMode) -> np.ndarray:
        """(K, D) float32 L2-normalised embeddings of the labels' prompts.

        Raises:
            LabelError: unknown mode, or a prompt longer than the text context.
        """
        mode = self.check_mode(mode)
        self.check_fits(labels, mode)
        prompts = [self.prompts(label, mode) for label in labels]
        t = len(prompts[0]) if prompts else 1
        use_context = 1.0 if mode == "learned" else 0.0
        out = []
        per_call = max(1, self.batch_size // t)
        for start in range(0, len(labels), per_call):
            chunk = prompts[start : start + per_call]
            ids = self.tokenizer([p for group in chunk for p in group]).reshape(len(chunk), t, -1)  # (n, T, L)
            feed = {TEXT_INPUT_NAMES[0]: ids, TEXT_INPUT_NAMES[1]: np.full(len(chunk), use_context, np.float32)}
            out.append(self._session.run([TEXT_OUTPUT_NAME], feed)[0])  # (n, D)
        if not out:
            return np.zeros((0, self.info.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)  # (K, D)


class LabelScorer:
    """(image features (N, D), class embeddings (K, D)) -> the scoring module's outputs, with ``scores.onnx``.

    Args:
        bundle: a bundle with a text side.
        intra_op_threads: ONNX Runtime threads (the graph is a matrix product and a few reductions: 1 is plenty).
    """

    def __init__(self, bundle: Bundle, intra_op_threads: int | None = 1) -> None:
        info = bundle.text_side()
        self._session = ort_session(bundle.path / info.scores_file, intra_op_threads)

    def score(self, features: np.ndarray, class_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Returns ``logits`` (N, K), ``probs`` (N, K), ``delta_energy`` (N,), ``energy`` (N,), float32."""
        feed = {SCORE_INPUT_NAMES[0]: np.ascontiguousarray(features, dtype=np.float32),
                SCORE_INPUT_NAMES[1]: np.ascontiguousarray(class_embeddings, dtype=np.float32)}
        return dict(zip(OUTPUT_NAMES, self._session.run(list(OUTPUT_NAMES), feed), strict=True))
