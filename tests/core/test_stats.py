"""edgeq.core.stats against published values and independent re-derivations (no TensorFlow needed)."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from edgeq.core.stats import (CONFIDENCE, PairedTest, images_to_decide, mcnemar_exact, median_interval, paired_difference_interval, paired_test, ratio_interval, relative_width, wilson_interval)


# --- Wilson -------------------------------------------------------------------------------------

def test_wilson_interval_matches_published_value():
    # Newcombe (1998) "Two-sided confidence intervals for the single proportion", Statist. Med. 17:857-872,
    # example 81/263, method 3 (score): 0.2553 to 0.3662.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-5)
    assert hi == pytest.approx(0.3662, abs=5e-5)


def test_wilson_interval_zero_successes_has_lower_bound_exactly_zero():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    # z^2 / (n + z^2) with z = 1.959964: the closed form at k = 0.
    z2 = sps.norm.ppf(0.975) ** 2
    assert hi == pytest.approx(z2 / (10 + z2), abs=1e-12)


def test_wilson_interval_all_successes_has_upper_bound_exactly_one():
    assert wilson_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize("k,n,conf", [(0, 1, 0.95), (1, 3, 0.95), (81, 263, 0.95), (7, 50, 0.9),
                                      (49, 50, 0.99), (500, 1000, 0.95), (3, 10_000, 0.95)])
def test_wilson_interval_agrees_with_scipy(k, n, conf):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_interval_empty_sample_is_whole_unit_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- McNemar ------------------------------------------------------------------------------------

def test_mcnemar_exact_matches_hand_computed_binomial_tail():
    # 2 * P(X <= 2 | n = 12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 2 * 79 / 4096 = 0.0385742...
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857, abs=5e-6)


def test_mcnemar_exact_is_one_when_discordant_counts_are_equal():
    assert mcnemar_exact(7, 7) == pytest.approx(1.0)


def test_mcnemar_exact_is_one_without_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_exact_is_symmetric_in_b_and_c():
    for b, c in [(10, 2), (0, 5), (3, 17), (40, 25)]:
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


# --- Newcombe paired interval ---------------------------------------------------------------------

def _newcombe_reference(a, b, c, d, confidence=0.95):
    """Method 10 written a second way: Wilson limits as roots of the score quadratic, phi from the table."""
    n = a + b + c + d
    z = sps.norm.ppf(1 - (1 - confidence) / 2)

    def score_limits(k):
        # Wilson limits are the pi solving (k/n - pi)^2 = z^2 pi (1 - pi) / n.
        roots = np.roots([n + z * z, -(2 * k + z * z), k * k / n]).real
        return float(max(0.0, roots.min())), float(min(1.0, roots.max()))

    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = score_limits(a + b), score_limits(a + c)
    margins = [a + b, c + d, a + c, b + d]
    if 0 in margins:
        phi = 0.0
    else:
        ad_bc = a * d - b * c
        corrected = ad_bc if ad_bc < 0 else max(ad_bc - n / 2, 0)
        phi = corrected / math.sqrt(math.prod(margins))
    dl1, du2, dl2, du1 = p1 - l1, u2 - p2, p2 - l2, u1 - p1
    lower = (p1 - p2) - math.sqrt(max(0.0, dl1 ** 2 + du2 ** 2 - 2 * phi * dl1 * du2))
    upper = (p1 - p2) + math.sqrt(max(0.0, dl2 ** 2 + du1 ** 2 - 2 * phi * dl2 * du1))
    return max(-1.0, lower), min(1.0, upper)


def test_paired_difference_interval_matches_published_cavo_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017) ch. 8 and
    # Statist. Med. 2014;33:2850-2875: Cavo et al. table [[59, 6], [16, 80]], Newcombe square-and-add
    # (= Newcombe 1998 method 10, phi-corrected) estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    # The same figures are asserted by the contingencytables R package (tests/testthat/test-ch8.R).
    lo, hi = paired_difference_interval(59, 6, 16, 80)
    assert (6 - 16) / 161 == pytest.approx(-0.0621, abs=5e-5)
    assert lo == pytest.approx(-0.1186, abs=5e-5)
    assert hi == pytest.approx(-0.0046, abs=5e-5)


def test_paired_difference_interval_on_newcombe_example_table():
    # Newcombe (1998) Statist. Med. 17:2635-2650, example table a=36, b=12, c=2, d=0 (n=50, diff 0.2).
    # 0.0569 to 0.3404 was computed with _newcombe_reference above; the paper's Table II was not at hand
    # to re-check it, so the Cavo test is the externally published check. ad - bc < 0 here, so the phi
    # correction does not act (the Cavo table covers the corrected branch).
    lo, hi = paired_difference_interval(36, 12, 2, 0)
    assert lo == pytest.approx(0.0569, abs=5e-5)
    assert hi == pytest.approx(0.3404, abs=5e-5)
    assert (lo, hi) == pytest.approx(_newcombe_reference(36, 12, 2, 0), abs=1e-12)


def test_paired_difference_interval_agrees_with_independent_implementation():
    tables = [t for t in itertools.product(range(5), repeat=4) if sum(t) > 0]
    tables += [(930, 12, 4, 54), (12, 5, 2, 7), (14, 5, 0, 22), (212, 144, 256, 707)]
    for t in tables:
        for conf in (0.9, 0.95):
            assert paired_difference_interval(*t, confidence=conf) == pytest.approx(
                _newcombe_reference(*t, confidence=conf), abs=1e-9), t


@pytest.mark.parametrize("table", [(0, 0, 0, 0), (100, 0, 0, 0), (0, 0, 0, 100), (60, 0, 0, 40),
                                   (0, 100, 0, 0), (0, 0, 100, 0), (0, 3, 3, 0)])
def test_paired_difference_interval_degenerate_tables_are_finite_and_contain_estimate(table):
    a, b, c, d = table
    lo, hi = paired_difference_interval(a, b, c, d)
    n = sum(table)
    est = (b - c) / n if n else 0.0
    assert math.isfinite(lo) and math.isfinite(hi)
    assert -1.0 <= lo <= est <= hi <= 1.0


def test_paired_difference_interval_empty_table_is_uninformative():
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)


# --- paired_test --------------------------------------------------------------------------------

def test_paired_test_counts_cells_drop_and_p():
    # 6 both right, 10 only-reference right, 2 only-candidate right, 2 both wrong.
    ref = np.array([1] * 6 + [1] * 10 + [0] * 2 + [0] * 2, dtype=bool)
    cand = np.array([1] * 6 + [0] * 10 + [1] * 2 + [0] * 2, dtype=bool)
    t = paired_test(ref, cand)
    assert (t.n, t.a, t.b, t.c, t.d) == (20, 6, 10, 2, 2)
    assert t.drop == pytest.approx(8 / 20)
    assert t.p == pytest.approx(2 * 79 / 4096)
    assert t.ci95 == paired_difference_interval(6, 10, 2, 2)


def test_paired_test_to_dict_is_plain_json():
    t = paired_test(np.array([True, True, False, True]), np.array([True, False, False, True]))
    d = t.to_dict()
    assert set(d) == {"n", "b", "c", "drop", "ci95", "p"}
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) is float for v in d["ci95"]) and type(d["drop"]) is float
    assert isinstance(t, PairedTest)


def test_paired_test_rejects_arrays_of_different_length():
    with pytest.raises(ValueError):
        paired_test(np.ones(3, bool), np.ones(4, bool))


# --- median / ratio intervals -------------------------------------------------------------------

def test_median_interval_n10_uses_second_and_ninth_order_statistics():
    # 1 - 2 * P(B <= 1 | 10, 1/2) = 1 - 2 * 11/1024 = 0.978515625; j = 3 would give 0.8906 < 0.95.
    values = [10.0, 3.0, 7.0, 1.0, 9.0, 4.0, 2.0, 8.0, 6.0, 5.0]
    med, lo, hi, cov = median_interval(values)
    assert (med, lo, hi) == (5.5, 2.0, 9.0)
    assert cov == pytest.approx(0.978515625, abs=1e-12)


def test_median_interval_n5_falls_back_to_min_max_with_actual_coverage():
    # 1 - 2 * (1/2)^5 = 0.9375 < 0.95: the widest possible interval is still short of 95 %.
    assert median_interval([5, 1, 4, 2, 3]) == pytest.approx((3.0, 1.0, 5.0, 0.9375))


def test_median_interval_coverage_reaches_confidence_from_n6():
    rng = np.random.default_rng(0)
    for n in range(6, 200):
        _, lo, hi, cov = median_interval(rng.lognormal(size=n))
        assert cov >= CONFIDENCE
        assert lo <= hi


def test_median_interval_rejects_empty_input():
    with pytest.raises(ValueError):
        median_interval([])


def test_ratio_interval_on_known_ratios():
    ratios = [0.9, 1.1, 1.0, 0.95, 1.05, 1.2, 0.85, 1.02, 0.98, 1.01]
    # Sorted: 0.85 0.90 0.95 0.98 1.00 1.01 1.02 1.05 1.10 1.20 -> median 1.005, x(2)=0.90, x(9)=1.10.
    assert ratio_interval(ratios) == pytest.approx((1.005, 0.9, 1.1, 0.978515625))


# --- planning helpers ---------------------------------------------------------------------------

def test_images_to_decide_scales_with_inverse_square_of_halfwidth():
    assert images_to_decide(100, 0.02, 0.01) == 400
    assert images_to_decide(1000, 0.03, 0.01) == 9000


def test_images_to_decide_is_none_without_positive_margin():
    assert images_to_decide(100, 0.02, 0.0) is None
    assert images_to_decide(100, 0.02, -0.01) is None


def test_relative_width_divides_by_centre_and_is_inf_for_nonpositive_centre():
    assert relative_width(0.9, 1.1, 1.0) == pytest.approx(0.2)
    assert relative_width(0.9, 1.1, 0.0) == math.inf
    assert relative_width(0.9, 1.1, -1.0) == math.inf


# ------------------------------------------------------------------ per-class paired tests, Holm
def test_holm_matches_the_step_down_definition():
    from edgeq.core.stats import holm

    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.9]) == [0.9] and holm([0.6, 0.6]) == [1.0, 1.0]


def test_a_collapsed_class_is_found_inside_a_small_overall_drop():
    from edgeq.core.stats import paired_test, per_class_paired

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 200)
    ref = rng.random(labels.size) < 0.9
    cand = ref.copy()
    hit = np.flatnonzero((labels == 6) & ref)[:60]  # class 6 loses 60 of its ~180 right answers, nothing else moves
    cand[hit] = False
    overall = paired_test(ref, cand)
    assert overall.drop == pytest.approx(0.03)  # 3 points overall
    tests = {t.label: t for t in per_class_paired(labels, ref, cand)}
    assert tests[6].test.drop == pytest.approx(0.3) and tests[6].p_holm < 1e-10
    assert tests[6].recall_ref - tests[6].recall_cand == pytest.approx(0.3)
    assert all(t.p_holm == 1.0 and t.test.drop == 0 for c, t in tests.items() if c != 6)
