"""The EBM loss against an independent NumPy transcription of METHOD.md, steps 1-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.scores import delta_energy
from models.train.losses import ebm_loss, ebm_lower_bound, masked_similarity, num_masked

pytestmark = pytest.mark.unit


def _np_energy(z: np.ndarray, t: float) -> float:
    m = (z / t).max()
    return float(-t * (m + np.log(np.exp(z / t - m).sum())))


def _reference(f, emb, y, scale, lam, mask_ratio, top_c, t, ce_on):
    """METHOD.md written out per image with loops, float64 (top_c > 1: label then the largest others)."""
    f, emb = f.astype(np.float64), emb.astype(np.float64)
    losses_ce, lbs = [], []
    for b in range(f.shape[0]):
        z = scale * emb @ f[b]  # (K,)
        others = [k for k in np.argsort(-z, kind="stable") if k != y[b]]
        targets = [y[b]] + others[: top_c - 1]
        lb, z_first = 0.0, None
        for k in targets:
            prod = f[b] * emb[k]  # (D,)
            n = round(mask_ratio * len(prod))
            drop = np.argsort(-prod, kind="stable")[:n]
            s_tilde = prod.sum() - prod[drop].sum()
            z_edit = z.copy()
            z_edit[k] = s_tilde * scale
            lb += _np_energy(z_edit, t) - _np_energy(z, t)
            z_first = z_edit if z_first is None else z_first
        z_ce = z_first if ce_on == "edited" else z
        losses_ce.append(-(z_ce[y[b]] - np.log(np.exp(z_ce - z_ce.max()).sum()) - z_ce.max()))
        lbs.append(lb)
    return float(np.mean(losses_ce) - lam * np.mean(lbs)), np.array(lbs)


def _batch(seed: int, b: int = 6, k: int = 5, d: int = 40):
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    emb = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    y = torch.randint(0, k, (b,), generator=g)
    return f, emb, y


@pytest.mark.parametrize("ce_on", ["edited", "original"])
@pytest.mark.parametrize(("lam", "mask_ratio", "top_c", "t", "scale"),
                         [(1.0, 0.1, 1, 1.0, 100.0), (0.5, 0.25, 2, 2.0, 20.0), (2.0, 0.05, 3, 0.5, 50.0)])
def test_loss_matches_the_reference_formula(ce_on, lam, mask_ratio, top_c, t, scale):
    f, emb, y = _batch(0)
    loss, terms = ebm_loss(f, emb, y, scale, ebm_weight=lam, mask_ratio=mask_ratio, top_c=top_c, temperature=t,
                           ce_on=ce_on)
    ref_loss, ref_lb = _reference(f.numpy(), emb.numpy(), y.numpy(), scale, lam, mask_ratio, top_c, t, ce_on)
    np.testing.assert_allclose(terms.delta_e_lb.numpy(), ref_lb, rtol=1e-4, atol=1e-3)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-3)


def test_no_ebm_weight_and_original_logits_is_plain_cross_entropy():
    f, emb, y = _batch(1)
    loss, _ = ebm_loss(f, emb, y, 100.0, ebm_weight=0.0, ce_on="original", mask_ratio=0.3, top_c=2)
    torch.testing.assert_close(loss, F.cross_entropy(100.0 * f @ emb.t(), y))


def test_mask_zeroes_exactly_mask_ratio_of_the_largest_products():
    d = 20
    f = torch.ones(1, d) / d**0.5
    emb = torch.arange(1.0, d + 1).unsqueeze(0)  # products grow with the index: the top ones are the last
    for ratio in (0.0, 0.1, 0.25, 0.5, 1.0):
        n = num_masked(d, ratio)
        assert n == round(ratio * d)
        prod = (f[0] * emb[0]).numpy()
        expected = prod[: d - n].sum()  # the n largest products (last n) removed
        got = masked_similarity(f, emb, torch.zeros(1, 1, dtype=torch.long), ratio)
        assert got.item() == pytest.approx(float(expected), rel=1e-6)


def test_mask_ratio_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_masked(10, 1.5)


def test_lower_bound_is_below_delta_energy_when_masked_similarity_is_non_negative():
    g = torch.Generator().manual_seed(2)
    # Non-negative features and embeddings: every product is >= 0, so s̃ >= 0 = the reset logit.
    f = F.normalize(torch.rand(64, 32, generator=g), dim=-1)
    emb = F.normalize(torch.rand(6, 32, generator=g), dim=-1)
    for ratio, scale, t in ((0.1, 100.0, 1.0), (0.5, 30.0, 2.0), (0.9, 10.0, 0.5)):
        terms = ebm_lower_bound(f, emb, scale, labels=None, mask_ratio=ratio, temperature=t)
        de = delta_energy(terms.logits, top_c=1, reset_logit=0.0, temperature=t)
        assert bool((terms.delta_e_lb <= de + 1e-4).all())
    # Masking every dimension makes s̃ = 0 = r: the bound is ΔEnergy itself.
    terms = ebm_lower_bound(f, emb, 50.0, labels=None, mask_ratio=1.0)
    torch.testing.assert_close(terms.delta_e_lb, delta_energy(terms.logits), atol=1e-4, rtol=1e-4)


def test_gradient_reaches_the_class_embeddings_only_through_the_loss():
    f, emb, y = _batch(3)
    emb = emb.clone().requires_grad_(True)
    loss, _ = ebm_loss(f, emb, y, 100.0)
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_unknown_ce_on_is_refused():
    f, emb, y = _batch(4)
    with pytest.raises(ValueError, match="ce_on"):
        ebm_loss(f, emb, y, 100.0, ce_on="both")  # type: ignore[arg-type]
