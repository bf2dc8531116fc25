"""The contrastive loss and the evaluation metrics, against independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from models.train.evaluate import ood_metrics
from proxy.pretrain_tiny import contrastive_loss

pytestmark = pytest.mark.unit


def _features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_unique_captions_give_clips_loss():
    img, txt = _features()
    scale = torch.tensor(10.0)
    expected = ClipLoss()(img, txt, scale)
    assert torch.allclose(contrastive_loss(img, txt, scale), expected, atol=1e-6)
    assert torch.allclose(contrastive_loss(img, txt, scale, torch.arange(6)), expected, atol=1e-6)


def test_identical_captions_are_positives():
    img, txt = _features()
    ids = np.array([0, 1, 0, 2, 1, 0])
    logits = 10.0 * img.numpy().astype(np.float64) @ txt.numpy().astype(np.float64).T  # (B, B)

    def side(z: np.ndarray) -> float:
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        # each row: mean of -log p over its positives (every column with the same caption)
        return float(np.mean([-logp[i, ids == ids[i]].mean() for i in range(len(z))]))

    expected = (side(logits) + side(logits.T)) / 2
    got = contrastive_loss(img, txt, torch.tensor(10.0), torch.from_numpy(ids))
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_auroc_and_fpr_against_counting():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 300)
    pairs = (id_s[:, None] > ood_s[None, :]).mean() + 0.5 * (id_s[:, None] == ood_s[None, :]).mean()
    assert ood_metrics(id_s, ood_s)["auroc"] == pytest.approx(pairs, abs=1e-9)
    thr = np.sort(id_s)[int(np.floor(0.05 * (len(id_s) - 1)))]
    assert ood_metrics(id_s, ood_s)["fpr95"] == pytest.approx(np.mean(ood_s >= thr), abs=0.01)
    assert ood_metrics(np.ones(3) * 2, np.zeros(3))["auroc"] == 1.0
