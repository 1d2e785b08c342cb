"""Statistics of per-episode accuracies: confidence intervals, paired tests, Holm correction.

Conventions (the field's protocol, docs/method.md):

- 95% confidence interval of a mean over episodes: ``z * s / sqrt(n)`` with ``z = 1.96``
  (the normal quantile, as in the published tables) and ``s`` the sample standard deviation
  (``ddof = 1``).
- Paired comparisons: every model is evaluated on the same episodes (one episode seed), so
  the per-episode difference ``a_e - b_e`` is the unit of analysis; its mean, its 95% CI, a
  Wilcoxon signed-rank test (two-sided, zero differences dropped, ``scipy.stats.wilcoxon``)
  and a paired t-test (``scipy.stats.ttest_rel``).
- Several comparisons in one table: Holm's step-down correction
  (``statsmodels.stats.multitest.multipletests(method="holm")``).
- Several training seeds: the spread is the sample standard deviation of the per-seed means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.96

WILCOXON = "Wilcoxon signed-rank (two-sided)"
TTEST = "paired t-test (two-sided)"
HOLM = "Holm"


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("no values")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite")
    return arr


def ci_half_width(values: Sequence[float] | np.ndarray, z: float = Z95) -> float:
    """``z * std(ddof=1) / sqrt(n)``; 0 for a single value."""
    arr = _array(values)
    if arr.size < 2:
        return 0.0
    return float(z * arr.std(ddof=1) / math.sqrt(arr.size))


def mean_ci(values: Sequence[float] | np.ndarray, z: float = Z95) -> tuple[float, float]:
    """(mean, 95% CI half-width) of per-episode values."""
    arr = _array(values)
    return float(arr.mean()), ci_half_width(arr, z)


def seed_spread(seed_means: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation of per-seed mean accuracies; NaN with a single seed."""
    arr = _array(seed_means)
    return float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


@dataclass(frozen=True)
class PairedResult:
    """Per-episode comparison of model a against model b (a - b)."""

    n: int
    mean_diff: float
    ci95: float
    p_wilcoxon: float
    p_ttest: float


def paired_compare(a: Sequence[float] | np.ndarray,
                   b: Sequence[float] | np.ndarray) -> PairedResult:
    """Compare two models evaluated on the same episodes, in the same order."""
    xa, xb = _array(a), _array(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    # imported here: scipy.stats costs a second, which every Snakemake invocation (its
    # Snakefile imports the report's table names) would otherwise pay
    from scipy import stats as sps

    diff = xa - xb
    mean, half = mean_ci(diff)
    if np.all(diff == 0):
        p_w = p_t = 1.0
    else:
        p_w = float(sps.wilcoxon(xa, xb, zero_method="wilcox", alternative="two-sided").pvalue)
        if diff.size > 1 and np.ptp(diff) <= 1e-12:
            p_t = 0.0  # a constant non-zero difference: no variance, certainly not zero
        else:
            p_t = float(sps.ttest_rel(xa, xb).pvalue) if diff.size > 1 else float("nan")
    return PairedResult(int(diff.size), mean, half, p_w, p_t)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-corrected p-values (NaN entries stay NaN and are not counted)."""
    arr = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(arr.shape, np.nan)
    ok = ~np.isnan(arr)
    if ok.any():
        from statsmodels.stats.multitest import multipletests

        out[ok] = multipletests(arr[ok], method="holm")[1]
    return out
