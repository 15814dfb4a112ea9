"""Hand-computed and property tests for posttrain.weighting.sequences (DRA, SEED-GRPO, loss-based weights)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.weighting.protocol import registered
from posttrain.weighting.sequences import (
    LossSampleWeighter,
    dra_adjust_rewards,
    dra_weights,
    loss_sample_weights,
    seed_grpo_prompt_scales,
    seed_grpo_scale,
    semantic_entropy,
)

EPS = 1e-6


# ------------------------------------------------------------------------------------------------------------------ DRA
def test_dra_two_identical_one_orthogonal():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # S = [[1,1,0],[1,1,0],[0,0,1]] -> row sums [2, 2, 1] -> w = 1/(sum + 1e-6)
    w = dra_weights(e)
    assert w.tolist() == pytest.approx([1 / (2 + EPS), 1 / (2 + EPS), 1 / (1 + EPS)], rel=1e-6)
    assert w.tolist() == pytest.approx([0.5, 0.5, 1.0], rel=1e-5)
    # scale of the embeddings does not matter (L2 normalisation)
    assert dra_weights(e * torch.tensor([[3.0], [0.01], [7.0]])).tolist() == pytest.approx(w.tolist(), rel=1e-6)


def test_dra_group_ids_restrict_similarity():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # rows 0 and 1 identical but in different groups -> no shared similarity -> all 1/(1+eps)
    w = dra_weights(e, group_ids=torch.tensor([0, 1, 0]))
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)
    w2 = dra_weights(e, group_ids=[7, 7, 3])
    assert w2.tolist() == pytest.approx([0.5, 0.5, 1.0], rel=1e-5)
    with pytest.raises(ValueError, match="group_ids"):
        dra_weights(e, group_ids=[0, 1])


def test_dra_hand_value_partial_similarity():
    # e0 = (1,0), e1 = (0.6, 0.8): cosine 0.6 -> both rows sum to 1.6 -> w = 1/1.6 = 0.625
    w = dra_weights(torch.tensor([[2.0, 0.0], [0.6, 0.8]], dtype=torch.float64))
    assert w.tolist() == pytest.approx([1 / (1.6 + EPS)] * 2, rel=1e-12)


def test_dra_negative_cosine_guard():
    # cosine -0.5: sum = 0.5 >= min_divisor -> identical to the official code: 1/(0.5 + 1e-6)
    a = torch.tensor([[1.0, 0.0], [math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)]], dtype=torch.float64)
    assert dra_weights(a).tolist() == pytest.approx([1 / (0.5 + EPS)] * 2, rel=1e-9)
    # antipodal: sum = 0 -> official code gives 1/1e-6 = 1e6; we clamp the divisor at min_divisor = 0.1
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert dra_weights(b).tolist() == pytest.approx([1 / (0.1 + EPS)] * 2, rel=1e-6)
    # three vectors at 120 degrees: sums = 1 - 0.5 - 0.5 = 0 -> clamped
    ang = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    c = torch.tensor([[math.cos(t), math.sin(t)] for t in ang])
    assert dra_weights(c).tolist() == pytest.approx([1 / (0.1 + EPS)] * 3, rel=1e-5)
    # min_divisor = 1 -> weights in (0, 1]
    assert dra_weights(b, min_divisor=1.0).tolist() == pytest.approx([1 / (1 + EPS)] * 2, rel=1e-6)
    with pytest.raises(ValueError):
        dra_weights(b, min_divisor=0.0)


def test_dra_edge_cases():
    assert dra_weights(torch.empty(0, 4)).shape == (0,)
    assert dra_weights(torch.tensor([[0.3, 0.4]])).tolist() == pytest.approx([1 / (1 + EPS)])
    # zero row: orthogonal to everything, self-similarity 1
    w = dra_weights(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.5], rel=1e-5)
    with pytest.raises(ValueError, match="embeddings"):
        dra_weights(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="embeddings"):
        dra_weights(torch.ones(3))
    e = torch.randn(4, 3, requires_grad=True)
    assert not dra_weights(e).requires_grad


def test_dra_adjust_rewards_and_registry():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = dra_adjust_rewards(torch.tensor([1.0, 0.0, 2.0]), e)
    assert r.tolist() == pytest.approx([0.5, 0.0, 2.0], rel=1e-5)  # binary reward 0 stays 0
    with pytest.raises(ValueError, match="rewards"):
        dra_adjust_rewards(torch.tensor([1.0, float("inf"), 0.0]), e)
    with pytest.raises(ValueError):
        dra_adjust_rewards(torch.tensor([1.0, 0.0]), e)
    assert registered("sequence")["dra"].name == "dra"  # the recipe name resolves to the method's strategy


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=5),
    st.data(),
)
def test_dra_property_finite_positive(n, d, data):
    vals = data.draw(st.lists(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False), min_size=n * d, max_size=n * d))
    w = dra_weights(torch.tensor(vals, dtype=torch.float64).reshape(n, d))
    assert torch.isfinite(w).all() and (w > 0).all() and (w <= 1 / 0.1 + 1e-6).all()


# ----------------------------------------------------------------------------------------------------------------- SEED
def test_semantic_entropy_hand_cases():
    se = semantic_entropy([["4", "4", "4", "4"], ["a", "b", "c", "d"], ["a", "a", "b", "c"], ["x"], []])
    assert se[0].item() == 0.0  # K = 1
    assert se[1].item() == pytest.approx(math.log(4), rel=1e-6)  # all distinct -> log G
    # counts [2,1,1]: p = [1/2, 1/4, 1/4]; -sum p log p = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2 = 1.0397
    assert se[2].item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert se[3].item() == 0.0 and se[4].item() == 0.0  # G = 1, empty
    # literal Eq. 5: -(1/K) sum log p_k = (1/3)(ln 2 + 2 ln 4) = (5/3) ln 2
    se5 = semantic_entropy([["a", "a", "b", "c"], ["a", "b", "c", "d"]], estimator="eq5")
    assert se5[0].item() == pytest.approx(5 / 3 * math.log(2), rel=1e-6)
    assert se5[1].item() == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(ValueError):
        semantic_entropy([["a"]], estimator="nope")


def test_semantic_entropy_missing_answers_are_singletons():
    # None = no extracted answer: each is its own cluster -> counts [2, 1, 1]
    se = semantic_entropy([["a", None, None, "a"]])
    assert se.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert semantic_entropy([[None, None, None]]).item() == pytest.approx(math.log(3), rel=1e-6)


def test_semantic_entropy_with_seq_logprobs():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2] -> p(a) = 1/2, p(b) = 1/2 -> SE = ln 2
    se = semantic_entropy([["a", "a", "b"]], seq_logprobs=[[0.0, 0.0, math.log(2)]])
    assert se.item() == pytest.approx(math.log(2), rel=1e-6)
    # shift invariance; tensor [P, G] input
    se2 = semantic_entropy([["a", "a", "b"]], seq_logprobs=torch.tensor([[-5.0, -5.0, -5.0 + math.log(2)]]))
    assert se2.item() == pytest.approx(math.log(2), rel=1e-6)
    # equal likelihoods reproduce the frequency estimate
    se3 = semantic_entropy([["a", "a", "b", "c"]], seq_logprobs=[[-1.0] * 4])
    assert se3.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="seq_logprobs"):
        semantic_entropy([["a", "b"]], seq_logprobs=[[0.0, float("nan")]])
    with pytest.raises(ValueError):
        semantic_entropy([["a", "b"]], seq_logprobs=[[0.0]])
    with pytest.raises(ValueError):
        semantic_entropy(["a", "b"])  # flat list: ambiguous, must be [["a", "b"]]


def test_seed_scale_forms_by_hand():
    se = torch.tensor([1.5 * math.log(2)])  # counts [2,1,1], G = 4 -> SE/SE_max = 1.5 ln2 / ln4 = 0.75
    x = 0.02 * 0.75  # = 0.015
    assert seed_grpo_scale(se, 4).item() == pytest.approx(1 - x, rel=1e-6)
    assert seed_grpo_scale(se, 4, form="exponential").item() == pytest.approx(math.exp(-x), rel=1e-6)
    assert seed_grpo_scale(se, 4, form="focal").item() == pytest.approx((1 - x) ** 2, rel=1e-6)
    assert seed_grpo_scale(se, 4, form="focal", gamma=3.0).item() == pytest.approx((1 - x) ** 3, rel=1e-6)
    # inverse (third-party): 1/(1 + (alpha/ln G) * SE) = 1/(1 + x)
    assert seed_grpo_scale(se, 4, form="inverse").item() == pytest.approx(1 / (1 + x), rel=1e-6)
    # K = 1 -> SE = 0 -> scale 1; all distinct at G = 8 -> 1 - alpha
    assert seed_grpo_scale(torch.tensor([0.0]), 8).item() == 1.0
    assert seed_grpo_scale(torch.tensor([math.log(8)]), 8).item() == pytest.approx(0.98, rel=1e-6)
    # G = 1 -> scale 1 whatever SE; clamp >= 0 for big alpha
    assert seed_grpo_scale(torch.tensor([0.7]), 1).item() == 1.0
    assert seed_grpo_scale(torch.tensor([math.log(8)]), 8, alpha=3.0).item() == 0.0
    assert seed_grpo_scale(torch.tensor([math.log(8)]), 8, alpha=3.0, form="focal").item() == 0.0
    # per-prompt group sizes
    s = seed_grpo_scale(torch.tensor([math.log(2), math.log(4)]), torch.tensor([2, 4]), alpha=0.5)
    assert s.tolist() == pytest.approx([0.5, 0.5], rel=1e-6)


def test_seed_scale_validation():
    with pytest.raises(ValueError, match="se"):
        seed_grpo_scale(torch.tensor([float("nan")]), 4)
    with pytest.raises(ValueError):
        seed_grpo_scale(torch.tensor([-0.1]), 4)
    with pytest.raises(ValueError):
        seed_grpo_scale(torch.tensor([0.1]), 4, form="cubic")
    with pytest.raises(ValueError):
        seed_grpo_scale(torch.tensor([0.1]), 4, alpha=-1.0)


def test_seed_prompt_scales_end_to_end_and_registry():
    s = seed_grpo_prompt_scales([["a", "a", "b", "c"], ["1", "1", "1", "1"], ["z"]])
    assert s.tolist() == pytest.approx([0.985, 1.0, 1.0], rel=1e-6)
    assert registered("sequence")["seed"].name == "seed"


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=0, max_size=10), min_size=1, max_size=5))
def test_seed_property_bounds(groups):
    se = semantic_entropy(groups)
    for g, v in zip(groups, se.tolist()):
        assert 0.0 <= v <= math.log(max(len(g), 1)) + 1e-6
    for form in ("linear", "exponential", "focal", "inverse"):
        s = seed_grpo_prompt_scales(groups, form=form)
        assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()


# ---------------------------------------------------------------------------------------------------- loss-based weights
_A = math.exp(-2.5)  # exp((0 - 1)/0.4)


@pytest.mark.parametrize(
    "strategy,expected",
    [
        # losses [1,2,3]: D = 2, h = 2*l/2 - (3+1)/2 = [-1, 0, 1]
        # linupper f = min(h+1, 1) = [0, 1, 1] -> g = [e^-2.5, 1, 1]
        ("linupper", [_A / (2 + _A), 1 / (2 + _A), 1 / (2 + _A)]),
        # quadratic f = 1 - h^2 = [0, 1, 0] -> g = [e^-2.5, 1, e^-2.5]
        ("quadratic", [_A / (1 + 2 * _A), 1 / (1 + 2 * _A), _A / (1 + 2 * _A)]),
        ("mid", [_A / (1 + 2 * _A), 1 / (1 + 2 * _A), _A / (1 + 2 * _A)]),
        # extremes f = |h| = [1, 0, 1] -> g = [1, e^-2.5, 1]
        ("extremes", [1 / (2 + _A), _A / (2 + _A), 1 / (2 + _A)]),
        # upper f = 0.5h + 0.5 = [0, 0.5, 1] -> g = exp([-2.5, -1.25, 0])
        (
            "upper",
            [v / (math.exp(-2.5) + math.exp(-1.25) + 1) for v in (math.exp(-2.5), math.exp(-1.25), 1.0)],
        ),
    ],
)
def test_loss_weights_by_hand(strategy, expected):
    w = loss_sample_weights(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), strategy=strategy)
    assert w.tolist() == pytest.approx(expected, rel=1e-12)
    # order does not matter, shift/scale invariance of h (the official normalisation)
    w2 = loss_sample_weights(torch.tensor([30.0, 10.0, 20.0], dtype=torch.float64), strategy=strategy)
    assert w2.tolist() == pytest.approx([expected[2], expected[0], expected[1]], rel=1e-9)


def test_loss_weights_temperature_and_delta():
    # temperature 1: linupper on [1,2,3] -> [e^-1, 1, 1]/(2 + e^-1)
    w = loss_sample_weights(torch.tensor([1.0, 2.0, 3.0]), temperature=1.0)
    a = math.exp(-1.0)
    assert w.tolist() == pytest.approx([a / (2 + a), 1 / (2 + a), 1 / (2 + a)], rel=1e-6)
    # delta 2: h = [-2, 0, 2], linupper f = min(h + 2, 2) = [0, 2, 2] -> g = [e^(-2/0.4), 1, 1]
    w = loss_sample_weights(torch.tensor([1.0, 2.0, 3.0]), delta=2.0)
    b = math.exp(-5.0)
    assert w.tolist() == pytest.approx([b / (2 + b), 1 / (2 + b), 1 / (2 + b)], rel=1e-6)


def test_loss_weights_edge_cases():
    assert loss_sample_weights(torch.full((5,), 2.3)).tolist() == pytest.approx([0.2] * 5)
    for s in ("linupper", "quadratic", "extremes", "upper"):
        assert loss_sample_weights(torch.full((4,), -7.0), strategy=s).tolist() == pytest.approx([0.25] * 4)
        # nearly equal (difference below the 1e-6 floor of D): still finite, sums to 1
        w = loss_sample_weights(torch.tensor([5.0, 5.0 + 1e-9, 5.0], dtype=torch.float64), strategy=s)
        assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0)
    assert loss_sample_weights(torch.tensor([0.7])).tolist() == [1.0]
    assert loss_sample_weights(torch.empty(0)).shape == (0,)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not loss_sample_weights(x).requires_grad
    with pytest.raises(ValueError, match="losses"):
        loss_sample_weights(torch.tensor([1.0, float("nan")]))
    for kw in (dict(strategy="nope"), dict(temperature=0.0), dict(delta=-1.0)):
        with pytest.raises(ValueError):
            loss_sample_weights(torch.tensor([1.0, 2.0]), **kw)


def test_loss_weighter_burn_in_and_state(tmp_path):
    lw = LossSampleWeighter(strategy="linupper", temperature=0.4, burn_in_steps=2)
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert lw.weights(losses).tolist() == pytest.approx([1 / 3] * 3)  # step 0: uniform
    lw.num_steps = 1  # completed optimizer steps (set by the loss_reweighting strategy from the trainer's count)
    assert lw.in_burn_in and lw.weights(losses).tolist() == pytest.approx([1 / 3] * 3)  # step 1
    lw.num_steps = 2
    assert not lw.in_burn_in  # step 2 == burn_in_steps: reweighted
    assert lw.weights(losses).tolist() == pytest.approx(loss_sample_weights(losses).tolist())
    state = json.loads(json.dumps(lw.state_dict()))
    torch.save(lw.state_dict(), tmp_path / "s.pt")
    for st_ in (state, torch.load(tmp_path / "s.pt")):
        other = LossSampleWeighter(burn_in_steps=2)
        other.load_state_dict(st_)
        assert other.num_steps == 2 and torch.equal(other.weights(losses), lw.weights(losses))
    assert LossSampleWeighter(burn_in_steps=0).weights(losses).tolist() == pytest.approx(
        loss_sample_weights(losses).tolist()
    )
    assert LossSampleWeighter().weights(torch.empty(0)).shape == (0,)
    with pytest.raises(ValueError, match="losses"):
        LossSampleWeighter().weights(torch.tensor([float("inf")]))
    with pytest.raises(ValueError):
        LossSampleWeighter(burn_in_steps=-1)
    assert isinstance(registered("sequence")["loss_reweighting"]().weighter, LossSampleWeighter)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=24),
    st.sampled_from(["linupper", "quadratic", "extremes", "upper"]),
    st.floats(min_value=1e-3, max_value=10.0),
)
def test_loss_weights_property_simplex(losses, strategy, temperature):
    for dtype in (torch.float64, torch.float32):
        t = torch.tensor(losses, dtype=torch.float64)
        if dtype is torch.float32:
            t = t.clamp(-3e38, 3e38)
        w = loss_sample_weights(t.to(dtype), strategy=strategy, temperature=temperature)
        assert torch.isfinite(w).all() and (w >= 0).all()
        assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
