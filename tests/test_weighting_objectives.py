"""Hand-computed tests for posttrain.weighting.objectives (hypervolume + every objective-weighting strategy)."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from posttrain.weighting.objectives import (
    ConvergenceInstabilityWeights,
    FixedWeights,
    GradientWeights,
    HypervolumeWeights,
    LagrangianWeights,
    TrustWeighting,
    gram_alignment,
    hypervolume,
    hypervolume_contribution,
    meta_reward_from_hvc,
    pareto_front,
)


def json_roundtrip(sd):
    return json.loads(json.dumps(sd, allow_nan=False))


def is_simplex(w, tol=1e-9):
    return all(v >= 0 for v in w) and abs(sum(w) - 1.0) < tol


# ======================================================================================================================
# hypervolume: 2-D
# ======================================================================================================================
STAIRS = [(1, 3), (2, 2), (3, 1)]


def test_hv_2d_staircase():
    # ref (0,0), all maximised. Sweep by x descending: (3,1): 3*1 = 3; (2,2): 2*(2-1) = 2; (1,3): 1*(3-2) = 1 -> 6
    assert hypervolume(STAIRS, (0, 0), [True, True]) == pytest.approx(6.0)


def test_hv_2d_dominated_duplicate_and_outside_points_add_nothing():
    # (1,1) and (2,1) are dominated by (2,2)/(3,1); (2,2) duplicated; (4,-1) is below ref in y, (-1,5) below in x;
    # (0,5) is ON the ref boundary in x (not strictly better) -> all add 0, HV stays 6
    pts = STAIRS + [(1, 1), (2, 1), (2, 2), (2, 2), (4, -1), (-1, 5), (0, 5)]
    assert hypervolume(pts, (0, 0), [True, True]) == pytest.approx(6.0)


def test_hv_single_point_empty_and_all_outside():
    # one point (2,3) with ref (1,1): (2-1)*(3-1) = 2
    assert hypervolume([(2, 3)], (1, 1), [True, True]) == pytest.approx(2.0)
    assert hypervolume([2, 3], (1, 1), [True, True]) == pytest.approx(2.0)  # a bare point is accepted
    assert hypervolume([], (0, 0), [True, True]) == 0.0
    assert hypervolume(np.zeros((0, 2)), (0, 0), [True, True]) == 0.0
    # every point worse than ref somewhere -> 0 (the official code would give a negative volume here)
    assert hypervolume([(2, -1), (-3, 4), (0, 0)], (0, 0), [True, True]) == 0.0


def test_hv_2d_minimised_objective_is_sign_flipped():
    # accuracy (max) and token count (min), ref = initial model (0.5 acc, 100 tokens)
    # (0.7, 80) -> box (0.2, 20); (0.9, 90) -> box (0.4, 10)
    # union: x-desc sweep: 0.4*10 = 4, then 0.2*(20-10) = 2 -> 6
    pts = [(0.7, 80), (0.9, 90)]
    assert hypervolume(pts, (0.5, 100), [True, False]) == pytest.approx(6.0)
    # equivalently with both objectives minimised after negating accuracy
    assert hypervolume([(-0.7, 80), (-0.9, 90)], (-0.5, 100), [False, False]) == pytest.approx(6.0)
    # maximize=None means all maximised
    assert hypervolume(STAIRS, (0, 0)) == pytest.approx(6.0)


def test_hv_1d():
    # 1 objective: the best improvement over ref; points worse than ref add nothing
    assert hypervolume([[3.0], [5.0], [-2.0]], [1.0], [True]) == pytest.approx(4.0)
    assert hypervolume([[3.0], [5.0]], [4.0], [False]) == pytest.approx(1.0)  # minimised: 4 - 3


# ======================================================================================================================
# hypervolume: 3-D and more
# ======================================================================================================================
def test_hv_3d_three_boxes_inclusion_exclusion():
    # A=(2,1,1), B=(1,2,1), C=(1,1,2), ref 0. Each box has volume 2; every pairwise and the triple intersection is
    # the unit cube (volume 1). Inclusion-exclusion: 3*2 - 3*1 + 1 = 4
    assert hypervolume([(2, 1, 1), (1, 2, 1), (1, 1, 2)], (0, 0, 0), [True] * 3) == pytest.approx(4.0)


def test_hv_3d_four_boxes():
    # A=(3,1,1), B=(1,3,1), C=(1,1,3), D=(2,2,2), ref 0
    # singles: 3+3+3+8 = 17
    # pairs: AB=AC=BC=(1,1,1) -> 1 each; AD=(2,1,1), BD=(1,2,1), CD=(1,1,2) -> 2 each; total 9
    # triples: ABC, ABD, ACD, BCD all (1,1,1) -> 4;  quadruple (1,1,1) -> 1
    # HV = 17 - 9 + 4 - 1 = 11
    pts = [(3, 1, 1), (1, 3, 1), (1, 1, 3), (2, 2, 2)]
    assert hypervolume(pts, (0, 0, 0), [True] * 3) == pytest.approx(11.0)


def test_hv_3d_dominated_duplicate_outside():
    base = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
    # (1,1,1) dominated by all; duplicates; (5,5,-1) below ref in z; (5,0,5) on the ref boundary in y
    pts = base + [(1, 1, 1), (2, 1, 1), (1, 2, 1), (5, 5, -1), (5, 0, 5)]
    assert hypervolume(pts, (0, 0, 0), [True] * 3) == pytest.approx(4.0)


def test_hv_3d_mixed_directions():
    # ref (0, 10, 0), objectives max/min/max; point (2, 4, 3) -> box (2, 10-4, 3) = 2*6*3 = 36
    assert hypervolume([(2, 4, 3)], (0, 10, 0), [True, False, True]) == pytest.approx(36.0)
    # plus a point worse than ref in the minimised objective (length 12 > 10): adds nothing
    assert hypervolume([(2, 4, 3), (9, 12, 9)], (0, 10, 0), [True, False, True]) == pytest.approx(36.0)


def test_hv_5d_single_point_and_pair():
    # single point: product of the side lengths 1*2*3*4*5 = 120
    assert hypervolume([(1, 2, 3, 4, 5)], (0,) * 5, [True] * 5) == pytest.approx(120.0)
    # add (2,1,1,1,1): its box (vol 2) overlaps the first in (1,1,1,1,1) (vol 1) -> 120 + 2 - 1 = 121
    assert hypervolume([(1, 2, 3, 4, 5), (2, 1, 1, 1, 1)], (0,) * 5, [True] * 5) == pytest.approx(121.0)


def test_hv_accepts_tensors_and_arrays():
    t = torch.tensor(STAIRS, dtype=torch.float32)
    assert hypervolume(t, torch.zeros(2), [True, True]) == pytest.approx(6.0)
    assert hypervolume(np.array(STAIRS), np.zeros(2), [True, True]) == pytest.approx(6.0)


def test_hv_input_errors():
    with pytest.raises(ValueError, match="points"):
        hypervolume([(1.0, float("nan"))], (0, 0), [True, True])
    with pytest.raises(ValueError, match="ref"):
        hypervolume([(1.0, 1.0)], (0, float("inf")), [True, True])
    with pytest.raises(ValueError, match="maximize"):
        hypervolume([(1.0, 1.0)], (0, 0), [True])
    with pytest.raises(ValueError, match="objective value"):
        hypervolume([(1.0, 1.0, 1.0)], (0, 0), [True, True])
    with pytest.raises(ValueError, match="front"):
        hypervolume_contribution([(1.0, float("nan"))], (1, 1), (0, 0), [True, True])
    with pytest.raises(ValueError, match="point"):
        hypervolume_contribution([(1.0, 1.0)], (1, float("nan")), (0, 0), [True, True])


def test_hv_speed_100_points_5_objectives():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(60, 5)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # concave front: all 60 points non-dominated
    u = rng.uniform(size=(100, 5))
    t0 = time.perf_counter()
    v1 = hypervolume(x, np.zeros(5), [True] * 5)
    v2 = hypervolume(u, np.zeros(5), [True] * 5)
    assert time.perf_counter() - t0 < 5.0  # ~0.2 s unloaded; generous for a shared 2-core box
    # sanity: inside the unit ball's positive orthant (pi^2*8/15/32 = 0.1645) and the unit cube
    assert 0 < v1 < 0.1645 and 0 < v2 < 1


# ======================================================================================================================
# contribution and Pareto filter
# ======================================================================================================================
def test_hv_contribution_2d_hand():
    # front {(1,3),(3,1)}: HV = 3*1 + 1*(3-1) = 5; adding (2,2) gives the staircase's 6 -> contribution 1
    front = [(1, 3), (3, 1)]
    assert hypervolume_contribution(front, (2, 2), (0, 0), [True, True]) == pytest.approx(1.0)
    # a dominated point, a duplicate, an outside point contribute 0
    assert hypervolume_contribution(front, (1, 1), (0, 0), [True, True]) == 0.0
    assert hypervolume_contribution(front, (3, 1), (0, 0), [True, True]) == 0.0
    assert hypervolume_contribution(front, (5, -1), (0, 0), [True, True]) == 0.0
    # empty front: the point's own box, (2-0)*(2-0) = 4
    assert hypervolume_contribution([], (2, 2), (0, 0), [True, True]) == pytest.approx(4.0)


def test_hv_contribution_3d_hand():
    # front {A=(2,1,1), B=(1,2,1)}: HV = 2 + 2 - 1 = 3. Adding C=(1,1,2) gives 4 (see above) -> contribution 1
    assert hypervolume_contribution([(2, 1, 1), (1, 2, 1)], (1, 1, 2), (0, 0, 0), [True] * 3) == pytest.approx(1.0)


def test_pareto_front():
    pts = [(1, 3), (2, 2), (2, 2), (1, 1), (3, 1), (2, 1)]
    assert pareto_front(pts, [True, True]) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    # minimising the second objective: (1,1) dominates (1,3); (2,1) dominates (2,2); (3,1) dominates (2,1)? no: 3>2
    # in objective 1 and equal in objective 2 -> (3,1) dominates (2,1); (3,1) also dominates (1,1)? 3>1, 1=1 -> yes
    assert pareto_front(pts, [True, False]) == [(3.0, 1.0)]
    assert pareto_front([], [True]) == []


# ======================================================================================================================
# FixedWeights
# ======================================================================================================================
def test_fixed_weights():
    f = FixedWeights([2, 1, 1], names=["acc", "len", "fmt"])
    assert f.weights() == [0.5, 0.25, 0.25]
    assert f.update([1, 2, 3]) == [0.5, 0.25, 0.25] and f.step == 1
    assert f.named_weights() == {"acc": 0.5, "len": 0.25, "fmt": 0.25}
    g = FixedWeights.from_state_dict(json_roundtrip(f.state_dict()))
    assert g.weights() == f.weights() and g.step == 1
    with pytest.raises(ValueError, match="non-negative"):
        FixedWeights([1, -1])
    with pytest.raises(ValueError, match="weights"):
        FixedWeights([1, float("nan")])
    with pytest.raises(ValueError, match="positive sum"):
        FixedWeights([0, 0])
    with pytest.raises(ValueError, match="names"):
        FixedWeights([1, 1], names=["a"])


def test_load_state_dict_refuses_other_config_or_strategy():
    f = FixedWeights([1, 1])
    with pytest.raises(ValueError, match="different config"):
        FixedWeights([1, 2]).load_state_dict(f.state_dict())
    with pytest.raises(ValueError, match="strategy"):
        GradientWeights(2).load_state_dict(f.state_dict())


# ======================================================================================================================
# HypervolumeWeights (DRW (a))
# ======================================================================================================================
def test_hypervolume_weights_meta_reward_sequence():
    # objectives accuracy (max), tokens (min), format (max); reference = initial model
    h = HypervolumeWeights([0.5, 0.25, 0.25], [True, False, True], reference=[0.5, 100.0, 0.5])
    assert h.weights() == [0.5, 0.25, 0.25]
    assert h.meta_reward() == 1.0  # m starts at 1
    # p1 = (0.6, 90, 0.6): box (0.1, 10, 0.1) -> HVC = 0.1; m = 0.5 + 1.5 tanh(0.1)
    m = h.update([0.6, 90.0, 0.6])
    assert h.last_hvc == pytest.approx(0.1)
    assert m == pytest.approx(0.5 + 1.5 * math.tanh(0.1)) and h.meta_reward() == m
    assert h.front() == [[0.6, 90.0, 0.6]]
    # p2 dominated by p1 -> HVC 0 -> m = 0.5 (penalty), not added
    assert h.update([0.55, 95.0, 0.6]) == pytest.approx(0.5)
    assert h.front() == [[0.6, 90.0, 0.6]]
    # p3 = (0.7, 80, 0.7) dominates p1: box (0.2, 20, 0.2) = 0.8, minus overlap with p1's box 0.1 -> HVC 0.7;
    # p1 leaves the buffer (dominated), the front HV is now 0.8
    assert h.update([0.7, 80.0, 0.7]) == pytest.approx(0.5 + 1.5 * math.tanh(0.7))
    assert h.front() == [[0.7, 80.0, 0.7]]
    assert h.front_hypervolume() == pytest.approx(0.8)
    # p4 trades accuracy for format: (0.65, 80, 0.9): box (0.15, 20, 0.4) = 1.2; overlap with p3's box
    # min -> (0.15, 20, 0.2) = 0.6 -> HVC 0.6; both stay in the buffer
    assert h.update([0.65, 80.0, 0.9]) == pytest.approx(0.5 + 1.5 * math.tanh(0.6))
    assert h.front() == [[0.7, 80.0, 0.7], [0.65, 80.0, 0.9]]
    assert h.step == 4


def test_hypervolume_weights_worse_than_reference_is_clipped_not_an_error():
    # official: a negative HVC is only tolerated while the buffer holds just the reference; ours is never negative
    h = HypervolumeWeights([0.5, 0.5], [True, True])
    assert h.update([0.5, 0.5]) == 1.0  # first call records the reference, m stays 1
    assert h.reference() == [0.5, 0.5]
    assert h.update([0.4, 0.9]) == pytest.approx(0.5) and h.last_hvc == 0.0
    assert h.update([0.9, 0.9]) == pytest.approx(0.5 + 1.5 * math.tanh(0.16))  # 0.4 * 0.4
    assert h.update([0.4, 0.95]) == pytest.approx(0.5)  # worse than the ref in obj 0 with a non-trivial buffer


def test_hypervolume_weights_config_and_cadence():
    h = HypervolumeWeights([0.334, 0.333, 0.333], [True, False, True])
    assert h.eval_every == 5 and h.apply_to == "advantage"
    assert [s for s in range(1, 16) if h.should_evaluate(s)] == [5, 10, 15]
    with pytest.raises(ValueError, match="sum to 1"):
        HypervolumeWeights([0.5, 0.3, 0.3], [True, False, True])
    with pytest.raises(ValueError, match="apply_to"):
        HypervolumeWeights([0.5, 0.5], [True, True], apply_to="loss")
    with pytest.raises(ValueError, match="maximize"):
        HypervolumeWeights([0.5, 0.5], [True])
    with pytest.raises(ValueError, match="performance"):
        HypervolumeWeights([0.5, 0.5], [True, True], reference=[0, 0]).update([float("nan"), 1])
    assert meta_reward_from_hvc(0.0) == 0.5 and meta_reward_from_hvc(-1.0) == 0.5
    assert meta_reward_from_hvc(50.0) == pytest.approx(2.0)


def test_hypervolume_weights_state_roundtrip():
    rng = np.random.default_rng(1)
    evals = rng.uniform(size=(12, 3)).tolist()
    a = HypervolumeWeights([0.5, 0.25, 0.25], [True, False, True], eval_every=1, names=["a", "b", "c"])
    for p in evals[:6]:
        a.update(p)
    b = HypervolumeWeights.from_state_dict(json_roundtrip(a.state_dict()))
    for p in evals[6:]:
        assert a.update(p) == b.update(p)
    assert a.state_dict() == b.state_dict()


# ======================================================================================================================
# GradientWeights (DRW (b))
# ======================================================================================================================
def test_gram_alignment_hand():
    # g = [[1,2],[3,4]]: Gram = [[5, 11], [11, 25]] -> row sums [16, 36]
    assert gram_alignment(torch.tensor([[1.0, 2.0], [3.0, 4.0]])) == [16.0, 36.0]
    # list of differently shaped tensors with the same number of elements
    assert gram_alignment([torch.tensor([[1.0], [2.0]]), torch.tensor([3.0, 4.0])]) == [16.0, 36.0]
    # global sign flip leaves s unchanged
    assert gram_alignment(-torch.tensor([[1.0, 2.0], [3.0, 4.0]])) == [16.0, 36.0]
    with pytest.raises(ValueError, match=r"per_objective_grads\[1\]"):
        gram_alignment([torch.ones(2), torch.tensor([1.0, float("inf")])])
    with pytest.raises(ValueError, match="same number"):
        gram_alignment([torch.ones(2), torch.ones(3)])


def test_gradient_weights_hand_update_and_direction():
    g = GradientWeights(3)
    assert g.weights() == pytest.approx([1 / 3] * 3)
    # g1 = g2 = (1, 0), g3 = (-1, 0); sum = (1, 0) -> s = (1, 1, -1)
    # lr / regularization_factor = 1e-5 / 1e-5 = 1 -> w ∝ exp(log(1/3) + s) ∝ (e, e, 1/e)
    grads = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    w = g.update(grads, lr=1e-5)
    z = 2 * math.e + math.exp(-1)
    assert w == pytest.approx([math.e / z, math.e / z, math.exp(-1) / z], rel=1e-12)
    assert g.last_scores == [1.0, 1.0, -1.0]
    assert is_simplex(w)
    # the aligned objectives gained weight, the conflicting one lost it
    assert w[0] > 1 / 3 and w[2] < 1 / 3


def test_gradient_weights_official_init_and_accumulation():
    g = GradientWeights(initial_weights=[0.334, 0.333, 0.333], accumulation_steps=2)
    w0 = g.weights()
    assert w0 == pytest.approx([0.334, 0.333, 0.333])
    # step 1: s = (1, 0, 0) -> no change yet
    assert g.update([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, -1.0])], lr=1e-5) == w0
    # scores: g=[(1,0),(0,1),(0,-1)] -> sum (1,0) -> s=(1, 0, 0)
    # step 2: s = (0, 2, 0) for g=[(0,0),(1,1),(-1,1)]: sum (0,2) -> s = (0, 2, 2)
    w = g.update(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0]]), lr=1e-5)
    avg = [(1 + 0) / 2, (0 + 2) / 2, (0 + 2) / 2]
    logits = [math.log(v) + a for v, a in zip(w0, avg)]
    z = sum(math.exp(x) for x in logits)
    assert w == pytest.approx([math.exp(x) / z for x in logits], rel=1e-12)
    assert g.step == 2


def test_gradient_weights_extreme_scores_stay_finite_and_roundtrip():
    g = GradientWeights(2, regularization_factor=1e-12)
    w = g.update(torch.tensor([[1e3, 0.0], [0.0, 1.0]]), lr=1.0)  # logits differ by ~1e18
    assert w == [1.0, 0.0] and all(math.isfinite(v) for v in w)
    w = g.update(torch.tensor([[0.0, 0.0], [0.0, 1e3]]), lr=1.0)  # a zero weight stays zero (multiplicative)
    assert w == [1.0, 0.0]
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 7, generator=rng) for _ in range(6)]
    a = GradientWeights(3, accumulation_steps=2, names=["x", "y", "z"])
    for gr in grads[:3]:
        a.update(gr, lr=1e-6)
    b = GradientWeights.from_state_dict(json_roundtrip(a.state_dict()))
    for gr in grads[3:]:
        assert a.update(gr, lr=1e-6) == b.update(gr, lr=1e-6)
    with pytest.raises(ValueError, match="lr"):
        a.update(grads[0], lr=float("nan"))
    with pytest.raises(ValueError, match="3 gradients"):
        a.update(grads[0][:2], lr=1e-6)


# ======================================================================================================================
# LagrangianWeights (Constrained RLHF)
# ======================================================================================================================
def test_lagrangian_direction():
    lw = LagrangianWeights([0.5, 0.5], init="zeros")
    assert lw.multipliers() == [0.5, 0.5]  # sigmoid(0)
    lw.update([0.2, 0.9])  # objective 0 violates its constraint (0.2 < 0.5), objective 1 satisfies it
    lam = lw.multipliers()
    assert lam[0] > 0.5 > lam[1]
    w = lw.weights()  # no primary objective: lambda / sum(lambda)
    assert is_simplex(w) and w[0] > w[1]


def test_lagrangian_hand_step_with_clipping():
    # init zeros, sigmoid: dlambda/dlt = 0.25. J - theta = (-1, 0.2) -> grad = (-0.25, 0.05), norm = 0.2549... < 0.5
    # (no clipping); first SGD step buf = grad; lt = 0 - 0.1 * grad = (0.025, -0.005)
    lw = LagrangianWeights([0.5, 0.3], init="zeros")
    lw.update([-0.5, 0.5])
    assert lw.raw_multipliers() == pytest.approx([0.025, -0.005], rel=1e-12)
    # second step, J - theta = (-10, 0): grad = (-10 * s'(0.025), 0) -> norm ~2.5 > 0.5 -> clipped to norm 0.5/(1+..)
    s = 1 / (1 + math.exp(-0.025))
    g0 = -10 * s * (1 - s)
    g0 *= 0.5 / (abs(g0) + 1e-6)
    buf = [0.1 * -0.25 + g0, 0.1 * 0.05 + 0.0]
    lw.update([-9.5, 0.3])
    assert lw.raw_multipliers() == pytest.approx([0.025 - 0.1 * buf[0], -0.005 - 0.1 * buf[1]], rel=1e-12)


@pytest.mark.parametrize("kind", ["inequality", "equality"])
def test_lagrangian_matches_autograd_reference(kind):
    # reference: the official update written with autograd + torch's clip_grad_norm_ + the torch.optim.SGD momentum
    # recursion (dampening 0: buf = g on the first step, then buf = momentum * buf + g; p -= lr * buf).
    # (torch.optim itself is not used: constructing it imports torch._dynamo, seconds on a loaded CPU.)
    squash = torch.sigmoid if kind == "inequality" else torch.tanh
    thresholds = [0.44, 0.238, 0.1]
    lw = LagrangianWeights(thresholds, kind=kind, seed=3)
    lt = torch.tensor(lw.raw_multipliers(), dtype=torch.float64, requires_grad=True)
    buf = None
    rng = np.random.default_rng(0)
    for _ in range(8):
        J = rng.uniform(-2, 2, size=3).tolist()
        lw.update(J)
        viol = torch.tensor(J, dtype=torch.float64) - torch.tensor(thresholds, dtype=torch.float64)
        loss = (squash(lt) * viol.detach()).sum()
        lt.grad = None
        loss.backward()
        torch.nn.utils.clip_grad_norm_([lt], 0.5)
        with torch.no_grad():
            buf = lt.grad.clone() if buf is None else 0.1 * buf + lt.grad
            lt -= 0.1 * buf
        assert lw.raw_multipliers() == pytest.approx(lt.detach().tolist(), rel=1e-10, abs=1e-12)


def test_lagrangian_primary_mix_and_equality():
    # objective 0 is primary (threshold None); two constraints -> N = 2
    lw = LagrangianWeights([None, 0.44, 0.238], init=[0.0, 0.0])
    assert lw.mix() == [1.0, 0.5, 0.5]  # N - sum(lambda) = 2 - 1
    assert lw.weights() == [0.5, 0.25, 0.25]
    lw.update([123.0, 0.0, 0.0])  # both constraints violated; the primary's return is ignored
    w = lw.weights()
    assert is_simplex(w) and w[1] > 0.25 and w[2] > 0.25 and w[0] < 0.5
    # equality: tanh multipliers; J above theta pushes lambda negative (signed weight), sums stay N / 1
    eq = LagrangianWeights([None, 0.5], kind="equality", init="zeros")
    assert eq.weights() == [1.0, 0.0]
    eq.update([0.0, 0.9])
    assert eq.multipliers()[0] < 0
    w = eq.weights()
    assert w[1] < 0 and sum(w) == pytest.approx(1.0) and w[0] > 1.0
    # equality, no primary, all-zero multipliers -> zeros (documented)
    assert LagrangianWeights([0.5, 0.5], kind="equality", init="zeros").weights() == [0.0, 0.0]


def test_lagrangian_init_fixed_errors_roundtrip():
    a, b = LagrangianWeights([0.1, 0.2], seed=7), LagrangianWeights([0.1, 0.2], seed=7)
    assert a.raw_multipliers() == b.raw_multipliers()
    assert all(abs(x) < 0.1 for x in a.raw_multipliers()) and a.raw_multipliers() != [0.0, 0.0]
    f = LagrangianWeights([0.1, 0.2], init="zeros", fixed=True)
    f.update([-5.0, -5.0])
    assert f.multipliers() == [0.5, 0.5] and f.step == 1
    with pytest.raises(ValueError, match="at most one"):
        LagrangianWeights([None, None, 0.1])
    with pytest.raises(ValueError, match="at least one"):
        LagrangianWeights([None])
    with pytest.raises(ValueError, match="kind"):
        LagrangianWeights([0.1], kind="box")
    with pytest.raises(ValueError, match="objective_returns"):
        a.update([0.1, float("nan")])
    with pytest.raises(ValueError, match="objective_returns"):
        a.update([0.1])
    rng = np.random.default_rng(2)
    Js = rng.uniform(size=(8, 3)).tolist()
    c = LagrangianWeights([None, 0.3, 0.6], kind="equality", names=["task", "c1", "c2"])
    for J in Js[:4]:
        c.update(J)
    d = LagrangianWeights.from_state_dict(json_roundtrip(c.state_dict()))
    for J in Js[4:]:
        assert c.update(J) == d.update(J)


# ======================================================================================================================
# ConvergenceInstabilityWeights (RECAP-like)
# ======================================================================================================================
def test_recap_warmup_then_hand_value():
    # W = 1: the buffer holds 2 values; warm-up while fewer than 2
    r = ConvergenceInstabilityWeights(2, window=1)
    assert r.update([2.0, 1.0]) == [0.5, 0.5] and r.lambdas() == [1.0, 1.0] and not r.warmed_up
    w = r.update([1.0, 1.0])
    # objective 0: mu~ = 2, mu = 1 -> c = 2; sigma = std([2, 1], unbiased) = 1/sqrt(2); i = 0.7071/3 = 0.2357
    #              s0 = 0.5*2 + 0.5*0.2357 = 1.11785
    # objective 1: mu~ = mu = 1 -> c = 1, sigma = 0, i = 0, s1 = 0.5
    # lambda = 2 softmax(s / 5); weights = lambda / 2
    s0 = 0.5 * 2 + 0.5 * (1 / math.sqrt(2)) / 3
    s1 = 0.5
    e0, e1 = math.exp(s0 / 5), math.exp(s1 / 5)
    assert w == pytest.approx([e0 / (e0 + e1), e1 / (e0 + e1)], rel=1e-6)
    assert r.lambdas() == pytest.approx([2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1)], rel=1e-6)
    assert sum(r.lambdas()) / 2 == pytest.approx(1.0)


def test_recap_directions_default_window():
    r = ConvergenceInstabilityWeights(3)  # W=10, T=5, alpha=0.5
    for t in range(19):
        r.update([1.0 / (1 + t), 0.5, 0.5])
        assert r.lambdas() == [1.0, 1.0, 1.0]  # warm-up: 19 < 2W values
    for t in range(19, 40):
        w = r.update([1.0 / (1 + t), 0.5, 0.5 + 0.2 * (-1) ** t])
    # objective 0 is still falling (c > 1) -> highest; objective 2 is volatile (i > 0) -> above the flat one
    assert w[0] > w[2] > w[1]
    assert is_simplex(w)


def test_recap_guards_zero_negative_and_nonfinite():
    r = ConvergenceInstabilityWeights(3, window=2)
    for v in ([0.0, -1.0, 1.0], [0.0, 1.0, 1.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0]):
        w = r.update(v)
    assert all(math.isfinite(x) for x in w) and is_simplex(w)
    sc = r.scores()
    assert sc["convergence"][0] == 1.0  # 0/0 -> 1 (saturated)
    assert sc["convergence"][2] == 10.0  # 1 -> 0 is clamped at max_score
    assert 0 <= min(sc["instability"]) and max(sc["instability"]) <= 10.0
    with pytest.raises(ValueError, match="losses"):
        r.update([1.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match="losses"):
        r.update([1.0, 2.0])


def test_recap_roundtrip():
    rng = np.random.default_rng(3)
    L = rng.uniform(0.1, 1.0, size=(30, 4)).tolist()
    for cut in (3, 12):  # mid warm-up and after
        a = ConvergenceInstabilityWeights(4, window=4)
        for v in L[:cut]:
            a.update(v)
        b = ConvergenceInstabilityWeights.from_state_dict(json_roundtrip(a.state_dict()))
        for v in L[cut:]:
            assert a.update(v) == b.update(v)


# ======================================================================================================================
# TrustWeighting (Trust-GRPO)
# ======================================================================================================================
def test_trust_saturated_groups():
    tw = TrustWeighting()
    assert tw.scale([1.0, 0.95, 0.9], [0.1, 0.2, 0.3], step=0) == (0.0, 0.0)
    assert tw.scale([0.0, 0.1, 0.05], [0.9, 0.9, 0.9], step=0) == (0.0, 0.0)
    r = tw.combine([1.0, 0.9, 0.0, 0.1], [0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1], step=0)
    assert r.tolist() == pytest.approx([1.0, 0.9, 0.0, 0.1])
    assert [s["gamma_logged"] for s in tw.last_stats] == [0.5, 0.5]
    # float32 scores: 0.9f counts as >= 0.9 (compared in the scores' own precision)
    a32 = torch.tensor([1.0, 0.9, 0.95], dtype=torch.float32)
    assert tw.scale(a32, torch.full((3,), 0.5), step=0) == (0.0, 0.0)
    out = tw.combine(a32, torch.full((3,), 0.5), None, step=0)
    assert out.dtype == torch.float32 and torch.equal(out, a32)


def test_trust_trusted_and_untrusted_hand():
    tw = TrustWeighting()  # alpha 0.3, T 500, gate 0.2
    # trusted: a = (1, 0.6, 0.3, 0.0), t = (0.9, 0.8, 0.2, 0.7); t_3 gated to 0 (a < 0.2)
    # mu_c = (0.9 + 0.8)/2 = 0.85 >= mu_w = (0.2 + 0)/2 = 0.1 -> trust 1, d = 0.3 exp(-250/500)
    d, trust = tw.scale([1.0, 0.6, 0.3, 0.0], [0.9, 0.8, 0.2, 0.7], step=250)
    assert trust == 1.0 and d == pytest.approx(0.3 * math.exp(-0.5))
    # untrusted: a = (1, 0.6, 0.3, 0.0), t = (0.2, 0.4, 0.9, 0.7) -> mu_c = 0.3, mu_w = (0.9 + 0)/2 = 0.45
    # trust = exp(0.3 - 0.45) = exp(-0.15) (code: exponent x1; logged gamma exp(-0.3))
    a, t = [1.0, 0.6, 0.3, 0.0], [0.2, 0.4, 0.9, 0.7]
    d, trust = tw.scale(a, t, step=250)
    assert trust == pytest.approx(math.exp(-0.15)) and d == pytest.approx(0.3 * math.exp(-0.5) * math.exp(-0.15))
    r = tw.combine(a, t, [7, 7, 7, 7], step=250)
    assert r.tolist() == pytest.approx([1 + d * 0.2, 0.6 + d * 0.4, 0.3 + d * 0.9, 0.0])
    assert tw.last_stats[0]["gamma_logged"] == pytest.approx(math.exp(-0.3))
    # without the gate t_3 = 0.7 counts: mu_w = 0.8 -> trust exp(0.3 - 0.8)
    assert TrustWeighting(aux_gate=None).scale(a, t, step=0)[1] == pytest.approx(math.exp(-0.5))


def test_trust_no_correct_rollout_keeps_factor_one():
    # official: if mu_c < mu_w but no rollout is correct, the discount is multiplied by 1
    d, trust = TrustWeighting().scale([0.3, 0.4], [0.5, 0.6], step=0)
    assert trust == 1.0 and d == pytest.approx(0.3)


def test_trust_weights_annealing_roundtrip():
    tw = TrustWeighting()
    w0 = tw.weights()
    assert w0 == pytest.approx([1 / 1.3, 0.3 / 1.3]) and is_simplex(w0)
    tw.update()
    tw.update(step=500)
    b = 0.3 * math.exp(-1)
    assert tw.weights() == pytest.approx([1 / (1 + b), b / (1 + b)])
    assert tw.weights()[1] < w0[1]  # the auxiliary weight anneals
    tw2 = TrustWeighting.from_state_dict(json_roundtrip(tw.state_dict()))
    assert tw2.step == 500 and tw2.weights() == tw.weights()
    with pytest.raises(ValueError, match="aux_scores"):
        tw.scale([0.5, 0.6], [0.1, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        tw.scale([0.5, 0.6], [0.1])
    with pytest.raises(ValueError, match="group_ids"):
        tw.combine([0.5, 0.6], [0.1, 0.2], [0])
    # non-integer group ids (e.g. prompt strings) are accepted
    r1 = tw.combine([1.0, 0.0, 0.6, 0.3], [0.5, 0.5, 0.9, 0.1], ["p1", "p1", "p2", "p2"], step=0)
    r2 = tw.combine([1.0, 0.0, 0.6, 0.3], [0.5, 0.5, 0.9, 0.1], [0, 0, 1, 1], step=0)
    assert torch.equal(r1, r2)


# ======================================================================================================================
# registry
# ======================================================================================================================
def test_registry():
    from posttrain.weighting.protocol import StrategyEnv, build_strategy, registered

    assert set(registered("objective")) >= {
        "fixed", "hypervolume", "gradient", "lagrangian", "recap", "convergence_instability", "trust"
    }
    assert registered("objective")["recap"] is registered("objective")["convergence_instability"]
    assert isinstance(build_strategy("objective", {"name": "recap"}, StrategyEnv(reward_names=("a", "b"))).weighting,
                      ConvergenceInstabilityWeights)
    hv = build_strategy("objective", {"name": "hypervolume"}, StrategyEnv(reward_names=("a",), reward_weights=(1.0,),
                                                                            has_eval_data=True))
    assert isinstance(hv.weighting, HypervolumeWeights)
    s = build_strategy("objective", {"name": "fixed"}, StrategyEnv(reward_names=("a", "b"), reward_weights=(1, 3)))
    assert s.weighting.weights() == [0.25, 0.75]


def test_docs_example_runs():
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "weighting_objectives.md"
    if not doc.exists():
        pytest.skip("docs not present")
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert code, "the user guide must contain a runnable python example"
    exec(compile(code[0], str(doc), "exec"), {"__name__": "docs_example"})
