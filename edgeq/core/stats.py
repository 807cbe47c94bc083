"""Statistics behind every figure edgeq reports: proportions, paired accuracy drops, latency medians.

Accuracy comparisons are paired (both models see the same images), so they use McNemar / Newcombe
rather than two independent proportions; latency is summarised by medians with distribution-free
intervals because timing noise is skewed and heavy-tailed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scipy.stats is imported where it is used: it takes about a second, which `edgeq --help` should not pay

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (returns (0.0, 1.0) when n == 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z2 = _z(confidence) ** 2
    p = k / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At k == 0 or k == n the closed form lands on the bound only up to rounding; pin it exactly.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs (binomial test of b vs c at 1/2); 1.0 when b + c == 0."""
    if b + c == 0:
        return 1.0
    from scipy import stats

    # At p = 1/2 the binomial is symmetric, so scipy's two-sided p is exactly 2 * min tail, capped at 1.
    return float(min(1.0, stats.binomtest(b, b + c, 0.5).pvalue))


def paired_difference_interval(a: int, b: int, c: int, d: int,
                               confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of (b - c) / n = p_ref - p_cand, Newcombe (1998) method 10 (hybrid Wilson score with the phi correction)."""
    # Cells: a = both right, b = ref right & cand wrong, c = ref wrong & cand right, d = both wrong.
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0  # no images: every difference is possible
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    # The two marginals are correlated through the concordant cells; Newcombe shrinks ad - bc towards 0
    # by n/2 (only when positive), which keeps coverage near nominal for small tables.
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        cross = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = cross / math.sqrt(margins)
    diff = p1 - p2
    # |phi| <= 1 keeps both radicands >= 0 in exact arithmetic; max() absorbs rounding.
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, diff - down), min(1.0, diff + up)


@dataclass(frozen=True)
class PairedTest:
    """Paired accuracy comparison of a candidate against a reference on the same images."""

    n: int
    a: int
    b: int
    c: int
    d: int
    drop: float  # (b - c) / n; positive = candidate worse
    ci95: tuple[float, float]
    p: float

    def to_dict(self) -> dict:
        """JSON-ready summary with plain Python numbers."""
        return {"n": int(self.n), "b": int(self.b), "c": int(self.c), "drop": float(self.drop),
                "ci95": [float(self.ci95[0]), float(self.ci95[1])], "p": float(self.p)}


def paired_test(ref_correct: np.ndarray, cand_correct: np.ndarray) -> PairedTest:
    """Paired comparison of two classifiers on the same images (boolean arrays: image i right or wrong)."""
    r = np.asarray(ref_correct, dtype=bool).ravel()
    k = np.asarray(cand_correct, dtype=bool).ravel()
    if r.shape != k.shape:
        raise ValueError(f"paired arrays differ in length: {r.size} vs {k.size}")
    a, b = int(np.sum(r & k)), int(np.sum(r & ~k))
    c, d = int(np.sum(~r & k)), int(np.sum(~r & ~k))
    n = a + b + c + d
    return PairedTest(n=n, a=a, b=b, c=c, d=d, drop=(b - c) / n if n else 0.0,
                      ci95=paired_difference_interval(a, b, c, d), p=mcnemar_exact(b, c))


def median_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(median, lo, hi, coverage): distribution-free order-statistic interval of the median.

    lo/hi are order statistics x(j), x(n+1-j), the narrowest symmetric pair whose binomial coverage is
    >= confidence; when n is too small for that (n < 6 at 95 %), (median, min, max, actual coverage).
    """
    x = np.sort(np.asarray(values, dtype=float).ravel())
    n = x.size
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    from scipy import stats

    # P(x(j) <= median <= x(n+1-j)) = 1 - 2 P(B <= j-1), B ~ Bin(n, 1/2), whatever the distribution.
    js = np.arange(1, n // 2 + 1)
    cover = 1.0 - 2.0 * stats.binom.cdf(js - 1, n, 0.5)
    ok = js[cover >= confidence - 1e-12]  # tolerance: coverage is a dyadic rational, confidence often is not
    j = int(ok[-1]) if ok.size else 1
    coverage = float(1.0 - 2.0 * stats.binom.cdf(j - 1, n, 0.5))
    return float(np.median(x)), float(x[j - 1]), float(x[n - j]), coverage


def ratio_interval(ratios, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """Median and interval of per-round latency ratios (candidate/reference, each from one interleaved round): median_interval on the ratios."""
    return median_interval(ratios, confidence)


def images_to_decide(n: int, halfwidth: float, margin: float) -> int | None:
    """Roughly how many evaluation images would shrink an interval of `halfwidth` (at n images) to `margin` (half-width scales as 1/sqrt(n)); None when margin <= 0 or halfwidth is not finite."""
    if margin <= 0 or not math.isfinite(halfwidth):
        return None
    # Round before ceil so that e.g. 100 * (0.02 / 0.01) ** 2 stays 400, not 401 from float noise.
    return int(math.ceil(round(n * (halfwidth / margin) ** 2, 6)))


def relative_width(lo: float, hi: float, centre: float) -> float:
    """(hi - lo) / centre, inf when centre <= 0."""
    return (hi - lo) / centre if centre > 0 else math.inf


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error across the comparisons, in the order given)."""
    p = [float(x) for x in pvalues]
    m = len(p)
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))  # step-down; adjusted p-values never decrease
        out[i] = running
    return out


@dataclass(frozen=True)
class ClassTest:
    """One class's recall under a reference and a candidate on the same images, paired (exact McNemar on the images
    of that class), with the Holm-adjusted p-value across every class of the comparison."""

    label: int
    test: PairedTest  # drop = recall lost (positive = candidate worse), on the images whose true class is `label`
    p_holm: float

    @property
    def recall_ref(self) -> float:
        return (self.test.a + self.test.b) / self.test.n if self.test.n else 0.0

    @property
    def recall_cand(self) -> float:
        return (self.test.a + self.test.c) / self.test.n if self.test.n else 0.0


def per_class_paired(labels: np.ndarray, ref_correct: np.ndarray, cand_correct: np.ndarray) -> list[ClassTest]:
    """Per class, the paired test of the candidate's recall against the reference's; p-values Holm-corrected across
    the classes present, so "class k lost recall" holds family-wise at the stated level."""
    labels = np.asarray(labels).ravel()
    r = np.asarray(ref_correct, dtype=bool).ravel()
    k = np.asarray(cand_correct, dtype=bool).ravel()
    classes = sorted(int(c) for c in np.unique(labels))
    tests = [paired_test(r[labels == c], k[labels == c]) for c in classes]
    adjusted = holm([t.p for t in tests])
    return [ClassTest(c, t, p) for c, t, p in zip(classes, tests, adjusted)]
