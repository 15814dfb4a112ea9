"""Property tests (hypothesis) for posttrain.weighting.objectives: hypervolume against independent references,
and simplex / finiteness invariants of the stateful strategies."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.weighting.objectives import (
    ConvergenceInstabilityWeights,
    GradientWeights,
    HypervolumeWeights,
    LagrangianWeights,
    hypervolume,
    hypervolume_contribution,
    pareto_front,
)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def int_problem(draw, max_points=7):
    """Small integer point sets in 1-4 objectives with a random direction per objective and a reference point."""
    d = draw(st.integers(1, 4))
    maximize = draw(st.lists(st.booleans(), min_size=d, max_size=d))
    coord = st.integers(-1, 4)
    pts = draw(st.lists(st.tuples(*([coord] * d)), min_size=0, max_size=max_points))
    ref = draw(st.tuples(*([st.integers(-1, 2)] * d)))
    return pts, ref, maximize


def grid_reference(pts, ref, maximize):
    """Count the unit cells between ref and the points that some point covers (exact for integer coordinates)."""
    s = np.array([1 if m else -1 for m in maximize])
    q = (np.asarray(pts, dtype=float).reshape(-1, len(ref)) - np.asarray(ref, dtype=float)) * s
    if q.size == 0:
        return 0.0
    hi = int(max(0.0, q.max()))
    if hi == 0:
        return 0.0
    centres = np.array(list(itertools.product(*([np.arange(hi) + 0.5] * len(ref)))))
    covered = (q[None, :, :] >= centres[:, None, :]).all(axis=2).any(axis=1)
    return float(covered.sum())


def inclusion_exclusion_reference(pts, ref, maximize):
    """sum over non-empty subsets S of (-1)^(|S|+1) * volume of the intersection of their boxes."""
    s = np.array([1 if m else -1 for m in maximize])
    q = (np.asarray(pts, dtype=float).reshape(-1, len(ref)) - np.asarray(ref, dtype=float)) * s
    q = q[(q > 0).all(axis=1)]
    total = 0.0
    for r in range(1, len(q) + 1):
        for sub in itertools.combinations(range(len(q)), r):
            total += (-1) ** (r + 1) * float(np.prod(q[list(sub)].min(axis=0)))
    return total


@SETTINGS
@given(int_problem())
def test_hv_matches_grid_and_inclusion_exclusion(problem):
    pts, ref, maximize = problem
    hv = hypervolume(pts, ref, maximize)
    assert hv == pytest.approx(grid_reference(pts, ref, maximize), abs=1e-9)
    assert hv == pytest.approx(inclusion_exclusion_reference(pts, ref, maximize), abs=1e-9)


@SETTINGS
@given(int_problem(), st.randoms(use_true_random=False))
def test_hv_permutation_invariant_and_front_equivalent(problem, rnd):
    pts, ref, maximize = problem
    hv = hypervolume(pts, ref, maximize)
    shuffled = list(pts)
    rnd.shuffle(shuffled)
    assert hypervolume(shuffled, ref, maximize) == pytest.approx(hv, abs=1e-9)
    assert hypervolume(pareto_front(pts, maximize) if pts else [], ref, maximize) == pytest.approx(hv, abs=1e-9)
    assert hypervolume(pts + pts, ref, maximize) == pytest.approx(hv, abs=1e-9)  # duplicates


@SETTINGS
@given(int_problem(max_points=6), st.data())
def test_hv_monotone_and_contribution_consistent(problem, data):
    pts, ref, maximize = problem
    d = len(ref)
    extra = data.draw(st.tuples(*([st.floats(-1, 5, allow_nan=False)] * d)))
    before = hypervolume(pts, ref, maximize)
    after = hypervolume(pts + [extra], ref, maximize)
    hvc = hypervolume_contribution(pts, extra, ref, maximize)
    assert after >= before - 1e-12
    assert hvc >= 0.0
    assert hvc == pytest.approx(after - before, abs=1e-9)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(3, 5), st.integers(2, 12), st.integers(0, 10_000))
def test_hv_random_real_points_match_inclusion_exclusion(d, n, seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, size=(n, d))
    assert hypervolume(pts, np.zeros(d)) == pytest.approx(
        inclusion_exclusion_reference(pts, [0.0] * d, [True] * d), rel=1e-9, abs=1e-12)


def _simplex(w):
    return all(v >= 0 and math.isfinite(v) for v in w) and abs(sum(w) - 1) < 1e-9


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(st.integers(1, 4), st.lists(st.floats(0, 1e-3), min_size=1, max_size=5), st.integers(0, 1000))
def test_gradient_weights_stay_simplex(k, lrs, seed):
    g = GradientWeights(k)
    gen = torch.Generator().manual_seed(seed)
    for lr in lrs:
        w = g.update(torch.randn(k, 5, generator=gen) * 10, lr=lr)
        assert _simplex(w)


@SETTINGS
@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=10),
       st.sampled_from(["inequality", "equality"]), st.booleans())
def test_lagrangian_weights_sum_to_one_and_finite(returns, kind, primary):
    lw = LagrangianWeights([None, 0.2, 0.5] if primary else [0.1, 0.2, 0.5], kind=kind)
    for J in returns:
        w = lw.update(J)
        assert all(math.isfinite(v) for v in w)
        if kind == "inequality":
            assert _simplex(w)
        elif primary:
            assert abs(sum(w) - 1) < 1e-9  # signed weights, still summing to 1
        else:
            l1 = sum(abs(v) for v in w)
            assert l1 == 0 or abs(l1 - 1) < 1e-9  # signed, unit L1 norm


@SETTINGS
@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=12), st.integers(1, 3))
def test_recap_weights_stay_simplex(losses, window):
    r = ConvergenceInstabilityWeights(3, window=window)
    for v in losses:
        w = r.update(v)
        assert _simplex(w)
        assert sum(r.lambdas()) == pytest.approx(3.0)


@SETTINGS
@given(st.lists(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=2), min_size=1, max_size=10))
def test_hypervolume_weights_meta_in_range_and_front_nondominated(evals):
    h = HypervolumeWeights([0.5, 0.5], [True, False], eval_every=1)
    for p in evals:
        m = h.update(p)
        assert 0.5 <= m <= 2.0  # [0.5, 2) mathematically; tanh rounds to 1.0 for large HVC
    front = h.front()
    if front:
        assert sorted(map(tuple, front)) == sorted(pareto_front(front, [True, False]))
