"""Contrastive pretraining of a tiny CLIP from scratch on an image-caption corpus (the synthetic world's).

No CLIP weights can be downloaded here, so the project trains its own: an open_clip custom
architecture (``models/archs/tiny-clip.json``: a ModifiedResNet image tower and a 3-layer text
transformer) trained with a symmetric contrastive loss in which *identical captions in a batch are
positives of each other* (plain CLIP would push them apart as negatives). AdamW with a one-cycle
schedule; every random draw is seeded, so a run is reproducible on the same machine.

The checkpoint is a plain open_clip state dict in safetensors (large tensors stored in float16 by
default to keep it small), loadable with ``open_clip.create_model(arch, pretrained=path)`` or
:func:`models.clip_loading.load_clip`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from models.clip_loading import LoadedClip, load_clip, model_config
from models.preprocess import PreprocessConfig
from models.train.data.folders import load_images, read_captions
from proxy.world.splits import is_world, load_task_root
from proxy.zero_shot import evaluate_zero_shot

__all__ = ["PretrainConfig", "PretrainReport", "Corpus", "contrastive_loss", "load_corpus", "pretrain_tiny"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of tiny-CLIP pretraining; saved in the report next to the checkpoint."""

    arch: str = "tiny-clip"  # open_clip architecture name (models/archs/tiny-clip.json)
    # Optimiser steps. On the default world (style-tied caption leads) 2000 x 128 reach 99.0% zero-shot
    # ID val accuracy (runs/pre-B), 1500 steps 97.9% in 569 s (runs/pre-B15); with class-only leads
    # 1000 / 1500 / 2000 steps reached 91.0 / 97.5 / 99.8% (docs/proxy.md, "Pretraining recipe").
    steps: int = 2000
    batch_size: int = 128  # image-caption pairs per step
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    warmup_frac: float = 0.1  # share of steps warming up to the peak (one-cycle pct_start)
    weight_decay: float = 0.1  # AdamW decay on weight matrices and embeddings (not gains, biases, logit scale)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (CLIP's)
    eps: float = 1e-6  # AdamW epsilon (CLIP's)
    grad_clip: float = 1.0  # max gradient norm
    max_logit_scale: float = 100.0  # clamp of exp(logit_scale), as open_clip training does
    caption_positives: bool = True  # identical captions in a batch are positives (no false negatives)
    seed: int = 0  # seeds initialisation and batch order
    # torch intra-op threads. 1: on the shared 2-core machine two threads ran at 5-8 s/step against
    # 0.4-1.3 s/step for one (2026-12-01, runs/pre-A logs).
    threads: int = 1
    device: str = "cpu"  # where to train and evaluate ("cuda" if you have one; the corpus stays on the CPU)
    log_every: int = 50  # steps between log lines (the progress bar shows every step)
    save_dtype: str = "float16"  # dtype of large checkpoint tensors: "float16" (half the size) or "float32"
    eval_templates: tuple[str, ...] = ("a photo of a {}.",)  # zero-shot prompts of the final evaluation
    cache_corpus: bool = True  # keep the decoded corpus beside the captions (pretrain/cache/), reused by reruns


@dataclass
class PretrainReport:
    """What a pretraining run did and how good the result is."""

    config: dict[str, Any]  # the PretrainConfig
    arch_config: dict[str, Any]  # the open_clip architecture
    captions: str  # the caption file trained on
    captions_sha256: str  # its content hash (a rewritten caption file is another corpus)
    corpus_size: int  # image-caption pairs used
    unique_captions: int  # distinct captions among them
    load_seconds: float  # reading and preprocessing the corpus
    train_seconds: float  # the optimisation loop
    loss_first: float  # mean loss of the first 5% of steps
    loss_last: float  # mean loss of the last 5% of steps
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last point)
    checkpoint: str = ""  # path of the safetensors state dict
    checkpoint_bytes: int = 0  # its size
    zero_shot: dict[str, Any] | None = None  # ZeroShotReport.to_dict() on the world's task
    # Which images the zero-shot numbers are on: "val" for a synthetic world (ID val, near/far OOD val,
    # covariate val: the test splits stay untouched for the pre-registered evaluation), else "test".
    zero_shot_split: str = ""
    corpus_cached: bool = False  # the decoded corpus came from the cache

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Corpus:
    """A pretraining corpus in memory."""

    pixels: torch.Tensor  # (N, 3, H, W) preprocessed images (float16 to halve the memory)
    tokens: torch.Tensor  # (N, L) caption token ids
    caption_ids: torch.Tensor  # (N,) equal ids = identical captions
    cached: bool = False  # the pixels were read from the decoded-corpus cache

    def __len__(self) -> int:
        return len(self.tokens)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE; with ``caption_ids``, pairs with identical captions are positives too.

    Each row's target is uniform over its positives (itself and every item with the same caption),
    so duplicates are not false negatives. Without duplicates it equals CLIP's loss.

    Args:
        image_features: (B, D) L2-normalised.
        text_features: (B, D) L2-normalised.
        logit_scale: scalar multiplier (already exponentiated).
        caption_ids: (B,) caption identity, or None for CLIP's one-positive targets.

    Returns:
        Scalar loss.
    """
    logits = logit_scale * image_features @ text_features.t()  # (B, B), image -> text
    if caption_ids is None:
        targets = torch.eye(len(logits), device=logits.device)  # (B, B)
    else:
        same = (caption_ids[:, None] == caption_ids[None, :]).float()  # (B, B), symmetric
        targets = same / same.sum(dim=1, keepdim=True)  # (B, B), rows sum to 1
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()  # targets symmetric
    return (loss_i + loss_t) / 2


def _corpus_key(paths: list[Path], preprocess: PreprocessConfig, base: Path) -> str:
    """Hex key of a decoded corpus: the preprocessing and every image's path (relative to ``base``), size and mtime.

    Captions are not part of it: caption files that list the same images share the decoded pixels.
    Relative paths keep the key of a world copied with its timestamps (``cp -a``).
    """
    h = hashlib.sha256(json.dumps(preprocess.model_dump(mode="json"), sort_keys=True).encode())
    root = base.resolve()
    for p in paths:
        st = p.stat() if p.exists() else None
        rel = os.path.relpath(p.resolve(), root)
        h.update(f"{rel}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:32]


def _decoded(
    paths: list[Path], preprocess: PreprocessConfig, cache: Path | None
) -> tuple[torch.Tensor, list[int], bool]:
    """Preprocessed float16 pixels of the readable images and their row numbers; (…, True) from the cache."""
    from safetensors.torch import load_file

    if cache is not None and cache.is_file():
        data = load_file(str(cache))
        logger.info("decoded corpus from cache %s", cache)
        return data["pixels"], data["rows"].tolist(), True
    loaded = load_images(paths, preprocess, dtype=torch.float16)
    row_of = {p: i for i, p in enumerate(paths)}
    rows = [row_of[p] for p in loaded.paths]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({"pixels": loaded.pixels.contiguous(), "rows": torch.tensor(rows, dtype=torch.long)}, str(tmp))
        tmp.replace(cache)
        logger.info("cached the decoded corpus in %s (%.0f MB)", cache, cache.stat().st_size / 1e6)
    return loaded.pixels, rows, False


def load_corpus(caption_file: str | Path, clip: LoadedClip, cache_dir: str | Path | None = None) -> Corpus:
    """Read, preprocess and tokenise an image-caption corpus (unreadable images are skipped).

    Args:
        caption_file: ``captions.jsonl`` / CSV (see :func:`read_captions`), or its folder.
        clip: the model whose preprocessing and tokenizer to use.
        cache_dir: keep the decoded pixels there (float16 safetensors keyed by the caption file,
            the preprocessing and every image's size and mtime); None decodes every time.

    Returns:
        The corpus (:attr:`Corpus.cached` says whether the pixels came from the cache).
    """
    paths, captions = read_captions(caption_file)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"corpus-{_corpus_key(paths, clip.preprocess, Path(cache_dir).parent)}.safetensors"
    pixels, rows, cached = _decoded(paths, clip.preprocess, cache)
    kept_captions = [captions[r] for r in rows]
    ids: dict[str, int] = {}
    caption_ids = torch.tensor([ids.setdefault(c, len(ids)) for c in kept_captions], dtype=torch.long)  # (N,)
    tokens = torch.cat([clip.tokenizer(kept_captions[i : i + 4096]) for i in range(0, len(kept_captions), 4096)])
    logger.info("corpus: %d pairs, %d distinct captions, tokens %s", len(tokens), len(ids), tuple(tokens.shape))
    return Corpus(pixels, tokens, caption_ids, cached)


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """Index batches drawn epoch by epoch without replacement (last partial batch of an epoch dropped)."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for b in range(min(per_epoch, steps - done)):
            yield perm[b * batch_size : (b + 1) * batch_size]
        done += per_epoch


def train(model: Any, corpus: Corpus, cfg: PretrainConfig, progress: bool = True) -> list[float]:
    """Run the contrastive optimisation loop in place.

    Returns:
        The loss of every step.
    """
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=cfg.warmup_frac, anneal_strategy="cos"
    )
    bs = min(cfg.batch_size, len(corpus))
    losses: list[float] = []
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(_batches(len(corpus), bs, cfg.steps, cfg.seed), total=cfg.steps, desc="pretrain", disable=not progress)
    for step, idx in enumerate(bar):
        pixels = corpus.pixels[idx].to(device).float()  # (B, 3, H, W)
        image_f, text_f, scale = model(pixels, corpus.tokens[idx].to(device))[:3]
        ids = corpus.caption_ids[idx].to(device) if cfg.caption_positives else None
        loss = contrastive_loss(image_f, text_f, scale, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{float(scale.detach()):.1f}")
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            logger.info("step %d/%d loss %.4f scale %.1f", step + 1, cfg.steps, losses[-1], float(scale.detach()))
    model.eval()
    return losses


def save_checkpoint(model: torch.nn.Module, path: str | Path, dtype: str = "float16") -> int:
    """Write the state dict as safetensors; floating tensors of >= 1024 elements in ``dtype``.

    Small tensors (norm gains, biases, the logit scale) stay float32; open_clip casts everything back
    to the model's dtype on load.

    Returns:
        The file size in bytes.
    """
    target = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.to(target) if v.is_floating_point() and v.numel() >= 1024 else v
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out.stat().st_size


def _caption_hash(source: Path) -> str:
    path = source / "captions.jsonl" if source.is_dir() else source
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / max(1, len(xs)))


def _curve(losses: list[float], points: int = 50) -> list[tuple[int, float]]:
    every = max(1, len(losses) // points)
    return [(i + every, _mean(losses[i : i + every])) for i in range(0, len(losses), every)]


def pretrain_tiny(
    cfg: PretrainConfig,
    world_dir: str | Path,
    out_path: str | Path,
    *,
    captions: str | Path | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> PretrainReport:
    """Pretrain a tiny CLIP on a world's captioned corpus, save it, and evaluate it zero-shot.

    Args:
        cfg: hyper-parameters.
        world_dir: a world (``deltagate data synth``) or any folder in its layout; its
            ``pretrain/captions.jsonl`` is the corpus and its ``id``/``ood``/``covariate`` folders
            the evaluation task.
        out_path: the checkpoint (``.safetensors``); the report goes to ``<out_path stem>.json`` beside it.
        captions: another caption file to train on instead of the world's.
        evaluate: run the zero-shot evaluation (needs ``world_dir/id/test``).
        progress: show a tqdm progress bar.

    Returns:
        The report (also written as JSON).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        clip = load_clip(cfg.arch, device=cfg.device)  # random init, seeded above
        start = time.perf_counter()
        source = Path(captions) if captions else Path(world_dir) / "pretrain"
        cache = (source if source.is_dir() else source.parent) / "cache" if cfg.cache_corpus else None
        corpus = load_corpus(source, clip, cache)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        losses = train(clip.model, corpus, cfg, progress)
        train_s = time.perf_counter() - start
        logger.info("trained %d steps in %.1f s", cfg.steps, train_s)
        out = Path(out_path)
        size = save_checkpoint(clip.model, out, cfg.save_dtype)
        k = max(1, len(losses) // 20)
        report = PretrainReport(
            config=asdict(cfg), arch_config=model_config(cfg.arch), captions=str(source),
            captions_sha256=_caption_hash(source), corpus_size=len(corpus),
            unique_captions=int(corpus.caption_ids.max()) + 1 if len(corpus) else 0,
            load_seconds=load_s, train_seconds=train_s, loss_first=_mean(losses[:k]), loss_last=_mean(losses[-k:]),
            loss_curve=_curve(losses), checkpoint=str(out), checkpoint_bytes=size, corpus_cached=corpus.cached,
        )
        if evaluate:
            # Evaluate what was saved (float16 round trip included), on the CPU: the evaluation is small, and
            # models.prompt_learner.zero_shot_class_embeddings tokenises on the CPU. On a world, only val
            # images: its test splits belong to the pre-registered evaluation.
            reloaded = load_clip(cfg.arch, str(out))
            report.zero_shot_split = "val" if is_world(world_dir) else "test"
            task = load_task_root(world_dir, split="val") if is_world(world_dir) else load_task_root(world_dir)
            if is_world(world_dir):
                task = replace(task, val=None)  # the probe is scored on val, so its C is not chosen there
            report.zero_shot = evaluate_zero_shot(reloaded, task, cfg.eval_templates).to_dict()
        out.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        return report
    finally:
        torch.set_num_threads(threads)
