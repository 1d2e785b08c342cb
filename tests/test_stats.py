"""stats: CIs by hand, paired tests against scipy directly, Holm by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from subspace_fsl import stats


def test_mean_ci_by_hand():
    values = [0.2, 0.4, 0.6, 0.8]
    mean = 0.5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)  # sample std
    m, half = stats.mean_ci(values)
    assert m == pytest.approx(mean)
    assert half == pytest.approx(1.96 * sd / 2.0)


def test_single_value_has_zero_ci_and_nan_seed_spread():
    assert stats.mean_ci([0.7]) == (0.7, 0.0)
    assert math.isnan(stats.seed_spread([0.7]))


def test_seed_spread_is_sample_std():
    assert stats.seed_spread([0.5, 0.6, 0.7]) == pytest.approx(0.1)


def test_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        stats.mean_ci([])
    with pytest.raises(ValueError):
        stats.mean_ci([0.1, float("nan")])


def test_paired_compare_matches_scipy():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.3, 0.7, size=200)
    a = np.clip(b + rng.normal(0.03, 0.05, size=200), 0, 1)
    r = stats.paired_compare(a, b)
    diff = a - b
    assert r.n == 200
    assert r.mean_diff == pytest.approx(diff.mean())
    assert r.ci95 == pytest.approx(1.96 * diff.std(ddof=1) / math.sqrt(200))
    assert r.p_wilcoxon == pytest.approx(sps.wilcoxon(diff).pvalue)
    assert r.p_ttest == pytest.approx(sps.ttest_1samp(diff, 0.0).pvalue)
    assert r.p_ttest < 0.001


def test_paired_identical_and_constant_shift():
    a = np.linspace(0.2, 0.8, 30)
    same = stats.paired_compare(a, a)
    assert (same.mean_diff, same.ci95, same.p_wilcoxon, same.p_ttest) == (0.0, 0.0, 1.0, 1.0)
    shifted = stats.paired_compare(a + 0.1, a)
    assert shifted.mean_diff == pytest.approx(0.1)
    assert shifted.p_ttest == 0.0
    assert shifted.p_wilcoxon < 1e-5


def test_paired_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        stats.paired_compare([0.1, 0.2], [0.1])


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.5
    expected = [0.04, 0.09, 0.09, 0.5]
    np.testing.assert_allclose(stats.holm(p), expected)


def test_holm_keeps_nan():
    out = stats.holm([0.01, float("nan"), 0.02])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=50))
def test_ci_covers_by_construction(values):
    m, half = stats.mean_ci(values)
    arr = np.asarray(values)
    assert m == pytest.approx(arr.mean())
    assert half >= 0
    assert half == pytest.approx(1.96 * arr.std(ddof=1) / math.sqrt(arr.size), abs=1e-12)
