from __future__ import annotations

import numpy as np
import pytest

from models.calibration import CalibrationRecord

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5])
def test_threshold_passes_target_fraction(tpr):
    s = np.random.default_rng(0).normal(size=5000)
    rec = CalibrationRecord.from_scores(s, target_tpr=tpr)
    assert abs((s >= rec.threshold).mean() - tpr) < 0.002
    assert rec.achieved_tpr == pytest.approx((s >= rec.threshold).mean())
    assert rec.n == 5000 and rec.min == s.min() and rec.max == s.max()


def test_p_value_is_empirical_cdf():
    s = np.random.default_rng(1).normal(size=20000)
    rec = CalibrationRecord.from_scores(s)
    probe = np.array([-10.0, -1.0, 0.0, 0.5, 10.0])
    want = np.array([(s <= v).mean() for v in probe])
    np.testing.assert_allclose(rec.p_value(probe), want, atol=0.01)
    assert rec.p_value(np.array([rec.threshold]))[0] == pytest.approx(0.05, abs=0.01)


def test_p_value_with_ties():
    rec = CalibrationRecord.from_scores(np.array([1.0] * 50 + [2.0] * 50))
    assert rec.p_value(np.array([1.0]))[0] == pytest.approx(0.5, abs=0.02)
    assert rec.p_value(np.array([0.5]))[0] == 0.0 and rec.p_value(np.array([3.0]))[0] == 1.0


def test_is_ood_below_threshold():
    rec = CalibrationRecord.from_scores(np.arange(100.0))
    assert rec.is_ood(np.array([rec.threshold - 1, rec.threshold])).tolist() == [True, False]


def test_rejects_empty_or_nonfinite():
    with pytest.raises(ValueError):
        CalibrationRecord.from_scores(np.array([]))
    with pytest.raises(ValueError):
        CalibrationRecord.from_scores(np.array([1.0, np.nan]))
