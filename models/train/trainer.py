"""CoOp / EBM prompt tuning with frozen CLIP encoders (METHOD.md), plus the zero-shot baseline.

One trainer, one prompt learner, one schedule; the method only changes the loss:

- ``coop``: ``CE(z, y)``;
- ``ebm``: ``CE(z_ce, y) - λ · mean(ΔE_lb)`` (:func:`models.train.losses.ebm_loss`);
- ``zero-shot``: no training, the hand-written prompt (the third row of every table).

Since both encoders are frozen, the image features of the training images are computed once and
cached (:class:`models.train.features.FeatureCache`) unless augmentation is on; an epoch then runs
only the text tower. Optimiser and schedule follow CoOp: SGD (or AdamW), cosine annealing per epoch
after a constant warm-up epoch. Every random draw is seeded (context init, batch order,
augmentation), a checkpoint is written after each epoch, and ``resume`` continues from it to the
same result as an uninterrupted run.

A run directory holds::

    train_config.json    the TrainConfig
    run.json             model (architecture, weights source), classes, logit scale, data summary
    checkpoint.pt        context vectors, optimiser state, history (resume point)
    prompt.safetensors   learned context ``ctx`` and baked ``class_embeddings`` (K, D)
    history.json         per-epoch loss, accuracy, ΔE_lb, validation accuracy, seconds
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.clip_loading import LoadedClip
from models.errors import ResumeConflictError
from models.prompt_learner import PromptLearner, zero_shot_class_embeddings
from models.train.choices import CE_ON, METHODS, OPTIMIZERS, CeOn, Method, Optimizer
from models.train.data.folders import FolderIndex, ImageFolderDataset, collate_skip_bad
from models.train.features import (
    AugmentedImages,
    EncodedSplit,
    FeatureCache,
    autocast,
    encode_pixels,
    torch_threads,
)
from models.train.losses import ebm_loss
from models.train.metrics import accuracy, correct

__all__ = [
    "METHODS",
    "LOSS_PARAMS",
    "TrainConfig",
    "TrainResult",
    "resolve_device",
    "lr_at_epoch",
    "checkpoint_matches",
    "check_resume",
    "PromptTrainer",
]

logger = logging.getLogger(__name__)

# The EBM loss's parameters (METHOD.md); the score parameters (T, c, reset of ΔEnergy ...) are separate.
LOSS_PARAMS: tuple[str, ...] = ("ebm_weight", "mask_ratio", "ce_on", "loss_temperature", "loss_top_c")
CHECKPOINT = "checkpoint.pt"
PROMPT_FILE = "prompt.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one prompt-tuning run; saved as ``train_config.json``."""

    method: Method = "ebm"  # loss (see module docstring)
    n_ctx: int = 16  # learnable context vectors (CoOp default); ignored when ctx_init is set
    ctx_init: str | None = None  # phrase to initialise the context from (None: random, std 0.02, as CoOp)
    templates: tuple[str, ...] = ("a photo of a {}.",)  # zero-shot prompts (method "zero-shot")
    shots: int = 16  # training images per class (CoOp's 16-shot protocol); 0 = all
    epochs: int = 50  # passes over the training images
    batch_size: int = 32  # images per step (CoOp: 32)
    optimizer: Optimizer = "sgd"  # CoOp uses SGD
    lr: float = 2e-3  # peak learning rate (CoOp: 0.002 with SGD)
    momentum: float = 0.9  # SGD momentum (CoOp)
    weight_decay: float = 5e-4  # CoOp's weight decay
    warmup_epochs: int = 1  # epochs at the constant warm-up rate before the cosine schedule (CoOp: 1)
    warmup_lr: float = 1e-5  # the warm-up rate (CoOp: 1e-5)
    ebm_weight: float = 1.0  # λ of the EBM loss (METHOD.md default)
    mask_ratio: float = 0.1  # share of dimensions masked in ΔE_lb (METHOD.md default)
    loss_top_c: int = 1  # ΔE_lb targets of the loss (METHOD.md default 1); never the served score's c
    ce_on: CeOn = "edited"  # logits of the cross-entropy (paper's figure: edited)
    loss_temperature: float = 1.0  # T of the energy in the loss (METHOD.md default); never the served score's T
    augment: bool = False  # random resized crop + flip (disables the feature cache)
    cache_features: bool = True  # encode training images once (only without augmentation)
    seed: int = 1  # context init, batch order, augmentation and few-shot sample (CoOp seeds 1, 2, 3)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # float16 autocast of the encoders on CUDA (ignored on CPU)
    num_workers: int = 0  # DataLoader processes decoding images
    encode_batch_size: int = 128  # images per forward pass when encoding features
    threads: int | None = None  # CPU intra-op threads while training (None: torch's default; 1 is fastest
    # for the tiny CLIP on a shared machine)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.ce_on not in CE_ON:
            raise ValueError(f"ce_on must be one of {', '.join(CE_ON)}, got {self.ce_on!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.loss_top_c < 1:
            raise ValueError("epochs, batch_size and loss_top_c must be >= 1")
        object.__setattr__(self, "templates", tuple(self.templates))

    @property
    def uses_cache(self) -> bool:
        """Whether training reads cached features (cache on and no augmentation)."""
        return self.cache_features and not self.augment

    @property
    def loss_params(self) -> dict[str, Any]:
        """The loss parameters (what the EBM ablation searches); score parameters live in ScoreParams."""
        return {k: getattr(self, k) for k in LOSS_PARAMS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``asdict``; unknown keys raise. Configs written before the loss and score parameters
        were separated (``top_c``/``temperature`` set both) are read with those as the loss's."""
        data = dict(data)
        for old, new in (("top_c", "loss_top_c"), ("temperature", "loss_temperature")):
            if old in data:
                data.setdefault(new, data.pop(old))
        data.pop("reset_logit", None)  # a score parameter, now chosen at export
        return cls(**data)


@dataclass
class TrainResult:
    """What a run produced."""

    class_embeddings: torch.Tensor  # (K, D) baked, float32, CPU
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    out_dir: Path | None = None  # the run directory
    learner: PromptLearner | None = None  # None for zero-shot


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """CoOp's schedule: ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` towards 0."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def checkpoint_matches(out_dir: str | Path, cfg: TrainConfig) -> bool:
    """Whether ``out_dir`` holds a checkpoint written with ``cfg`` (up to device, workers and threads)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return False
    return not _config_differences(_saved_config(path), cfg)


_WHERE_FIELDS = ("device", "num_workers", "threads")  # where a run executes; may change between resumes


def _saved_config(path: Path) -> TrainConfig:
    return TrainConfig.from_dict(torch.load(path, map_location="cpu", weights_only=False)["config"])


def _config_differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """``"field saved -> given"`` for every field that differs, except where the run executes."""
    now, before = asdict(cfg), asdict(saved)
    return [f"{k} {before[k]!r} -> {now[k]!r}" for k in now if k not in _WHERE_FIELDS and before[k] != now[k]]


def check_resume(out_dir: str | Path, cfg: TrainConfig, model: str | None = None,
                 pretrained: str | None = None) -> None:
    """Refuse to resume a run directory whose checkpoint was written with another configuration or model.

    Cheap (no model is loaded), so ``deltagate train`` calls it before loading the CLIP.

    Args:
        out_dir: the run directory.
        cfg: the configuration about to run.
        model: the architecture about to run (compared with the run's ``run.json``; None: not compared).
        pretrained: its weights (None or "none": random), compared likewise when ``model`` is given.

    Raises:
        ResumeConflictError: names every field that differs and ``--no-resume``.
    """
    out = Path(out_dir)
    path = out / CHECKPOINT
    if not path.is_file():
        return
    diffs = _config_differences(_saved_config(path), cfg)
    run_file = out / "run.json"
    if model is not None and run_file.is_file():
        run = json.loads(run_file.read_text(encoding="utf-8"))
        weights = None if pretrained is None or pretrained.lower() in ("", "none", "random") else pretrained
        diffs += [f"{k} {run.get(k)!r} -> {v!r}" for k, v in (("model", model), ("pretrained", weights))
                  if run.get(k) != v]
    if diffs:
        raise ResumeConflictError(
            f"{path} was written by another configuration ({'; '.join(diffs)}): run the command that wrote it "
            f"to resume, add --no-resume to start over in {out}, or pass another --out"
        )


class PromptTrainer:
    """Runs one method on one model and one labelled training split.

    Args:
        clip: the CLIP (its encoders are frozen; it is moved to the configured device).
        classnames: display names of the K classes (label order).
        cfg: hyper-parameters.
        out_dir: run directory (created).
        cache_dir: feature cache directory (default ``out_dir/feature-cache``).
        cache: a feature cache of the same vision tower to share (overrides ``cache_dir``).
    """

    def __init__(
        self,
        clip: LoadedClip,
        classnames: Sequence[str],
        cfg: TrainConfig,
        out_dir: str | Path,
        cache_dir: str | Path | None = None,
        cache: FeatureCache | None = None,
    ) -> None:
        self.clip = clip
        self.classnames = list(classnames)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = resolve_device(cfg.device)
        model: Any = clip.model
        self.model: Any = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self.cache = cache or FeatureCache(cache_dir or self.out_dir / "feature-cache", self.model.visual,
                                           {"name": clip.name, "config": clip.config}, clip.preprocess)

    # ----------------------------------------------------------------- features
    def encode(self, index: FolderIndex, desc: str = "encode", progress: bool = False) -> EncodedSplit:
        """Cached features of an index (no augmentation)."""
        cfg = self.cfg
        return self.cache.get(index, device=self.device, batch_size=cfg.encode_batch_size,
                              num_workers=cfg.num_workers, amp=cfg.amp, progress=progress, desc=desc)

    def _stream(self, index: FolderIndex, order: list[int], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of freshly encoded features (augmented when configured), in ``order``."""
        cfg = self.cfg
        dataset: Any
        if cfg.augment:
            dataset = AugmentedImages(index, self.clip.preprocess, cfg.seed)
            dataset.epoch = epoch
        else:
            dataset = ImageFolderDataset(index, self.clip.preprocess)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.num_workers,
                            collate_fn=collate_skip_bad)
        for batch in loader:
            if batch is not None:
                yield encode_pixels(self.model.visual, batch[0], self.device, cfg.amp), batch[1].to(self.device)

    # ----------------------------------------------------------------- steps
    def _loss(self, learner: PromptLearner, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Any]:
        cfg = self.cfg
        with autocast(self.device, cfg.amp):
            class_emb = learner()  # (K, D)
        ebm = cfg.method == "ebm"
        return ebm_loss(
            feats, class_emb.float(), labels, self.logit_scale,
            ebm_weight=cfg.ebm_weight if ebm else 0.0, mask_ratio=cfg.mask_ratio, top_c=cfg.loss_top_c,
            temperature=cfg.loss_temperature, ce_on=cfg.ce_on if ebm else "original",
        )

    def _epoch(self, learner: PromptLearner, opt: torch.optim.Optimizer, scaler: Any,
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]], bar: Any) -> dict[str, float]:
        totals = {"loss": 0.0, "correct": 0.0, "delta_e_lb": 0.0, "n": 0.0}
        for feats, labels in batches:
            loss, terms = self._loss(learner, feats, labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            b = float(len(labels))
            totals["loss"] += float(loss.item()) * b
            totals["correct"] += float(correct(terms.logits, labels).sum().item())
            totals["delta_e_lb"] += float(terms.delta_e_lb.sum().item())
            totals["n"] += b
            bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['correct'] / totals['n']:.3f}")
        n = max(totals["n"], 1.0)
        return {"loss": totals["loss"] / n, "train_acc": totals["correct"] / n, "delta_e_lb": totals["delta_e_lb"] / n}

    @torch.no_grad()
    def validate(self, class_embeddings: torch.Tensor, split: EncodedSplit) -> dict[str, float]:
        """Accuracy and mean ΔE_lb (label targets) of class embeddings on encoded labelled features."""
        cfg = self.cfg
        feats, labels = split.features.to(self.device), split.labels.to(self.device)
        _, terms = ebm_loss(feats, class_embeddings.to(self.device).float(), labels, self.logit_scale,
                            mask_ratio=cfg.mask_ratio, top_c=cfg.loss_top_c, temperature=cfg.loss_temperature)
        return {"val_acc": accuracy(terms.logits, labels), "val_delta_e_lb": float(terms.delta_e_lb.mean().item()),
                "val_images": int(labels.numel())}

    # ----------------------------------------------------------------- run
    def _new_learner(self) -> PromptLearner:
        torch.manual_seed(self.cfg.seed)
        learner = PromptLearner(self.model, self.clip.tokenizer, self.classnames, self.cfg.n_ctx, self.cfg.ctx_init)
        return learner.to(self.device)

    def _optimizer(self, learner: PromptLearner) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "sgd":
            return torch.optim.SGD([learner.ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW([learner.ctx], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _write_common(self, train: FolderIndex, val: FolderIndex | None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n", encoding="utf-8")
        run = {
            "model": self.clip.name, "pretrained": self.clip.pretrained, "open_clip_config": self.clip.config,
            "classes": self.classnames, "logit_scale": self.logit_scale,
            "data": {"train": str(train.root), "train_images": len(train),
                     "val": str(val.root) if val else None, "val_images": len(val) if val else 0},
        }
        (self.out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")

    def _finish(self, class_embeddings: torch.Tensor, history: list[dict[str, Any]],
                learner: PromptLearner | None) -> TrainResult:
        from safetensors.torch import save_file

        tensors = {"class_embeddings": class_embeddings.detach().float().cpu().contiguous()}
        if learner is not None:
            tensors["ctx"] = learner.ctx.detach().float().cpu().contiguous()
        save_file(tensors, str(self.out_dir / PROMPT_FILE))
        (self.out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        return TrainResult(tensors["class_embeddings"], history, self.out_dir, learner)

    def fit(
        self,
        train: FolderIndex,
        val: FolderIndex | None = None,
        *,
        resume: bool = False,
        stop_after: int | None = None,
        progress: bool = True,
        checkpoints: bool = True,
    ) -> TrainResult:
        """Train (or, for zero-shot, just build) the class embeddings.

        Args:
            train: labelled training images (already few-shot sampled when wanted).
            val: labelled ID validation images (accuracy logged each epoch).
            resume: continue from ``out_dir/checkpoint.pt`` when it exists.
            stop_after: stop once this many epochs are done (simulates an interruption; tests).
            progress: show tqdm bars.
            checkpoints: write ``checkpoint.pt`` after each epoch (off for the many short selection runs,
                which are rerun rather than resumed).

        Returns:
            The baked class embeddings and the history.
        """
        with torch_threads(self.cfg.threads):
            return self._fit(train, val, resume, stop_after, progress, checkpoints)

    def _fit(self, train: FolderIndex, val: FolderIndex | None, resume: bool, stop_after: int | None,
             progress: bool, checkpoints: bool = True) -> TrainResult:
        if resume:
            check_resume(self.out_dir, self.cfg, self.clip.name, self.clip.pretrained)  # before run.json is rewritten
        self._write_common(train, val)
        val_split = self.encode(val, "encode val", progress) if val is not None else None
        if self.cfg.method == "zero-shot":
            emb = zero_shot_class_embeddings(self.model, self.clip.tokenizer, self.classnames, self.cfg.templates)
            history = [self.validate(emb, val_split)] if val_split is not None else []
            return self._finish(emb, history, None)
        learner = self._new_learner()
        opt = self._optimizer(learner)
        scaler = torch.amp.GradScaler("cuda", enabled=self.cfg.amp and self.device.type == "cuda")
        start, history = self._maybe_resume(resume, learner, opt, scaler)
        train_split = self.encode(train, "encode train", progress) if self.cfg.uses_cache else None
        last = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, stop_after)
        for epoch in range(start, last):
            history.append(self._run_epoch(epoch, learner, opt, scaler, train, train_split, val_split, progress))
            if checkpoints:
                self._save_checkpoint(epoch + 1, learner, opt, scaler, history)
        return self._finish(learner.bake(), history, learner)

    def _run_epoch(self, epoch: int, learner: PromptLearner, opt: torch.optim.Optimizer, scaler: Any,
                   train: FolderIndex, train_split: EncodedSplit | None, val_split: EncodedSplit | None,
                   progress: bool) -> dict[str, Any]:
        cfg = self.cfg
        lr = lr_at_epoch(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        n = len(train_split.labels) if train_split is not None else len(train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).tolist()
        steps = math.ceil(n / cfg.batch_size)
        bar = tqdm(total=steps, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        begin = time.perf_counter()
        learner.train()
        if train_split is not None:
            feats, labels = train_split.features.to(self.device), train_split.labels.to(self.device)
            batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = (
                (feats[order[i : i + cfg.batch_size]], labels[order[i : i + cfg.batch_size]])
                for i in range(0, n, cfg.batch_size)
            )
        else:
            batches = self._stream(train, order, epoch)
        stats = self._epoch(learner, opt, scaler, _ticking(batches, bar), bar)
        seconds = time.perf_counter() - begin
        bar.close()
        learner.eval()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **stats, "seconds": seconds}
        if val_split is not None:
            row.update(self.validate(learner.bake(), val_split))
        level = logging.INFO if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs else logging.DEBUG
        logger.log(level, "%s", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        return row

    # ----------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epochs_done: int, learner: PromptLearner, opt: torch.optim.Optimizer,
                         scaler: Any, history: list[dict[str, Any]]) -> None:
        state = {"epochs_done": epochs_done, "ctx": learner.ctx.detach().cpu(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict(), "history": history, "config": asdict(self.cfg)}
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out_dir / CHECKPOINT)

    def _maybe_resume(self, resume: bool, learner: PromptLearner, opt: torch.optim.Optimizer,
                      scaler: Any) -> tuple[int, list[dict[str, Any]]]:
        path = self.out_dir / CHECKPOINT
        if not resume or not path.is_file():
            return 0, []
        state = torch.load(path, map_location="cpu", weights_only=False)  # its config was checked by check_resume
        with torch.no_grad():
            learner.ctx.copy_(state["ctx"].to(learner.ctx.device))
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        logger.info("resuming %s from epoch %d", path, state["epochs_done"])
        return int(state["epochs_done"]), list(state["history"])


def _ticking(batches: Iterator[Any], bar: Any) -> Iterator[Any]:
    for item in batches:
        yield item
        bar.update(1)

