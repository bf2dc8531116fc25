"""Scores against independent NumPy references written from METHOD.md's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import scores
from models.scores import SCORE_NAMES, ScoreParams, delta_energy, energy, id_score, max_logit, mcm, msp

pytestmark = pytest.mark.unit


def _lse(v: np.ndarray) -> float:
    m = np.max(v)
    return float(m + np.log(np.sum(np.exp(v - m))))


def ref_energy(z: np.ndarray, t: float) -> np.ndarray:
    return np.array([-t * _lse(row / t) for row in z.astype(np.float64)])


def ref_delta_energy(z: np.ndarray, c: int, r: float, t: float) -> np.ndarray:
    """Literal METHOD.md loop: for each of the c largest logits, reset it and sum the energy rise."""
    out = []
    for row in z.astype(np.float64):
        order = np.argsort(-row, kind="stable")[:c]
        e_full = -t * _lse(row / t)
        total = 0.0
        for j in order:
            edited = row.copy()
            edited[j] = r
            total += -t * _lse(edited / t) - e_full
        out.append(total)
    return np.array(out)


def ref_softmax_max(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


@pytest.fixture(params=[1.0, 100.0], ids=["unit-scale", "clip-scale"])
def logits(request) -> np.ndarray:
    rng = np.random.default_rng(0)
    # cosine-like similarities in [-0.3, 0.5] times the scale: the range CLIP logits live in
    return (rng.uniform(-0.3, 0.5, size=(64, 10)) * request.param).astype(np.float32)


@pytest.mark.parametrize("c", [1, 2, 3, 10])
@pytest.mark.parametrize("t", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("r", [0.0, -5.0, 20.0])
def test_delta_energy_matches_reference(logits, c, t, r):
    got = delta_energy(torch.from_numpy(logits), top_c=c, reset_logit=r, temperature=t).numpy()
    want = ref_delta_energy(logits, c, r, t)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


def test_delta_energy_is_nonnegative_when_reset_below_replaced():
    rng = np.random.default_rng(1)
    z = rng.uniform(0.05, 0.4, size=(128, 20)).astype(np.float32) * 100  # all logits > 0 = reset
    for c in (1, 3, 5):
        assert (delta_energy(torch.from_numpy(z), top_c=c).numpy() >= 0).all()


def test_delta_energy_negative_when_reset_above_logits():
    z = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    got = delta_energy(torch.from_numpy(z), top_c=1, reset_logit=10.0).item()
    assert got < 0
    np.testing.assert_allclose(got, ref_delta_energy(z, 1, 10.0, 1.0), rtol=1e-5)


def test_delta_energy_with_ties():
    z = np.array([[5.0, 5.0, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    for c in (1, 2, 3):
        got = delta_energy(torch.from_numpy(z), top_c=c).numpy()
        np.testing.assert_allclose(got, ref_delta_energy(z, c, 0.0, 1.0), rtol=1e-5, atol=1e-5)


def test_delta_energy_top_c_clamped_to_num_classes():
    z = torch.randn(4, 3)
    assert torch.allclose(delta_energy(z, top_c=10), delta_energy(z, top_c=3))


def test_delta_energy_no_underflow_at_clip_scale():
    # p_max is 1 - 1e-40: log(1 - p) would give inf; the edited-vector LSE stays finite and exact.
    z = np.array([[100.0, 8.0, 5.0, 1.0]], dtype=np.float32)
    got = delta_energy(torch.from_numpy(z)).item()
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref_delta_energy(z, 1, 0.0, 1.0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_stable(logits, dtype):
    z_half = torch.from_numpy(logits).to(dtype)
    z_ref = z_half.float().numpy()  # the reference sees exactly the half-rounded values
    got = delta_energy(z_half, top_c=2).numpy()
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_delta_energy(z_ref, 2, 0.0, 1.0), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(energy(z_half).numpy(), ref_energy(z_ref, 1.0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(msp(z_half).numpy(), ref_softmax_max(z_ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_energy_matches_reference(logits, t):
    got = energy(torch.from_numpy(logits), temperature=t).numpy()
    np.testing.assert_allclose(got, ref_energy(logits, t), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("a", [-50.0, 0.3, 7.0])
def test_energy_shift_identity(logits, a):
    z = torch.from_numpy(logits)
    np.testing.assert_allclose(energy(z + a).numpy(), (energy(z) - a).numpy(), rtol=1e-5, atol=1e-3)


def test_msp_max_logit_mcm_match_reference(logits):
    z = torch.from_numpy(logits)
    np.testing.assert_allclose(msp(z).numpy(), ref_softmax_max(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(max_logit(z).numpy(), logits.max(axis=1), rtol=0, atol=0)
    sims = logits / 100.0
    for tau in (1.0, 0.1):
        np.testing.assert_allclose(mcm(torch.from_numpy(sims), tau).numpy(), ref_softmax_max(sims / tau), rtol=1e-5)


def test_delta_energy_top1_is_monotone_in_msp_with_negligible_reset():
    # PROXY-NOTES: with the reset term negligible, ΔE_1 = -log(1 - p_max).
    z = torch.tensor([[12.0, 2.0, 1.0], [10.0, 9.0, 1.0], [50.0, 49.0, 48.0]])
    p = msp(z).double()
    np.testing.assert_allclose(delta_energy(z, reset_logit=-1e4).double().numpy(), (-torch.log1p(-p)).numpy(),
                               rtol=1e-3)


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_id_scores_higher_means_more_in_distribution(name):
    confident = torch.tensor([[90.0, 10.0, 5.0, 0.0]])
    flat = torch.tensor([[20.0, 19.5, 19.0, 19.2]])
    params = ScoreParams(delta_energy_top_c=1)
    assert id_score(name, confident, 100.0, params).item() > id_score(name, flat, 100.0, params).item()


def test_id_score_unknown_name_lists_valid():
    with pytest.raises(KeyError, match="delta_energy"):
        id_score("nope", torch.zeros(1, 2), 100.0)


def test_scores_module_exports():
    assert set(SCORE_NAMES) == {"msp", "max_logit", "energy", "mcm", "delta_energy"}
    assert scores.delta_energy is delta_energy


def ref_delta_energy_reset(z: np.ndarray, c: int, mode: str, t: float) -> np.ndarray:
    """METHOD.md's loop with the reset value taken from the image itself (min or mean logit)."""
    out = []
    for row in z.astype(np.float64):
        r = row.min() if mode == "min" else row.mean()
        out.append(ref_delta_energy(row[None], c, r, t)[0])
    return np.array(out)


@pytest.mark.parametrize("mode", ["min", "mean"])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("t", [1.0, 30.0])
def test_delta_energy_with_a_per_image_reset(logits, mode, c, t):
    got = delta_energy(torch.from_numpy(logits), top_c=c, temperature=t, reset=mode).numpy()
    np.testing.assert_allclose(got, ref_delta_energy_reset(logits, c, mode, t), rtol=1e-4, atol=2e-3)


def test_score_params_keep_each_score_apart_and_reject_bad_values():
    z = torch.tensor([[3.0, 1.0, 0.5]])
    p = ScoreParams(delta_energy_temperature=10.0, energy_temperature=2.0)
    np.testing.assert_allclose(id_score("energy", z, 1.0, p).numpy(), -energy(z, 2.0).numpy())
    np.testing.assert_allclose(id_score("delta_energy", z, 1.0, p).numpy(), delta_energy(z, temperature=10.0).numpy())
    with pytest.raises(ValueError, match="reset"):
        ScoreParams(delta_energy_reset="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScoreParams(energy_temperature=0.0)


def test_cosine_logits_is_scale_times_cosine():
    from models.scores import cosine_logits

    f = torch.tensor([[3.0, 4.0]])  # normalised to (0.6, 0.8)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(cosine_logits(f, t, 10.0).numpy(), [[6.0, 8.0]], rtol=1e-6)


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_gate_scores_follow_the_named_score(name):
    from models.scoring_spec import gate_scores

    rng = np.random.default_rng(3)
    z = (rng.uniform(-0.3, 0.5, size=(8, 5)) * 20).astype(np.float32)
    p = ScoreParams(delta_energy_top_c=2, delta_energy_temperature=4.0, energy_temperature=3.0, mcm_tau=0.1)
    outputs = {"logits": z, "delta_energy": delta_energy(torch.from_numpy(z), 2, 0.0, 4.0).numpy()}
    got = gate_scores(outputs, name, 20.0, p)
    np.testing.assert_allclose(got, id_score(name, torch.from_numpy(z), 20.0, p).numpy(), rtol=1e-5, atol=1e-5)
