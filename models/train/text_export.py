"""The text side of a bundle: ``text.onnx``, ``scores.onnx`` and ``tokenizer.json``, each checked at export.

``text.onnx`` is :class:`models.prompt_learner.TextEmbedder` (the frozen text tower with the learned
context inside), ``scores.onnx`` is :class:`models.scoring_module.ScoreHead` (the scores of
:mod:`models.scores` on image features and class embeddings given as inputs), and ``tokenizer.json`` is
open_clip's BPE tokenizer in Hugging Face ``tokenizers``' format (:mod:`models.tokenizer`). Together
with ``model.onnx``'s image-features output they let a core install (no torch) serve label sets.

Checks before the manifest names them (each fails the export):

* the tokenizer file gives open_clip's token ids on every prompt of the bundle's classes and on a
  fixed list of awkward strings;
* ``text.onnx`` matches the torch module on the bundle's classes, in each prompt mode;
* the bundle's own classes, embedded by ``text.onnx`` in the bundle's prompt mode, give back its
  baked class embeddings (``baked``), so a label set naming them scores as the fixed classes do;
* ``scores.onnx`` matches the torch head on random features and class embeddings of several K.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, TextSideInfo, load_bundle, update_manifest
from models.clip_loading import LoadedClip
from models.prompt_learner import TextEmbedder
from models.prompts import DEFAULT_TEMPLATES, PromptMode, learned_prompt, template_prompts
from models.scoring_module import ScoreHead
from models.scoring_spec import OUTPUT_NAMES, SCORE_INPUT_NAMES, TEXT_INPUT_NAMES, TEXT_OUTPUT_NAME
from models.text_runtime import LabelScorer, TextEncoder
from models.tokenizer import TOKENIZER_FILE, build_clip_tokenizer

__all__ = ["TextExportError", "TOKENIZER_CHECK_TEXTS", "export_text_side"]

logger = logging.getLogger(__name__)

# Strings the tokenizer file must tokenize as open_clip does (besides the bundle's own prompts).
TOKENIZER_CHECK_TEXTS: tuple[str, ...] = (
    "a photo of a lightning bolt.", "six-pointed star", "Hello, World! it's 2024", "café crème brûlée",
    "naïve façade", "日本語のテキスト", "emoji 🐶 dog", "don't can't we've they'll", "  many   spaces\there ",
    "&amp; html &lt;escaped&gt;", "12345 abc123def", "“curly quotes” and ﬁ ligature", "ＦＵＬＬＷＩＤＴＨ",
)
EMBEDDING_ATOL = 1e-4  # |onnx - torch| of L2-normalised embeddings (cosines move by about as much)
SCORES_ATOL, SCORES_RTOL = 1e-3, 1e-4  # as model.onnx's parity (logits are cosines times the scale)


class TextExportError(RuntimeError):
    """The text side does not reproduce the torch model (tokens, embeddings or scores)."""


def export_text_side(
    bundle_dir: str | Path,
    clip: LoadedClip,
    *,
    ctx: torch.Tensor | None = None,
    learned_prefix: str | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    baked_mode: PromptMode | None = None,
    opset: int = 18,
) -> Bundle:
    """Write the text side into an exported bundle (its ``model.onnx`` must give the image features).

    Args:
        bundle_dir: the bundle (weights, model.onnx and manifest written).
        clip: the CLIP the bundle was exported from (text tower, tokenizer, logit scale).
        ctx: (n_ctx, W) learned context vectors of a CoOp/EBM run, or None (zero-shot prompts only).
        learned_prefix: the placeholder text of the run's prompts (``PromptLearner.prefix_text``); with ``ctx``.
        templates: zero-shot templates.
        baked_mode: how the bundle's class embeddings were made (``learned`` or ``zero-shot``): they are
            checked against the text graph in that mode; None skips that check (e.g. averaged templates
            of another list).
        opset: ONNX opset.

    Returns:
        The bundle, with ``manifest.text`` and the three files hashed.

    Raises:
        TextExportError: a check failed (nothing is named in the manifest).
        ValueError: the model has no open_clip text transformer or tokenizer, or ``ctx`` without a prefix.
    """
    out = Path(bundle_dir)
    bundle = load_bundle(out, verify=False)
    m = bundle.manifest
    if bundle.manifest.onnx is None or "image_features" not in bundle.manifest.onnx.output_names:
        raise ValueError(f"{out}: model.onnx has no image features output: re-export the bundle first")
    if (ctx is None) != (learned_prefix is None):
        raise ValueError("a learned context needs its prompt prefix, and the prefix its context")
    _check_tokenizer_kind(clip)
    model: Any = clip.model.float().cpu().eval()
    embedder = TextEmbedder(model, ctx).eval()
    n_ctx = embedder.n_ctx
    info = TextSideInfo(
        context_length=embedder.context_length, embed_dim=int(m.architecture.open_clip_config["embed_dim"]),
        n_ctx=n_ctx, learned_prefix=learned_prefix, templates=list(templates),
        default_prompts="learned" if n_ctx else "zero-shot",
    )
    tok = build_clip_tokenizer(_open_clip_bpe())
    tok.save(str(out / TOKENIZER_FILE))
    _export_text_graph(embedder, out / info.text_file, opset)
    head = ScoreHead(m.logit_scale, m.scores).eval()
    _export_scores_graph(head, out / info.scores_file, info.embed_dim, opset)
    # The files exist; the manifest names them only once every check has passed.
    staged = Bundle(out, m.model_copy(update={"text": info, "files": {
        **m.files, **_entries(out, info)}}))
    try:
        parity = _check(staged, clip, embedder, head, baked_mode)
    except Exception:
        for f in (info.text_file, info.scores_file, info.tokenizer_file):
            (out / f).unlink(missing_ok=True)
        raise
    logger.info("text side exported to %s: %s", out, {k: f"{v:.2g}" for k, v in parity.items()})
    return update_manifest(out, text=info.model_copy(update={"parity": parity}))


def _entries(out: Path, info: TextSideInfo) -> dict[str, Any]:
    from models.bundle import FileEntry, sha256_file

    return {f: FileEntry(sha256=sha256_file(out / f), size=(out / f).stat().st_size)
            for f in (info.text_file, info.scores_file, info.tokenizer_file)}


def _check_tokenizer_kind(clip: LoadedClip) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    if not isinstance(clip.tokenizer, SimpleTokenizer):
        raise ValueError(f"{clip.name}: the text side supports open_clip's CLIP BPE tokenizer only, not "
                         f"{type(clip.tokenizer).__name__}")


def _open_clip_bpe() -> str:
    from open_clip.tokenizer import default_bpe

    return str(default_bpe())


def _export_text_graph(embedder: TextEmbedder, path: Path, opset: int) -> None:
    length = embedder.context_length
    ids = torch.zeros(2, 2, length, dtype=torch.long)  # (N, T, L); 2 keeps N and T symbolic
    ids[:, :, 0], ids[:, :, 1] = 49406, 49407  # start, end
    use = torch.tensor([1.0, 0.0])  # (N,)
    n, t = torch.export.Dim("labels", min=1, max=65536), torch.export.Dim("prompts", min=1, max=1024)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(embedder, (ids, use), str(path), input_names=list(TEXT_INPUT_NAMES),
                          output_names=[TEXT_OUTPUT_NAME],
                          dynamic_shapes={"input_ids": {0: n, 1: t}, "use_context": {0: n}},
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)


def _export_scores_graph(head: ScoreHead, path: Path, dim: int, opset: int) -> None:
    feats, emb = torch.randn(3, dim), torch.randn(4, dim)  # (B, D), (K, D)
    b, k = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("classes", min=2, max=65536)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (feats, emb), str(path), input_names=list(SCORE_INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES),
                          dynamic_shapes={"features": {0: b}, "class_embeddings": {0: k}},
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)


def _check(bundle: Bundle, clip: LoadedClip, embedder: TextEmbedder, head: ScoreHead,
           baked_mode: PromptMode | None) -> dict[str, float]:
    """Every check of the module docstring; returns the worst differences seen."""
    info = bundle.text_side()
    classes = bundle.manifest.classes
    encoder = TextEncoder(bundle)
    parity: dict[str, float] = {}
    # 1. tokens, on every prompt the checks below embed and on the awkward strings
    texts = list(TOKENIZER_CHECK_TEXTS)
    for c in classes:
        texts += template_prompts(info.templates, c)
        if info.learned_prefix is not None:
            texts.append(learned_prompt(info.learned_prefix, c))
    want = clip.tokenizer(texts, context_length=info.context_length).numpy()
    got = encoder.tokenizer(texts)
    bad = [t for t, w, g in zip(texts, want, got, strict=True) if not np.array_equal(w, g)]
    if bad:
        raise TextExportError(f"tokenizer.json differs from open_clip's tokenizer on {bad[:3]}")
    # 2. text graph against the torch module, per mode
    for mode in info.prompt_modes:
        prompts = [encoder.prompts(c, mode) for c in classes]  # type: ignore[arg-type]
        ids = torch.from_numpy(encoder.tokenizer([p for g in prompts for p in g]).reshape(len(classes), len(prompts[0]),
                                                                                          -1))
        use = torch.full((len(classes),), 1.0 if mode == "learned" else 0.0)
        with torch.no_grad():
            ref = embedder(ids, use).numpy()
        onnx = encoder.embed(classes, mode)  # type: ignore[arg-type]
        parity[f"text_{mode}"] = _worst(onnx, ref, f"text.onnx ({mode}) vs torch", EMBEDDING_ATOL)
    # 3. the bundle's own classes give back its baked class embeddings
    if baked_mode is not None:
        from safetensors.torch import load_file

        baked = load_file(str(bundle.weights_path))["class_embeddings"].numpy()  # (K, D)
        parity[f"baked_{baked_mode}"] = _worst(encoder.embed(classes, baked_mode), baked,
                                               f"the bundle's classes in {baked_mode} mode vs its baked embeddings",
                                               EMBEDDING_ATOL)
    # 4. scores graph against the torch head
    scorer = LabelScorer(bundle)
    rng = np.random.default_rng(0)
    worst = 0.0
    for b, k in ((1, 2), (5, 3), (8, 37)):
        feats = rng.standard_normal((b, info.embed_dim)).astype(np.float32)
        emb = rng.standard_normal((k, info.embed_dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        with torch.no_grad():
            ref_out = [t.numpy() for t in head(torch.from_numpy(feats), torch.from_numpy(emb))]
        got_out = scorer.score(feats, emb)
        for name, r in zip(OUTPUT_NAMES, ref_out, strict=True):
            g = got_out[name]
            if g.shape != r.shape or not np.allclose(g, r, atol=SCORES_ATOL, rtol=SCORES_RTOL):
                raise TextExportError(f"scores.onnx {name} differs from torch at B={b}, K={k}: "
                                      f"{np.abs(g - r).max() if g.shape == r.shape else g.shape}")
            worst = max(worst, float(np.abs(g - r).max()))
    parity["scores"] = worst
    return parity


def _worst(got: np.ndarray, want: np.ndarray, what: str, atol: float) -> float:
    diff = float(np.abs(got - want).max())
    if got.shape != want.shape or diff > atol:
        raise TextExportError(f"{what}: max |diff| {diff:.3g} > {atol}")
    return diff
