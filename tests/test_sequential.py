"""The seeds-until-decided rule (bbrctl.report.sequential): its error rate despite repeated
looks, its power at the seed study's effect, and the scalar rule against the vectorised one.

The simulations draw per-seed (AP_focal, AP_baseline) pairs from a bivariate normal with
the seed study's σ of each row and their per-seed correlation (bbrctl/data/seed_study.yaml,
study table1-embedded-default). Tolerances are binomial: with E experiments the simulated
rate p has standard error sqrt(p(1-p)/E); a bound is 3 standard errors (a correct rule fails
it about once in 700 runs of the test, and the generator seed is fixed, so it does not flake).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bbrctl.report import sequential as S
from bbrctl.report import stats
from bbrctl.report.seed_noise import studies

EXPERIMENTS = 20_000


@pytest.fixture(scope="module")
def study():
    st = next(s for s in studies() if s.id == "table1-embedded-default")
    a = np.array(st.rows["focal_eiou"]["AP"])
    b = np.array(st.rows["baseline"]["AP"])
    assert st.seeds["focal_eiou"] == st.seeds["baseline"]       # paired by seed
    return {"sd_a": a.std(ddof=1), "sd_b": b.std(ddof=1), "corr": float(np.corrcoef(a, b)[0, 1]),
            "effect": float((a - b).mean()), "sd_d": float((a - b).std(ddof=1))}


@pytest.fixture(scope="module")
def main_design():
    return S.design(0.05, 3, 8, "pocock")


def _bound(p: float, n: int) -> float:
    return 3.0 * math.sqrt(p * (1.0 - p) / n)


@pytest.mark.parametrize("boundary", ["pocock", "obrien_fleming"])
def test_false_positive_rate_at_most_alpha_despite_six_looks(study, boundary):
    dsg = S.design(0.05, 3, 8, boundary)
    sim = S.simulate(dsg, 0.0, study["sd_a"], study["sd_b"], study["corr"], EXPERIMENTS, seed=11)
    fpr = sim["decided"]
    print(f"\n{boundary}: false-positive rate {fpr:.4f} over {EXPERIMENTS} experiments "
          f"(looks {dsg.looks}, t boundaries {[round(c, 2) for c in dsg.t_crit]})")
    assert fpr <= 0.05 + _bound(0.05, EXPERIMENTS)
    # ... and it spends its α: a rule far below 5% would be needlessly slow to decide.
    assert fpr >= 0.05 - _bound(0.05, EXPERIMENTS)


def test_naive_rule_is_not_valid(study):
    """Stopping at the first look whose plain 95% t interval excludes 0 errs far more than 5%:
    the simulation detects an invalid rule (so the test above can fail)."""
    looks = tuple(range(3, 9))
    naive = tuple(stats.t_ppf(0.975, n - 1) for n in looks)
    dsg = S.Design(0.05, "pocock", looks, naive, (0.05,) * len(looks), 0.0)
    fpr = S.simulate(dsg, 0.0, study["sd_a"], study["sd_b"], study["corr"], EXPERIMENTS, seed=12)["decided"]
    assert fpr > 0.05 + _bound(0.05, EXPERIMENTS) * 3


def test_decides_at_the_seed_study_effect(study, main_design):
    sim = S.simulate(main_design, study["effect"], study["sd_a"], study["sd_b"], study["corr"], EXPERIMENTS, seed=13)
    n = sim["stop_n"][sim["decided_mask"]]
    hist = {k: float(np.mean(sim["decided_mask"] & (sim["stop_n"] == k))) for k in main_design.looks}
    print(f"\neffect {study['effect']:.2f} AP (σ_d {study['sd_d']:.2f}): decided {sim['decided']:.4f}, "
          f"wrong row {sim['wrong_row']:.5f}, median seeds {np.median(n):.0f}, mean {n.mean():.2f}, "
          f"P(decided by 4) {np.mean(sim['decided_mask'] & (sim['stop_n'] <= 4)):.3f}, "
          f"by 5 {np.mean(sim['decided_mask'] & (sim['stop_n'] <= 5)):.3f}; decided at n: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in hist.items()))
    assert sim["decided"] >= 0.95
    assert sim["wrong_row"] <= 0.001
    assert np.median(n) <= 5


def test_repeated_intervals_cover_the_true_difference(study, main_design):
    """Every look's interval covers the true mean difference at once in >= 95% of experiments."""
    rng = np.random.default_rng(14)
    true = 1.7
    d = true + study["sd_d"] * rng.standard_normal((EXPERIMENTS, 8))
    t_true = S.t_statistics(d - true, main_design.looks)
    covered_all = (np.abs(t_true) < np.asarray(main_design.t_crit)).all(axis=1).mean()
    assert covered_all >= 0.95 - _bound(0.05, EXPERIMENTS)


def test_scalar_rule_equals_vectorised_rule(study, main_design):
    rng = np.random.default_rng(15)
    d = 1.0 + study["sd_d"] * rng.standard_normal((300, 8))
    t = S.t_statistics(d, main_design.looks)
    hit = np.abs(t) >= np.asarray(main_design.t_crit)
    for row, h in zip(d, hit):
        out = S.evaluate(list(row), main_design)
        assert (out.state == "decided") == bool(h.any())
        if h.any():
            assert out.last.n == main_design.looks[int(h.argmax())]
            assert out.last.low > 0 or out.last.high < 0        # decided = the interval excludes 0
        else:
            assert out.state == "undecided" and all(lk.low <= 0 <= lk.high for lk in out.looks)


def test_look_matches_the_paired_t_statistic():
    a = {0: 30.0, 1: 31.2, 2: 30.6, 3: 31.0}
    b = {0: 28.7, 1: 28.2, 2: 27.1, 3: 27.3}
    dsg = S.design(0.05, 3, 8, "pocock")
    lk = S.look([a[s] - b[s] for s in a], dsg)
    ref = stats.paired(a, b)
    assert lk.mean == pytest.approx(ref.value)
    assert lk.se == pytest.approx(ref.se)
    assert lk.t_crit == dsg.crit(4)
    # The rule's interval is wider than one look's plain 95% interval (it pays for the looks).
    assert lk.high - lk.low > ref.high - ref.low


def test_design_is_fixed_in_advance_and_shaped():
    p = S.design(0.05, 3, 8, "pocock")
    o = S.design(0.05, 3, 8, "obrien_fleming")
    S.design.cache_clear()
    assert S.design(0.05, 3, 8, "pocock") == p                 # same boundaries every time
    assert len(set(round(x, 12) for x in p.nominal)) == 1      # Pocock: one nominal level per look
    assert all(x > y for x, y in zip(o.nominal[1:], o.nominal))  # O'Brien-Fleming: strict early
    assert list(p.t_crit) == sorted(p.t_crit, reverse=True)
    assert all(c > stats.t_ppf(0.975, n - 1) for c, n in zip(p.t_crit, p.looks))


def test_running_undecided_and_skipped_looks():
    dsg = S.design(0.05, 3, 8, "pocock")
    assert S.evaluate([1.0, -0.5], dsg).state == "running"            # before the first look
    flat = [0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.3]
    assert S.evaluate(flat[:5], dsg).state == "running"
    assert S.evaluate(flat, dsg).state == "undecided"
    # A failed seed counted missing in both rows: 7 pairs after 8 seeds is still the end.
    assert S.evaluate(flat[:7], dsg, attempted=8).state == "undecided"
    # Rounds of two seeds look at 4, 6, 8 only.
    out = S.evaluate(flat, dsg, look_at=[4, 6, 8])
    assert [lk.n for lk in out.looks] == [4, 6, 8]
    with pytest.raises(ValueError, match="not a planned look"):
        S.look(flat[:2], dsg)


@pytest.mark.parametrize("bad", [dict(alpha=0.0), dict(min_seeds=1), dict(min_seeds=9), dict(boundary="holm")])
def test_design_refuses_bad_settings(bad):
    kw = dict(alpha=0.05, min_seeds=3, max_seeds=8, boundary="pocock") | bad
    with pytest.raises(ValueError):
        S.design(**kw)


def test_main_job_design_at_the_seed_study_effect(study):
    """The main job's own settings (conf/experiment/table1_decide.yaml): its error rate and how
    often it decides within its cap at the seed study's effect."""
    from pathlib import Path

    import yaml

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/experiment/table1_decide.yaml").read_text())
    sw = preset["sweep"]
    dsg = S.design(0.05, sw["min_seeds"], sw["max_seeds"], "pocock")
    args = (study["sd_a"], study["sd_b"], study["corr"], EXPERIMENTS)
    fpr = S.simulate(dsg, 0.0, *args, seed=16)["decided"]
    sim = S.simulate(dsg, study["effect"], *args, seed=17)
    by_first = float(np.mean(sim["decided_mask"] & (sim["stop_n"] == dsg.looks[0])))
    print(f"\nmain job (looks {dsg.looks}): false-positive rate {fpr:.4f}; at effect {study['effect']:.2f}: "
          f"decided {sim['decided']:.3f}, at the first look {by_first:.3f}")
    assert fpr <= 0.05 + _bound(0.05, EXPERIMENTS)
    assert sim["decided"] >= 0.8
