"""dpo_loss / rpo_nll_term: hand-computed cases, edge cases, properties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.losses import DPO_LOSS_TYPES, dpo_loss, rpo_nll_term

F64 = torch.float64


def _pair():
    """One pair: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1, Delta = 2; beta = 0.5 -> beta*Delta = 1."""
    t = lambda v: torch.tensor([v], dtype=F64)  # noqa: E731
    return t(-1.0), t(-3.0), t(-2.0), t(-2.0)


SOFTPLUS_M1 = math.log1p(math.exp(-1.0))  # -log sigma(1)  = 0.31326...
SOFTPLUS_P1 = math.log1p(math.e)  # -log sigma(-1) = 1.31326...


@pytest.mark.parametrize(
    "loss_type,eps,expected",
    [
        ("sigmoid", 0.0, SOFTPLUS_M1),
        ("sigmoid", 0.1, 0.9 * SOFTPLUS_M1 + 0.1 * SOFTPLUS_P1),  # cDPO
        ("hinge", 0.0, 0.0),  # relu(1 - 1)
        ("ipo", 0.0, (2.0 - 1 / (2 * 0.5)) ** 2),  # (Delta - 1/(2 beta))^2 = 1
        ("robust", 0.0, SOFTPLUS_M1),
        ("robust", 0.1, (0.9 * SOFTPLUS_M1 - 0.1 * SOFTPLUS_P1) / 0.8),
    ],
)
def test_hand_computed(loss_type, eps, expected):
    losses, cr, rr = dpo_loss(*_pair(), beta=0.5, loss_type=loss_type, label_smoothing=eps)
    assert losses.shape == (1,)
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    assert cr.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)  # beta * log-ratios


def test_gradient_of_sigmoid_loss():
    pc, pr, rc, rr = _pair()
    pc.requires_grad_(), pr.requires_grad_()
    losses, cr, _ = dpo_loss(pc, pr, rc, rr, beta=0.5)
    losses.sum().backward()
    # d/dpc -log sigma(beta Delta) = -beta (1 - sigma(beta Delta)) = -0.5 sigma(-1)
    s = 1 / (1 + math.e)
    assert pc.grad.item() == pytest.approx(-0.5 * s) and pr.grad.item() == pytest.approx(0.5 * s)
    assert not cr.requires_grad


def test_weights_multiply_per_pair_losses():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(4, dtype=F64) for _ in range(4))
    w = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64)
    for lt in DPO_LOSS_TYPES:
        base, _, _ = dpo_loss(pc, pr, rc, rr, loss_type=lt)
        weighted, _, _ = dpo_loss(pc, pr, rc, rr, loss_type=lt, weights=w)
        torch.testing.assert_close(weighted, base * w)


def test_equal_logps_give_log2():
    z = torch.zeros(3)
    losses, cr, rr = dpo_loss(z, z, z, z)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))
    assert torch.equal(cr, z) and torch.equal(rr, z)


def test_reference_is_constant():
    pc, pr, rc, rr = _pair()
    rc.requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, rc, rr)
    assert not losses.requires_grad


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"loss_type": "kto"}, "unknown loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "only defined"),
        ({"weights": torch.ones(2, dtype=F64)}, "1-D"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(*_pair(), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["policy_chosen_logps", "ref_rejected_logps", "weights"])
def test_non_finite_input_is_an_error(bad, which):
    names = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    args = dict(zip(names, _pair()))
    weights = torch.ones(1, dtype=F64)
    target = weights if which == "weights" else args[which]
    target[0] = bad
    with pytest.raises(ValueError, match=f"non-finite values in: {which}$"):
        dpo_loss(*args.values(), weights=weights)


def test_rpo_nll_term_hand_computed():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    nll = rpo_nll_term(logps, mask)
    assert nll.item() == pytest.approx(7 / 3)  # -(-1 - 2 - 4) / 3
    nll.backward()
    assert torch.isfinite(logps.grad).all()
    empty = rpo_nll_term(logps, torch.zeros(2, 3))
    assert empty.item() == 0.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 5), beta=st.floats(0.01, 5.0),
       loss_type=st.sampled_from(DPO_LOSS_TYPES))
def test_finite_and_unit_weights(seed, B, beta, loss_type):
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-50 * torch.rand(B, generator=g, dtype=F64) for _ in range(4))
    a, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)
    b, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, weights=torch.ones(B, dtype=F64))
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert (a >= 0).all() or loss_type == "robust"  # rDPO's de-biased loss may dip below 0 only with eps > 0
