"""Seeds until decided: a group-sequential paired t-test with boundaries fixed in advance.

The rule (docs/sequential.md explains it at length)
----------------------------------------------------
Two rows A and B (e.g. Focal-EIoU and Baseline) are trained with the same seeds; seed s
gives one paired difference d_s = AP(A, s) - AP(B, s). Looks are planned at the seed
counts n = n_min, n_min + 1, ..., N (N = ``max_seeds``). At a look with n pairs

    t_n = d̄_n / (s_n / √n)          (the paired t statistic, ν = n - 1)

and the comparison is **decided** at the first look with |t_n| >= c_n; the sign of d̄_n
says which row is better. Not decided at N: **undecided** (no claim either way).

The boundaries c_n are those of a Wang-Tsiatis group-sequential design (Wang & Tsiatis
1987, Biometrics 43:193; Δ = 1/2 is Pocock 1977, Biometrika 64:191, Δ = 0 is O'Brien &
Fleming 1979, Biometrics 35:549): on the normal scale the boundary at look n is
z_n = C · (n/N)^(Δ - 1/2); each z_n is turned into its two-sided nominal level
p_n = 2(1 - Φ(z_n)) and that level into the t_{n-1} quantile c_n = t_{n-1}^{-1}(1 - p_n/2)
(the "significance level approach" to group-sequential t-tests, Jennison & Turnbull 2000,
*Group Sequential Methods with Applications to Clinical Trials*, §3.8). Jennison &
Turnbull take C from the normal-theory design, which is approximate for t statistics with
few degrees of freedom; here C is instead calibrated so that the probability, under no
effect, of crossing at any planned look is exactly α. That probability does not depend
on σ (t is scale-free, and the looks' t statistics of i.i.d. normal differences have one
joint law), so C is found once per (α, looks, Δ) by bisection on a Monte Carlo estimate
over ``CALIBRATION_PATHS`` simulated null experiments from a fixed generator: the same
boundaries on every machine and in every run, fixed before any seed is trained.

The interval the rule gives at look n is the repeated confidence interval (Jennison &
Turnbull 1989, JRSS B 51:305) d̄_n ± c_n s_n/√n: all of them cover the true mean
difference simultaneously with probability 1 - α, and "decided" is exactly "the interval
excludes 0". A look that is not taken (a round of two seeds skips one seed count; a seed
that failed twice is counted missing in both rows) only removes a chance to reject, so the
error rate stays at most α as long as every look is one of the planned seed counts.

Assumptions: the d_s are independent and normal with one mean and variance (seeds are
independent draws; the normality is the t-test's own, checked against the seed study's
differences in tests/test_sequential.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from bbrctl.report.stats import t_ppf

BOUNDARIES = {"pocock": 0.5, "obrien_fleming": 0.0}    # Wang-Tsiatis Δ of each named shape
CALIBRATION_PATHS = 200_000                            # Monte Carlo error of α: about ±0.0005
CALIBRATION_SEED = 20261204


@dataclass(frozen=True)
class Design:
    """The planned looks and their boundaries (|t| >= ``t_crit[i]`` at ``looks[i]`` decides)."""

    alpha: float
    boundary: str
    looks: tuple[int, ...]
    t_crit: tuple[float, ...]
    nominal: tuple[float, ...]        # two-sided nominal level of each look's boundary
    constant: float                   # the calibrated C of z_n = C (n/N)^(Δ - 1/2)

    def crit(self, n: int) -> float | None:
        """The boundary at n pairs; None when n is not a planned look."""
        return self.t_crit[self.looks.index(n)] if n in self.looks else None

    def describe(self) -> str:
        name = {"pocock": "Pocock", "obrien_fleming": "O'Brien-Fleming"}[self.boundary]
        return (f"group-sequential paired t-test, {name}-type boundaries, two-sided α = {self.alpha:g}, "
                f"looks at {self.looks[0]}-{self.looks[-1]} seeds")

    def as_dict(self) -> dict:
        return {"rule": "group-sequential paired t", "alpha": self.alpha, "boundary": self.boundary,
                "looks": list(self.looks), "t_crit": list(self.t_crit), "nominal": list(self.nominal),
                "constant": self.constant}


def _norm_upper(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - p)


def _crit_for(constant: float, looks: Sequence[int], delta: float) -> tuple[list[float], list[float]]:
    n_max = looks[-1]
    t_crit, nominal = [], []
    for n in looks:
        z = constant * (n / n_max) ** (delta - 0.5)
        p = math.erfc(z / math.sqrt(2.0))          # two-sided nominal level of z
        nominal.append(p)
        t_crit.append(t_ppf(1.0 - p / 2.0, n - 1) if p > 0 else math.inf)
    return t_crit, nominal


def null_t_paths(looks: Sequence[int], paths: int, seed: int):
    """|t_n| at each look of ``paths`` simulated experiments under no effect (σ-free)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = rng.standard_normal((paths, looks[-1]))
    return np.abs(t_statistics(d, looks))


def t_statistics(d, looks: Sequence[int]):
    """Paired t at each look (columns) of each row of differences ``d`` (paths × N), vectorised."""
    import numpy as np

    n = np.arange(1, d.shape[1] + 1)
    s1 = np.cumsum(d, axis=1)
    s2 = np.cumsum(d * d, axis=1)
    idx = np.asarray(looks) - 1
    nn = n[idx]
    mean = s1[:, idx] / nn
    var = np.maximum(s2[:, idx] - nn * mean * mean, 0.0) / (nn - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / nn)
    return np.where(var > 0, t, np.sign(mean) * np.inf)


@lru_cache(maxsize=16)
def design(alpha: float = 0.05, min_seeds: int = 3, max_seeds: int = 8, boundary: str = "pocock") -> Design:
    """Boundaries for looks at min_seeds..max_seeds pairs with overall two-sided error α."""
    import numpy as np

    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if not 2 <= min_seeds <= max_seeds:
        raise ValueError(f"need 2 <= min_seeds <= max_seeds, got {min_seeds} and {max_seeds}")
    looks = tuple(range(min_seeds, max_seeds + 1))
    delta = BOUNDARIES[boundary]
    abs_t = null_t_paths(looks, CALIBRATION_PATHS, CALIBRATION_SEED)

    def error(constant: float) -> float:
        crit, _ = _crit_for(constant, looks, delta)
        return float(np.mean((abs_t >= np.asarray(crit)).any(axis=1)))

    lo, hi = _norm_upper(alpha / 2.0), 6.0       # one look at level α, and far beyond
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if error(mid) > alpha:
            lo = mid
        else:
            hi = mid
    crit, nominal = _crit_for(hi, looks, delta)
    return Design(alpha, boundary, looks, tuple(crit), tuple(nominal), hi)


@dataclass(frozen=True)
class Look:
    n: int
    mean: float
    se: float
    t: float
    t_crit: float
    low: float                  # the repeated confidence interval at this look
    high: float
    decided: bool

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "se": self.se, "t": self.t, "t_crit": self.t_crit,
                "rci": [self.low, self.high], "decided": self.decided}


def look(diffs: Sequence[float], dsg: Design) -> Look:
    """The rule at one planned look (len(diffs) pairs)."""
    n = len(diffs)
    c = dsg.crit(n)
    if c is None:
        raise ValueError(f"{n} pairs is not a planned look (looks: {dsg.looks[0]}-{dsg.looks[-1]})")
    mean = math.fsum(diffs) / n
    se = math.sqrt(math.fsum((x - mean) ** 2 for x in diffs) / (n - 1) / n)
    t = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return Look(n, mean, se, t, c, mean - c * se, mean + c * se, abs(t) >= c)


@dataclass(frozen=True)
class Outcome:
    """Where the comparison stands: ``state`` is decided | undecided (cap reached) | running."""

    state: str
    looks: tuple[Look, ...]
    design: Design

    @property
    def last(self) -> Look | None:
        return self.looks[-1] if self.looks else None

    @property
    def winner(self) -> str | None:
        """'a' or 'b' when decided (the row with the higher mean), else None."""
        if self.state != "decided":
            return None
        return "a" if self.last.mean > 0 else "b"

    def as_dict(self) -> dict:
        return {"state": self.state, "design": self.design.as_dict(), "looks": [lk.as_dict() for lk in self.looks]}


def evaluate(diffs_by_seed: Mapping[int, float] | Sequence[float], dsg: Design,
             attempted: int | None = None, look_at: Sequence[int] | None = None) -> Outcome:
    """Apply the rule to the pairs so far, in seed order.

    ``diffs_by_seed``: the complete pairs' differences (seed -> d, or in seed order).
    ``attempted``: seeds started so far (complete or missing); at max_seeds the rule ends.
    ``look_at``: the seed counts at which looks were taken (default: every planned one the
    pairs reach), so a report re-applies exactly the looks the sweep took.
    """
    d = [float(diffs_by_seed[s]) for s in sorted(diffs_by_seed)] if isinstance(diffs_by_seed, Mapping) \
        else [float(x) for x in diffs_by_seed]
    wanted = [n for n in dsg.looks if n <= len(d)] if look_at is None else [n for n in look_at if n <= len(d)]
    taken: list[Look] = []
    for n in wanted:
        lk = look(d[:n], dsg)
        taken.append(lk)
        if lk.decided:
            return Outcome("decided", tuple(taken), dsg)
    attempted = len(d) if attempted is None else attempted
    done = attempted >= dsg.looks[-1]
    return Outcome("undecided" if done else "running", tuple(taken), dsg)


def simulate(dsg: Design, effect: float, sd_a: float, sd_b: float, corr: float, experiments: int,
             seed: int = 0) -> dict:
    """Operating characteristics by simulation: ``experiments`` sweeps whose seeds draw
    (AP_a, AP_b) from a bivariate normal (mean difference ``effect``, the rows' seed σs and
    their per-seed correlation), each run until the rule decides or N is reached.

    Returns the fraction decided, the fraction decided for the wrong row, and the seed
    count at which each experiment stopped (N when undecided), as a numpy array.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_max = dsg.looks[-1]
    cov = np.array([[sd_a ** 2, corr * sd_a * sd_b], [corr * sd_a * sd_b, sd_b ** 2]])
    ab = rng.multivariate_normal([effect, 0.0], cov, size=(experiments, n_max))
    d = ab[..., 0] - ab[..., 1]
    t = t_statistics(d, dsg.looks)
    hit = np.abs(t) >= np.asarray(dsg.t_crit)
    decided = hit.any(axis=1)
    first = hit.argmax(axis=1)
    stop_n = np.where(decided, np.asarray(dsg.looks)[first], n_max)
    sign = np.sign(t[np.arange(experiments), first])
    wrong = decided & (sign != (1.0 if effect >= 0 else -1.0)) if effect != 0 else np.zeros_like(decided)
    return {"decided": float(decided.mean()), "wrong_row": float(wrong.mean()), "stop_n": stop_n,
            "decided_mask": decided}
