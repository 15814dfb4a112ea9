"""Exact hypervolume (HV), hypervolume contribution and Pareto filtering for any number of objectives.

Used by :class:`~posttrain.weighting.objectives.HypervolumeWeights` (Dynamic Reward Weighting, Lu et al.,
arXiv 2509.11452; official code ``yining610/dynamic-reward-weighting``,
``verl/utils/reward_score/dynamic_math/hypervolumn_contribution.py``) and by the objective-weighting comparison script.

Definition. For points ``p_1..p_n`` and a reference point ``r`` in ``d`` objectives, each objective either maximised
or minimised, ``HV = Lebesgue measure of  U_i { x : x is between r and p_i in every objective }``.
Minimised objectives are sign-flipped (as the official code's ``_to_maximization``), so internally every point becomes
an origin-anchored box with side lengths ``q_ik = p_ik - r_k`` (maximised) or ``r_k - p_ik`` (minimised).
A point that is not *strictly* better than ``r`` in every objective (some ``q_ik <= 0``) spans no volume and
contributes nothing.

Difference from the official code (documented choice): the official recursive slicing returns ``max(p) - r`` in the
1-D base case even when that is negative, so a point worse than the reference in the last objective gets a *negative*
volume; their ``compute_score`` therefore tolerates a negative contribution when the buffer holds only the reference
point and raises otherwise, and clips at 0. With the standard definition used here HV is never negative and a
contribution is never negative, so the two agree after clipping for a single point and ours stays correct (instead of
raising) when later points lie partly outside the reference box.

Algorithm. WFG (While, Bradstreet & Barone, IEEE TEVC 2012): ``HV(S) = sum_i exclusive(p_i, S[i+1:])`` with
``exclusive(p, T) = prod(p) - HV(nondominated(min(T, p)))`` (the "limit set"), recursing until 2-D, where an
``O(n log n)`` staircase sweep is exact. Points are pre-filtered to the non-dominated set (duplicates once). All
arithmetic is float64 numpy. 100 points x 5 objectives on a concave front take well under a second.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["hypervolume", "hypervolume_contribution", "pareto_front"]


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def _as_matrix(name: str, x: Any, d: Optional[int] = None) -> np.ndarray:
    """Points -> float64 array [n, d]. Accepts a list of sequences, a numpy array or a tensor. Empty -> [0, d]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of points (each a sequence of reals), got {x!r}") from None
    if arr.size == 0:
        return np.zeros((0, d if d is not None else 0))
    if arr.ndim == 1:  # a single point -- or, with one objective, a flat list of n values
        arr = arr[:, None] if d == 1 else arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_points, num_objectives], got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have {d} objective value(s) per point (as ref), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s); hypervolume needs finite inputs")
    return arr


def _as_ref(ref: Any) -> np.ndarray:
    if isinstance(ref, torch.Tensor):
        ref = ref.detach().to("cpu", torch.float64).numpy()
    try:
        r = np.asarray(ref, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"ref must be a sequence of reals, got {ref!r}") from None
    if r.size == 0:
        raise ValueError("ref must have at least one objective")
    if not np.isfinite(r).all():
        raise ValueError(f"ref has {int((~np.isfinite(r)).sum())} non-finite value(s); hypervolume needs finite inputs")
    return r


def _signs(maximize: Optional[Sequence[bool]], d: int) -> np.ndarray:
    """+1 for maximised objectives, -1 for minimised ones. ``None`` means every objective is maximised."""
    if maximize is None:
        return np.ones(d)
    if isinstance(maximize, (bool, np.bool_)):
        return np.full(d, 1.0 if maximize else -1.0)
    m = list(maximize)
    if len(m) != d:
        raise ValueError(f"maximize must have {d} entries (one per objective), got {len(m)}")
    for v in m:
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"maximize must be a list of bools, got {maximize!r}")
    return np.array([1.0 if v else -1.0 for v in m])


def _boxes(points: np.ndarray, ref: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Side lengths of the origin-anchored boxes of the points strictly inside the reference box."""
    q = (points - ref[None, :]) * signs[None, :]
    return q[(q > 0).all(axis=1)]


def _nondominated_mask(q: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``q`` (all objectives maximised) that are non-dominated; duplicates kept once
    (the first occurrence). ``O(n^2 d)`` vectorised."""
    n = q.shape[0]
    if n <= 1:
        return np.ones(n, dtype=bool)
    ge = (q[:, None, :] >= q[None, :, :]).all(axis=2)  # ge[j, i]: q_j weakly dominates q_i
    eq = ge & ge.T                                        # identical points
    strictly = ge & ~eq                                   # q_j dominates q_i
    dominated = strictly.any(axis=0)
    earlier_duplicate = np.triu(eq, k=1).any(axis=0)      # exists j < i with q_j == q_i
    return ~(dominated | earlier_duplicate)


# ----------------------------------------------------------------------------------------------------------------------
# volume of a union of origin-anchored boxes
# ----------------------------------------------------------------------------------------------------------------------
def _hv2d(q: np.ndarray) -> float:
    """Area of a union of boxes ``[0, x_i] x [0, y_i]`` (staircase sweep, any input order/domination)."""
    order = np.lexsort((-q[:, 1], -q[:, 0]))  # x descending, then y descending
    area, ymax = 0.0, 0.0
    for x, y in q[order]:
        if y > ymax:
            area += x * (y - ymax)
            ymax = y
    return float(area)


def _hv_nd(q: np.ndarray) -> float:
    """Volume of the union of boxes ``[0, q_i]``; ``q`` must be non-dominated with positive entries."""
    n, d = q.shape
    if n == 0:
        return 0.0
    if n == 1:
        return float(np.prod(q[0]))
    if d == 1:
        return float(q.max())
    if d == 2:
        return _hv2d(q)
    q = q[np.argsort(-q[:, -1], kind="stable")]  # WFG: decreasing in the last objective
    total = 0.0
    for i in range(n):
        p = q[i]
        excl = float(np.prod(p))
        if i + 1 < n:
            limited = np.minimum(q[i + 1:], p[None, :])
            limited = limited[_nondominated_mask(limited)]
            excl -= _hv_nd(limited)
        total += excl
    return total


def _hv_boxes(q: np.ndarray) -> float:
    if q.shape[0] == 0:
        return 0.0
    return _hv_nd(q[_nondominated_mask(q)])


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------
def hypervolume(points: Any, ref: Any, maximize: Optional[Sequence[bool]] = None) -> float:
    """Exact hypervolume of ``points`` with respect to ``ref``.

    Args:
        points: ``[n, d]`` list of sequences / array / tensor (``n`` may be 0). Dominated, duplicate and
            out-of-box points are allowed (they add nothing).
        ref: the reference point, ``d`` values (DRW: the initial model's evaluation).
        maximize: ``d`` bools, ``True`` = larger is better. ``None`` = all maximised. Minimised objectives are
            sign-flipped, as the official code does.

    Returns:
        ``float >= 0``; ``0.0`` for an empty set or when no point is strictly better than ``ref`` in every objective.

    Raises:
        ValueError: non-finite values (naming ``points``/``ref``), shape mismatch, bad ``maximize``.
    """
    r = _as_ref(ref)
    p = _as_matrix("points", points, r.size)
    return _hv_boxes(_boxes(p, r, _signs(maximize, r.size)))


def hypervolume_contribution(front: Any, point: Any, ref: Any, maximize: Optional[Sequence[bool]] = None) -> float:
    """``HV(front U {point}) - HV(front)``, computed exactly as the exclusive volume of ``point``:
    ``prod(q) - HV(nondominated(min(front, q)))`` in box coordinates (WFG's ``exclhv``), so it is ``>= 0`` by
    construction. ``0.0`` if ``point`` is weakly dominated by ``front`` or not strictly better than ``ref`` in every
    objective. ``front`` may be empty (then this is the volume of the box between ``ref`` and ``point``)."""
    r = _as_ref(ref)
    signs = _signs(maximize, r.size)
    f = _as_matrix("front", front, r.size)
    pt = _as_matrix("point", point, r.size)
    if pt.shape[0] != 1:
        raise ValueError(f"point must be a single point with {r.size} objective value(s), got shape {pt.shape}")
    qp = _boxes(pt, r, signs)
    if qp.shape[0] == 0:
        return 0.0
    qp = qp[0]
    qf = _boxes(f, r, signs)
    if qf.shape[0] == 0:
        return float(np.prod(qp))
    limited = np.minimum(qf, qp[None, :])
    return max(0.0, float(np.prod(qp)) - _hv_boxes(limited))


def pareto_front(points: Any, maximize: Optional[Sequence[bool]] = None) -> List[Tuple[float, ...]]:
    """The non-dominated subset of ``points`` (no reference point involved), as tuples in input order; identical
    points are kept once (first occurrence). ``p`` dominates ``q`` if it is at least as good in every objective and
    strictly better in one."""
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(points, dtype=np.float64) if len(points) else np.zeros((0, 0))
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None, :]
    arr = _as_matrix("points", arr)
    signs = _signs(maximize, arr.shape[1])
    keep = _nondominated_mask(arr * signs[None, :])
    return [tuple(float(v) for v in row) for row in arr[keep]]
