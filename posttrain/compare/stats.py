"""Statistics of a paired A/B comparison: pure numpy + the standard library (no scipy in the environment).

Everything here takes plain numbers or arrays and returns plain dicts, so it can be tested by hand:

* :func:`mean_ci_t` / :func:`paired_t` -- Student-t intervals over seeds (one value per seed and arm).
* :func:`bootstrap_mean` / :func:`paired_bootstrap` -- a two-level (hierarchical) percentile bootstrap over seeds
  and, within each resampled seed, over held-out items; paired at both levels (the same seeds and the same items are
  drawn for both arms), so the shared difficulty of an item or a seed cancels.
* :func:`mde` -- the minimum detectable difference, ``(z_{1-alpha/2} + z_{power}) * se`` (normal approximation,
  two-sided; alpha 0.05 and power 0.8 give 2.8016 * se).
* :func:`window_summary` -- a logged curve (e.g. the policy entropy) summarised over a window, never one step.
* :func:`pass_at_k` -- the unbiased pass@k estimator of Chen et al. 2021 (arXiv 2107.03374, Eq. 1).
* :func:`hypervolume_summary` -- the hypervolume (Zitzler & Thiele 1999; exact, :func:`posttrain.weighting.objectives.
  hypervolume`) of an arm's mean objective point and the mean ± sd of its per-seed hypervolumes.
* :func:`describe` -- the wording rule of the generated report.
"""
from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
POWER = 0.8


# ------------------------------------------------------------------------------------------ Student t (no scipy)
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0 (got {df})")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_cdf`; |error| < 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1) (got {q})")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def z_ppf(q: float) -> float:
    return NormalDist().inv_cdf(q)


# ----------------------------------------------------------------------------------------------- intervals
def _finite(xs: Iterable[float]) -> np.ndarray:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return a[np.isfinite(a)]


def mean_ci_t(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict:
    """Mean and the Student-t interval ``mean ± t_{(1+c)/2, n-1} * sd / sqrt(n)`` (sd with n - 1). ``lo``/``hi``
    are None for fewer than two finite values."""
    x = _finite(values)
    n = int(x.size)
    out = {"mean": float(x.mean()) if n else None, "lo": None, "hi": None, "sd": None, "se": None, "n": n,
           "method": "t"}
    if n >= 2:
        sd = float(x.std(ddof=1))
        se = sd / math.sqrt(n)
        half = t_ppf(0.5 + confidence / 2.0, n - 1) * se
        out.update(sd=sd, se=se, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Dict:
    """Paired t over seeds: d_s = a_s - b_s (pairs with a missing / non-finite side are dropped);
    diff = mean(d), se = sd(d) / sqrt(n), CI = diff ± t_{(1+c)/2, n-1} * se, two-sided p from t = diff / se."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    d = [x - y for x, y in pairs]
    r = mean_ci_t(d, confidence)
    out = {"diff": r["mean"], "lo": r["lo"], "hi": r["hi"], "se": r["se"], "sd": r["sd"], "n_seeds": r["n"],
           "n_items": None, "df": r["n"] - 1 if r["n"] >= 2 else None, "t": None, "p": None,
           "method": "paired t over seeds"}
    if r["se"] is not None:
        if r["se"] > 0:
            t = r["mean"] / r["se"]
            out.update(t=t, p=2.0 * (1.0 - t_cdf(abs(t), r["n"] - 1)))
        else:
            out.update(p=1.0 if r["mean"] == 0 else 0.0)
    return out


def bootstrap_mean(x: np.ndarray, *, resamples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE,
                   chunk: int = 250) -> Dict:
    """Two-level percentile bootstrap of the grand mean of ``x`` [seeds, items] (NaN = a missing item, ignored).

    One resample: draw S seeds with replacement; for each drawn seed draw N items with replacement (independently
    per drawn seed); the statistic is the mean over drawn seeds of the (nan-)mean over its drawn items. The interval
    is the (1-c)/2 and (1+c)/2 quantiles of the resampled statistics; ``se`` is their standard deviation. With one
    seed only the items are resampled (the interval then holds evaluation noise only, not seed-to-seed noise).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty [seeds, items] array, got shape {x.shape}")
    s, n = x.shape
    rng = np.random.default_rng(seed)
    stats: List[np.ndarray] = []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, dropped below
        point = float(np.nanmean(np.nanmean(x, axis=1)))
        for start in range(0, resamples, chunk):
            b = min(chunk, resamples - start)
            si = rng.integers(0, s, size=(b, s)) if s > 1 else np.zeros((b, 1), dtype=int)
            ii = rng.integers(0, n, size=(b, s, n))
            draws = x[si[:, :, None], ii]                      # [b, S, N]
            per_seed = np.nanmean(draws, axis=2)               # a seed whose drawn items are all NaN -> NaN
            stats.append(np.nanmean(per_seed, axis=1))
    st = np.concatenate(stats)
    st = st[np.isfinite(st)]
    q = (1.0 - confidence) / 2.0
    return {"mean": point, "lo": float(np.quantile(st, q)), "hi": float(np.quantile(st, 1.0 - q)),
            "se": float(st.std(ddof=1)) if st.size > 1 else 0.0, "n_seeds": s, "n_items": n,
            "resamples": int(st.size), "method": "bootstrap"}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, **kw) -> Dict:
    """:func:`bootstrap_mean` of the per-item differences ``a - b`` ([seeds, items], same seeds and items in the
    same order for both arms)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have the same [seeds, items] shape: {a.shape} vs {b.shape}")
    r = bootstrap_mean(a - b, **kw)
    return {"diff": r["mean"], "lo": r["lo"], "hi": r["hi"], "se": r["se"], "n_seeds": r["n_seeds"],
            "n_items": r["n_items"], "resamples": r["resamples"],
            "method": "paired bootstrap over seeds and held-out items"}


def mde(se: Optional[float], *, alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """Minimum detectable difference of a two-sided test at level ``alpha`` with probability ``power``, normal
    approximation: ``(z_{1-alpha/2} + z_{power}) * se`` (1.95996 + 0.84162 = 2.80164 for 0.05 / 0.8)."""
    if se is None or not math.isfinite(se):
        return None
    return (z_ppf(1.0 - alpha / 2.0) + z_ppf(power)) * se


# ------------------------------------------------------------------------------------------------ curves
def window_summary(points: Sequence[Tuple[float, float]], fraction: float = 0.2, *,
                   last_step: Optional[float] = None) -> Dict:
    """A curve ``[(step, value)]`` summarised over a window of *steps*: ``tail_mean`` = mean of the points logged in
    the last ``fraction`` of the run's steps, ``(1 - fraction) * last_step < step <= last_step`` (``last_step``:
    the run's final step; default the last logged one). ``None`` when nothing was logged there (a curve that stops
    early, e.g. the entropy of a run whose late steps carried no gradient, is not summarised by an early value).
    ``auc`` = trapezoidal area under the curve over the logged steps (value × steps; 0 for a single point),
    ``mean`` = auc / (last logged step - first) (the step-weighted mean; the value itself for one point);
    ``first_logged_step`` / ``last_logged_step`` = the curve's own extent (``last_logged_step`` < ``last_step``
    when the curve stops early). Non-finite values are dropped; points are sorted by step."""
    pts = sorted((float(s), float(v)) for s, v in points if v is not None and math.isfinite(v))
    if not pts:
        return {"tail_mean": None, "auc": None, "mean": None, "n_points": 0, "tail_points": 0}
    steps = np.array([p[0] for p in pts])
    vals = np.array([p[1] for p in pts])
    end = float(steps[-1]) if last_step is None else float(last_step)
    tail = vals[(steps > (1.0 - fraction) * end) & (steps <= end)]
    auc = float(np.sum((vals[1:] + vals[:-1]) / 2.0 * np.diff(steps))) if len(pts) > 1 else 0.0
    span = float(steps[-1] - steps[0])
    return {"tail_mean": float(tail.mean()) if tail.size else None, "auc": auc,
            "mean": auc / span if span > 0 else float(vals[0]), "n_points": len(pts), "tail_points": int(tail.size),
            "first_logged_step": float(steps[0]), "last_logged_step": float(steps[-1])}


# ------------------------------------------------------------------------------------------------ hypervolume
def hypervolume_summary(points_by_seed: Dict[int, Sequence[float]], ref: Sequence[float],
                        maximize: Optional[Sequence[bool]] = None) -> Dict:
    """One arm's objective points (one ``[d]`` point per seed) summarised two ways, because they differ:

    * ``hv_of_mean_point`` -- the hypervolume of the single point ``mean over seeds`` (the arm's average trade-off;
      by Jensen it can exceed the mean of the per-seed values, as HV of one point is a product of gains);
    * ``mean`` ± ``sd`` -- over seeds of the hypervolume of each seed's point (``sd`` with ddof 1; ``None`` for one
      seed), i.e. how reliably a single run reaches that volume.

    A point's hypervolume w.r.t. ``ref`` is the volume of the box between them when it beats ``ref`` in every
    objective, else 0 (sign-flipped for ``maximize=False`` objectives). Empty input gives ``n_seeds`` 0 and Nones."""
    from posttrain.weighting.objectives import hypervolume

    seeds = sorted(points_by_seed)
    if not seeds:
        return {"n_seeds": 0, "mean_point": None, "hv_of_mean_point": None, "per_seed": {}, "mean": None, "sd": None}
    P = np.asarray([list(points_by_seed[s]) for s in seeds], dtype=float)
    per = {s: hypervolume([P[i]], ref, maximize) for i, s in enumerate(seeds)}
    vals = np.asarray(list(per.values()))
    mean_point = P.mean(axis=0)
    return {"n_seeds": len(seeds), "mean_point": mean_point.tolist(),
            "hv_of_mean_point": hypervolume([mean_point], ref, maximize), "per_seed": per,
            "mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else None}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021,
    Eq. 1); with n == k it is 1 if any sample is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ----------------------------------------------------------------------------------------------- wording
def describe(diff: Optional[float], lo: Optional[float], hi: Optional[float], mde_value: Optional[float], *,
             fmt: str = ".3f", n_seeds: Optional[int] = None,
             seed_interval: Optional[Tuple[Optional[float], Optional[float]]] = None) -> str:
    """The report's words for one paired difference; they follow the numbers:

    * no interval (one seed and no per-item scores): "no interval (n = 1 seed)";
    * the interval contains 0: "no detectable difference (MDE x)";
    * the interval excludes 0 but ``seed_interval`` (the paired t over seeds, given when the primary interval is the
      bootstrap) contains 0: "inconclusive: ... " with both intervals. With few seeds the percentile bootstrap over
      seeds is narrower than the t interval (it resamples S seeds with z-like quantiles where t has S - 1 degrees of
      freedom), so a difference that does not hold across seeds is not called higher or lower;
    * otherwise "higher than the baseline" / "lower than the baseline" (by ``diff``, interval [lo, hi]).
    """
    if diff is None:
        return "n/a (no paired runs)"
    if lo is None or hi is None:
        return f"no interval (n = {n_seeds} seed{'s' if n_seeds != 1 else ''})" if n_seeds is not None else "no interval"
    mde_text = f" (MDE {mde_value:{fmt}})" if mde_value is not None else ""
    if lo <= 0.0 <= hi:
        return "no detectable difference" + mde_text
    t_lo, t_hi = seed_interval if seed_interval is not None else (None, None)
    if t_lo is not None and t_hi is not None and t_lo <= 0.0 <= t_hi:
        return (f"inconclusive: {diff:+{fmt}}, bootstrap [{lo:{fmt}}, {hi:{fmt}}] excludes 0 but the t over seeds "
                f"[{t_lo:{fmt}}, {t_hi:{fmt}}] does not" + mde_text)
    return f"{'higher' if diff > 0 else 'lower'} than the baseline by {abs(diff):{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
