"""The report's statistics (bbrctl.report.stats) against scipy.stats on fixed inputs.

scipy is a test dependency only: the report computes the t quantile itself so that it
starts without importing scipy (benchmarks/report.py checks the import list).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bbrctl.report import stats

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

DFS = [0.5, 1, 1.5, 2, 2.7, 3, 4, 5.3, 7, 10, 16.4, 30, 100, 1000, 1e5]
PROBS = [1e-9, 1e-4, 0.005, 0.025, 0.1, 0.3, 0.5, 0.7, 0.9, 0.975, 0.995, 0.9999]


def test_betainc_matches_scipy():
    for a, b, x in itertools.product([0.1, 0.5, 1.0, 2.5, 10.0, 150.0, 2000.0], [0.1, 0.5, 1.0, 3.0, 50.0, 700.0],
                                     [1e-8, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-9]):
        want = scipy_special.betainc(a, b, x)
        assert stats.betainc(a, b, x) == pytest.approx(want, rel=1e-10, abs=1e-300), (a, b, x)


def test_betainc_edges_and_bad_input():
    assert stats.betainc(2.0, 3.0, 0.0) == 0.0 and stats.betainc(2.0, 3.0, 1.0) == 1.0
    for bad in [(0.0, 1.0, 0.5), (1.0, -1.0, 0.5), (1.0, 1.0, 1.5)]:
        with pytest.raises(ValueError):
            stats.betainc(*bad)


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_matches_scipy(df):
    for p in PROBS:
        want = scipy_stats.t.ppf(p, df)
        assert stats.t_ppf(p, df) == pytest.approx(want, rel=1e-9, abs=1e-12), (p, df)


@pytest.mark.parametrize("df", DFS)
def test_t_cdf_and_pdf_match_scipy(df):
    for t in [-80.0, -4.0, -1.0, -0.1, 0.0, 0.3, 1.96, 3.0, 12.0, 1e3]:
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-14), (t, df)
        assert stats.t_pdf(t, df) == pytest.approx(scipy_stats.t.pdf(t, df), rel=1e-9, abs=1e-300), (t, df)


def test_t_with_infinite_df_is_the_normal():
    assert stats.t_ppf(0.975, math.inf) == pytest.approx(scipy_stats.norm.ppf(0.975), rel=1e-12)
    assert stats.t_cdf(1.3, math.inf) == pytest.approx(scipy_stats.norm.cdf(1.3), rel=1e-12)


def test_t_bad_input():
    for p, df in [(0.0, 3), (1.0, 3), (0.5, 0), (0.9, -2)]:
        with pytest.raises(ValueError):
            stats.t_ppf(p, df)


@given(st.floats(min_value=0.001, max_value=0.999), st.floats(min_value=0.3, max_value=500))
def test_t_quantile_inverts_the_cdf(p, df):
    assert stats.t_cdf(stats.t_ppf(p, df), df) == pytest.approx(p, abs=1e-11)


# Per-seed APs as a small seed study gives them (made-up values with realistic spread).
BASE = [29.8, 28.1, 28.3, 30.4, 27.6]
EIOU = [30.6, 29.8, 30.1, 31.7, 29.0]
FOCAL = [31.5, 31.4, 31.9]


def test_paired_interval_matches_scipy_ttest_rel():
    iv = stats.paired(dict(enumerate(EIOU)), dict(enumerate(BASE)))
    ref = scipy_stats.ttest_rel(EIOU, BASE)
    ci = ref.confidence_interval(0.95)
    assert (iv.test, iv.n_pairs, iv.df) == ("paired", 5, 4)
    assert iv.value == pytest.approx(sum(EIOU) / 5 - sum(BASE) / 5, rel=1e-12)
    assert iv.low == pytest.approx(ci.low, rel=1e-9) and iv.high == pytest.approx(ci.high, rel=1e-9)
    assert iv.value / iv.se == pytest.approx(ref.statistic, rel=1e-9)
    assert iv.excludes_zero is bool(ci.low > 0 or ci.high < 0)


def test_paired_uses_only_matched_seeds_and_needs_two():
    a = {0: 31.0, 1: 30.0, 7: 99.0}
    b = {0: 30.0, 1: 29.5, 3: 0.0}
    iv = stats.paired(a, b)
    assert iv.n_pairs == 2 and iv.value == pytest.approx(0.75)
    with pytest.raises(ValueError):
        stats.paired({0: 1.0}, {0: 2.0})


def test_welch_interval_matches_scipy_ttest_ind():
    iv = stats.welch(FOCAL, BASE)
    ref = scipy_stats.ttest_ind(FOCAL, BASE, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert iv.test == "welch"
    assert iv.low == pytest.approx(ci.low, rel=1e-9) and iv.high == pytest.approx(ci.high, rel=1e-9)
    assert iv.df == pytest.approx(ref.df, rel=1e-9)
    assert iv.value / iv.se == pytest.approx(ref.statistic, rel=1e-9)
    assert iv.excludes_zero is True


def test_interval_at_another_level_and_a_difference_spanning_zero():
    a, b = [30.0, 31.0, 29.5], [30.2, 29.0, 30.9]
    iv = stats.welch(a, b, level=0.9)
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert (iv.low, iv.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert iv.excludes_zero is False and iv.within_noise is None


def test_zero_spread_gives_a_point_interval():
    iv = stats.paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert (iv.low, iv.high, iv.excludes_zero) == (1.0, 1.0, True)
    iv = stats.welch([1.0, 1.0], [1.0, 1.0])
    assert (iv.value, iv.low, iv.high, iv.excludes_zero) == (0.0, 0.0, 0.0, False)


def test_pooled_std_and_noise_threshold():
    groups = [BASE, EIOU, FOCAL]
    sigma, df = stats.pooled_std(groups)
    ss = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups)
    assert df == 4 + 4 + 2 and sigma == pytest.approx(math.sqrt(ss / df), rel=1e-12)
    thr = stats.noise_threshold(sigma, df, 1, 1)
    assert thr == pytest.approx(scipy_stats.t.ppf(0.975, df) * sigma * math.sqrt(2), rel=1e-9)
    assert stats.noise_threshold(sigma, df, 1, 3) == pytest.approx(thr * math.sqrt((1 + 1 / 3) / 2), rel=1e-12)
    small, big = stats.noise(thr * 0.99, sigma, df, 1, 1), stats.noise(-thr * 1.01, sigma, df, 1, 1)
    assert (small.within_noise, small.excludes_zero) == (True, False)
    assert (big.within_noise, big.excludes_zero) == (False, True)
    with pytest.raises(ValueError):
        stats.pooled_std([[1.0], [2.0]])


def test_noise_threshold_is_a_95_percent_range_of_seed_differences():
    """Differences of two draws of one distribution stay within the threshold 95% of the time."""
    import random

    rng = random.Random(0)
    sigma, df = 1.3, 12
    thr = stats.noise_threshold(sigma, df, 1, 1)
    # With σ known exactly the range is 1.96·√2·σ; the t quantile widens it for an estimated σ.
    assert thr > 1.959964 * math.sqrt(2) * sigma
    inside = sum(abs(rng.gauss(0, sigma) - rng.gauss(0, sigma)) < 1.959964 * math.sqrt(2) * sigma
                 for _ in range(20000))
    assert 0.94 < inside / 20000 < 0.96
