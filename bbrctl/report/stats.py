"""Confidence intervals for the Δ column, in plain Python (``bbrctl report`` starts fast).

Student's t distribution without scipy:

* :func:`betainc` is the regularised incomplete beta function I_x(a, b), evaluated by
  its continued fraction (modified Lentz), on whichever side of the mean a/(a+b) it
  converges fast (I_x(a, b) = 1 - I_{1-x}(b, a));
* :func:`t_cdf`: P(T <= t) = 1 - I_{ν/(ν+t²)}(ν/2, 1/2) / 2 for t >= 0, symmetric;
* :func:`t_ppf`: the quantile, by Newton steps on the cdf (derivative: the t density)
  inside a bracket that bisection keeps valid; ν may be any real > 0 (Welch's ν is
  fractional) or infinity (the normal quantile).

The tests check these against scipy.stats on fixed inputs to 1e-9.

Differences of two rows (``a`` minus the baseline ``b``), 95% by default:

* :func:`paired`: seeds matched (the same seeds, one run each, in both rows): the
  per-seed differences d_i; CI d̄ ± t_{ν} s_d / √n with ν = n - 1;
* :func:`welch`: otherwise, Welch's t: se = sqrt(s_a²/n_a + s_b²/n_b) with the
  Welch-Satterthwaite ν = se⁴ / (s_a⁴/(n_a²(n_a-1)) + s_b⁴/(n_b²(n_b-1)));
* :func:`noise_threshold`: a row with a single run has no spread of its own; the seed
  noise σ of the setting, pooled from a seed study (see :mod:`bbrctl.report.seed_noise`)
  with ν degrees of freedom, gives the half-width t_ν σ sqrt(1/n_a + 1/n_b) that the
  difference of two configurations with equal means stays within with 95% probability.
  A |Δ| below it is "within noise".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

_EPS = 1e-15
_TINY = 1e-300


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) given both x and y = 1 - x (each accurate: no cancellation in 1 - x)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    # x^a y^b / B(a, b), in logs.
    log_front = (-_lbeta(a, b) + a * (math.log1p(-y) if y < 0.5 else math.log(x))
                 + b * (math.log1p(-x) if x < 0.5 else math.log(y)))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


def _lbeta(a: float, b: float) -> float:
    """log B(a, b). With one large argument (t with many degrees of freedom: a = ν/2,
    b = 1/2), lgamma(a) - lgamma(a + b) cancels ~log10(a) digits, so that difference comes
    from Stirling's series instead."""
    big, small = (a, b) if a >= b else (b, a)
    if big < 100.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.lgamma(small) - _lgamma_diff(big, small)


def _lgamma_diff(z: float, b: float) -> float:
    """log Γ(z + b) - log Γ(z) for z >= 100, from log Γ(z) = (z - 1/2) log z - z + log(2π)/2
    + 1/(12z) - 1/(360z³) + 1/(1260z⁵) - 1/(1680z⁷) (error below 1e-18 here)."""
    def corr(x: float) -> float:
        x2 = x * x
        return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x

    return (z - 0.5) * math.log1p(b / z) + b * math.log(z + b) - b + corr(z + b) - corr(z)


def _t_tail(t: float, df: float) -> float:
    """P(T > |t|), from I_{ν/(ν+t²)}(ν/2, 1/2) with both arguments formed without cancellation."""
    t2 = t * t
    x, y = df / (df + t2), t2 / (df + t2)
    return 0.5 * _betainc(df / 2.0, 0.5, x, y)


def _beta_cf(a: float, b: float, x: float, max_iter: int = 10_000) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        # Even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)).
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        # Odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"betainc's continued fraction did not converge (a={a}, b={b}, x={x})")


def _check_df(df: float) -> None:
    if not (df > 0):
        raise ValueError(f"degrees of freedom must be > 0, got {df}")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df = inf: the normal)."""
    _check_df(df)
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    if t == 0.0:
        return 0.5
    tail = _t_tail(t, df)
    return 1.0 - tail if t > 0 else tail


def t_pdf(t: float, df: float) -> float:
    _check_df(df)
    if math.isinf(df):
        return math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    log_c = math.lgamma((df + 1.0) / 2.0) - math.lgamma(df / 2.0) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1.0) / 2.0 * math.log1p(t * t / df))


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t: the t with t_cdf(t, df) = p, for 0 < p < 1."""
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    q = min(p, 1.0 - p)  # solve for the upper tail P(T > t) = q, t > 0: precise for small q
    sign = 1.0 if p > 0.5 else -1.0
    if math.isinf(df):
        from statistics import NormalDist

        return -NormalDist().inv_cdf(q) * sign
    # Bracket [lo, hi] with tail(lo) > q >= tail(hi), then Newton, falling back to bisection.
    lo, hi = 0.0, 1.0
    while _t_tail(hi, df) > q:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.inf * sign
    x = 0.5 * (lo + hi)
    for _ in range(300):
        f = _t_tail(x, df) - q        # decreasing in x; its derivative is -pdf
        if f > 0:
            lo = x
        else:
            hi = x
        dens = t_pdf(x, df)
        nxt = x + f / dens if dens > 0 else 0.5 * (lo + hi)
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= 1e-15 * max(1.0, abs(x)):
            x = nxt
            break
        x = nxt
    return x * sign


# --------------------------------------------------------------------------- differences


@dataclass(frozen=True)
class Interval:
    """A difference ``value`` (row minus baseline) with its 95% (``level``) interval."""

    value: float
    test: str                       # "paired" | "welch" | "noise"
    level: float = 0.95
    se: float | None = None         # standard error (paired / welch)
    df: float | None = None
    low: float | None = None        # the confidence interval (paired / welch)
    high: float | None = None
    n_pairs: int | None = None      # paired: matched seeds
    threshold: float | None = None  # noise: half-width of the seed-noise range

    @property
    def excludes_zero(self) -> bool | None:
        """Paired/Welch: the interval lies on one side of 0. Noise: |Δ| >= the threshold."""
        if self.test == "noise":
            return None if self.threshold is None else abs(self.value) >= self.threshold
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0

    @property
    def within_noise(self) -> bool | None:
        if self.test != "noise" or self.threshold is None:
            return None
        return abs(self.value) < self.threshold

    def as_dict(self) -> dict:
        out = {"test": self.test, "level": self.level, "value": self.value, "se": self.se, "df": self.df,
               "ci": [self.low, self.high] if self.low is not None else None,
               "excludes_zero": self.excludes_zero}
        if self.test == "paired":
            out["n_pairs"] = self.n_pairs
        if self.test == "noise":
            out["noise_threshold"] = self.threshold
            out["within_noise"] = self.within_noise
        return out


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = math.fsum(xs) / n
    return mean, math.fsum((x - mean) ** 2 for x in xs) / (n - 1)


def _interval(value: float, se: float, df: float, level: float, test: str, **extra) -> Interval:
    if se == 0.0:
        return Interval(value, test, level, se, df, value, value, **extra)
    half = t_ppf(0.5 + level / 2.0, df) * se
    return Interval(value, test, level, se, df, value - half, value + half, **extra)


def paired(a: Mapping, b: Mapping, level: float = 0.95) -> Interval:
    """CI of mean(a[s] - b[s]) over the seeds s both have; needs >= 2 of them."""
    seeds = [s for s in a if s in b]
    if len(seeds) < 2:
        raise ValueError(f"a paired interval needs >= 2 matched seeds, got {len(seeds)}")
    d = [float(a[s]) - float(b[s]) for s in seeds]
    mean, var = _mean_var(d)
    n = len(d)
    return _interval(mean, math.sqrt(var / n), n - 1, level, "paired", n_pairs=n)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's CI of mean(a) - mean(b); needs >= 2 values in each."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's interval needs >= 2 values per group, got {len(a)} and {len(b)}")
    ma, va = _mean_var(a)
    mb, vb = _mean_var(b)
    qa, qb = va / len(a), vb / len(b)
    se2 = qa + qb
    if se2 == 0.0:
        return Interval(ma - mb, "welch", level, 0.0, None, ma - mb, ma - mb)
    df = se2 ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    return _interval(ma - mb, math.sqrt(se2), df, level, "welch")


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(s_p, ν): the pooled within-group standard deviation and its degrees of freedom."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) >= 2:
            mean, var = _mean_var(g)
            ss += var * (len(g) - 1)
            df += len(g) - 1
    if df == 0:
        raise ValueError("pooling needs at least one group with >= 2 values")
    return math.sqrt(ss / df), df


def noise_threshold(sigma: float, df: float, n_a: int, n_b: int, level: float = 0.95) -> float:
    """Half-width of the range a difference of means of n_a and n_b runs of one configuration
    stays within with probability ``level``, for seed noise ``sigma`` estimated with ``df``."""
    return t_ppf(0.5 + level / 2.0, df) * sigma * math.sqrt(1.0 / n_a + 1.0 / n_b)


def noise(value: float, sigma: float, df: float, n_a: int, n_b: int, level: float = 0.95) -> Interval:
    return Interval(value, "noise", level, df=df, threshold=noise_threshold(sigma, df, n_a, n_b, level))
