"""Hand-computed and property tests for posttrain.weighting.pairs (MADPO, beta-DPO)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.weighting.pairs import BetaDPO, BetaDPOStrategy, MADPOStrategy, madpo_coefficient, madpo_weights
from posttrain.weighting.protocol import registered, strategy_class


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------------------- MADPO
def test_madpo_coefficient_is_one_at_tau_exactly():
    assert madpo_coefficient(torch.tensor([2.0], dtype=torch.float64)).item() == 1.0  # defaults: tau=2
    c = madpo_coefficient(torch.tensor([6.907]), c_max=3.0, c_min=0.25, lam=0.7, tau=6.907)
    assert c.item() == pytest.approx(1.0, abs=1e-6)


def test_madpo_coefficient_limits_and_monotone():
    m = torch.tensor([0.0, 1.0, 2.0, 5.0, 50.0, 1e4], dtype=torch.float64)
    c = madpo_coefficient(m)
    assert c[-1].item() == pytest.approx(0.5, abs=1e-12)  # -> c_min
    assert c[-2].item() == pytest.approx(0.5, abs=1e-12)
    # c(0) = 0.5 + 1.5/(1 + 2*e^{-2}) < c_max
    assert c[0].item() == pytest.approx(0.5 + 1.5 / (1 + 2 * math.exp(-2.0)), rel=1e-12)
    assert c[0].item() < 2.0
    assert torch.all(c[1:] <= c[:-1])


def test_madpo_hand_value():
    # h = 1, defaults (c_max=2, c_min=0.5, lam=1, tau=2):
    #   k = (2-1)/(1-0.5) = 2;  c(1) = 0.5 + 1.5/(1 + 2*exp(1-2)) = 0.5 + 1.5/1.735759 = 1.3641753
    #   w = sigmoid(1.3641753)/sigmoid(1) = 0.7964375/0.7310586 = 1.0894304
    w = madpo_weights(torch.tensor([1.0], dtype=torch.float64))
    assert w.item() == pytest.approx(1.0894304274768822, rel=1e-12)
    c = 0.5 + 1.5 / (1 + 2 * math.exp(-1.0))
    assert w.item() == pytest.approx(_sig(c) / _sig(1.0), rel=1e-12)


def test_madpo_regimes():
    w = madpo_weights(torch.tensor([0.0, 0.3, 1.0, 10.0, 100.0, -1.0]))
    assert w[0].item() == pytest.approx(1.0)  # h = 0: sigmoid(0)/sigmoid(0)
    assert w[1] > 1 and w[2] > 1  # hard positive pairs up-weighted
    assert w[3] < 1 and w[4] <= 1  # easy pairs down-weighted
    assert w[5] < 1  # mildly negative margin: c > 1 -> sigmoid(c*h) < sigmoid(h)


def test_madpo_cap_and_continuity_at_minus_tau():
    tau = 2.0
    eps = 1e-7
    h = torch.tensor([-tau - 1.0, -tau - eps, -tau, -tau + eps, -1e4], dtype=torch.float64)
    w = madpo_weights(h, tau=tau)
    assert w[0].item() == 1.0 and w[1].item() == 1.0 and w[2].item() == 1.0 and w[4].item() == 1.0
    assert w[3].item() == pytest.approx(1.0, abs=1e-6)  # from the right: c(tau) = 1 -> ratio 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(c_min=1.0), dict(c_max=1.0), dict(c_min=1.5, c_max=2.0), dict(c_max=0.9), dict(lam=0.0), dict(tau=0.0),
     dict(tau=-1.0), dict(c_max=float("inf"))],
)
def test_madpo_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        madpo_weights(torch.tensor([1.0]), **kwargs)


def test_madpo_nonfinite_raises_and_names_argument():
    with pytest.raises(ValueError, match="margins"):
        madpo_weights(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="margins"):
        madpo_weights(torch.tensor([float("inf")]))


def test_madpo_shapes_dtypes_detached():
    assert madpo_weights(torch.empty(0)).shape == (0,)
    h = torch.tensor([0.5, -0.5], requires_grad=True)
    w = madpo_weights(h)
    assert not w.requires_grad and w.dtype == torch.float32
    assert madpo_weights([1, 2]).dtype == torch.float32  # integer lists accepted
    assert madpo_weights(torch.zeros(2, 3)).shape == (2, 3)


def test_madpo_registry():
    assert registered("pair")["madpo"] is MADPOStrategy and registered("pair")["beta_dpo"] is BetaDPOStrategy
    assert strategy_class("pair", "posttrain.weighting.pairs:MADPOStrategy") is MADPOStrategy
    assert "2510.05342" in MADPOStrategy.cite and "2407.08639" in BetaDPOStrategy.cite


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=16))
def test_madpo_property_positive_finite(margins):
    for dtype in (torch.float32, torch.float64):
        w = madpo_weights(torch.tensor(margins, dtype=dtype))
        assert torch.isfinite(w).all()
        assert (w > 0).all()
        assert (w <= 2.0 + 1e-6).all()  # w <= 1/sigmoid(h) <= 2 for h > 0, w <= 1 otherwise


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_madpo_property_any_finite_margin(h):
    w = madpo_weights(torch.tensor([h], dtype=torch.float64), tau=6.907)
    assert torch.isfinite(w).all() and (w >= 0).all()


# -------------------------------------------------------------------------------------------------------------- beta-DPO
def test_beta_dpo_ema_two_updates_by_hand():
    b = BetaDPO()  # gamma = 0.9, init 0
    b.update(torch.tensor([1.0, 2.0, 3.0]))
    # mean 2, unbiased std 1 -> M0 = 0.1*2 = 0.2, sigma = 0.1*1 = 0.1
    assert b.gap_mean == pytest.approx(0.2)
    assert b.gap_std == pytest.approx(0.1)
    b.update(torch.tensor([0.0, 4.0]))
    # mean 2, unbiased std sqrt((4+4)/1) = sqrt(8)
    # M0 = 0.9*0.2 + 0.1*2 = 0.38 ; sigma = 0.9*0.1 + 0.1*sqrt(8) = 0.3728427
    assert b.gap_mean == pytest.approx(0.38)
    assert b.gap_std == pytest.approx(0.09 + 0.1 * math.sqrt(8.0))
    assert b.num_updates == 2


def test_beta_dpo_beta_by_hand():
    b = BetaDPO(beta0=0.1, alpha=0.6)
    b.load_state_dict({"gap_mean": 0.38, "gap_std": 0.5, "num_updates": 2})
    gaps = torch.tensor([0.0, 4.0])
    # kept {0}: 0.1*(1 + 0.6*(0 - 0.38)) = 0.1*0.772 = 0.0772
    assert float(b.beta(gaps, torch.tensor([True, False]))) == pytest.approx(0.0772)
    # all kept: mean 2 -> 0.1*(1 + 0.6*1.62) = 0.1972
    assert float(b.beta(gaps)) == pytest.approx(0.1972)
    assert float(b.beta(gaps, torch.tensor([1, 1]))) == pytest.approx(0.1972)
    # clamp >= 1e-3: 0.1*(1 + 10*(-10 - 0.38)) < 0
    b2 = BetaDPO(alpha=10.0)
    b2.load_state_dict({"gap_mean": 0.38, "gap_std": 0.5, "num_updates": 2})
    assert float(b2.beta(torch.tensor([-10.0]))) == pytest.approx(1e-3)
    # no kept pair -> beta0
    assert float(b.beta(gaps, torch.tensor([False, False]))) == pytest.approx(0.1)
    assert float(b.beta(torch.empty(0))) == pytest.approx(0.1)
    out = b.beta(gaps)
    assert out.dim() == 0 and not out.requires_grad


def test_beta_dpo_filter_seeded_deterministic():
    gaps = torch.linspace(-2.0, 2.0, 10)
    b = BetaDPO(rho=0.2)
    b.update(gaps)
    masks = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(1234)
        masks.append(b.keep_mask(gaps, generator=gen))
    assert torch.equal(masks[0], masks[1])
    assert masks[0].dtype == torch.bool and masks[0].shape == (10,)
    assert int(masks[0].sum()) == 8  # int(10*(1-0.2))
    for seed in range(30):  # without replacement: always exactly n_keep distinct indices
        m = b.keep_mask(gaps, generator=torch.Generator().manual_seed(seed))
        assert int(m.sum()) == 8
    assert b.n_keep(5) == 4 and BetaDPO(rho=0.5).n_keep(5) == 2  # int(2.5)
    assert BetaDPO(rho=0.5).n_keep(1) == 1  # int(0.5) = 0 -> at least 1
    assert BetaDPO(rho=0.5).keep_mask(torch.tensor([3.0])).tolist() == [True]
    assert b.keep_mask(torch.empty(0)).shape == (0,)


def test_beta_dpo_filter_drops_outliers_and_underflow_guard():
    b = BetaDPO(rho=0.3)
    b.load_state_dict({"gap_mean": 0.0, "gap_std": 1.0, "num_updates": 1})
    # 7 gaps near M0, 3 far outliers whose Gaussian weight underflows to 0 in float64 (z = 50, 60, 70).
    gaps = torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 50.0, 60.0, 70.0])
    m = b.keep_mask(gaps, generator=torch.Generator().manual_seed(0))
    assert int(m.sum()) == 7 and m[:7].all() and not m[7:].any()
    # keeping 9 needs 2 of the 3 "zero-probability" outliers: the official code's multinomial would raise here
    b9 = BetaDPO(rho=0.1)
    b9.load_state_dict(b.state_dict())
    m9 = b9.keep_mask(gaps, generator=torch.Generator().manual_seed(0))
    assert int(m9.sum()) == 9 and m9[:7].all()


def test_beta_dpo_zero_spread_guard():
    b = BetaDPO()
    gaps = torch.full((6,), 0.5)
    b.update(gaps)  # std 0 -> sigma stays 0
    assert b.gap_std == 0.0
    keep, beta = b.step(gaps, generator=torch.Generator().manual_seed(0))
    assert int(keep.sum()) == 4  # int(6*0.8)
    assert math.isfinite(float(beta)) and float(beta) > 0
    # all-zero gaps at step 1 (policy == reference): M0 = 0, sigma = 0
    b0 = BetaDPO()
    keep0, beta0 = b0.step(torch.zeros(8), generator=torch.Generator().manual_seed(0))
    assert int(keep0.sum()) == 6 and float(beta0) == pytest.approx(0.1)


def test_beta_dpo_rho_zero_keeps_all():
    b = BetaDPO(rho=0.0)
    gaps = torch.randn(7, generator=torch.Generator().manual_seed(0))
    b.update(gaps)
    assert b.keep_mask(gaps).all()


def test_beta_dpo_single_element_keeps_sigma():
    b = BetaDPO()
    b.update(torch.tensor([1.0, 3.0]))  # M0 = 0.2, sigma = 0.1*sqrt(2)
    s = b.gap_std
    b.update(torch.tensor([5.0]))
    assert b.gap_std == s
    assert b.gap_mean == pytest.approx(0.9 * 0.2 + 0.1 * 5.0)
    b.update(torch.empty(0))  # no-op
    assert b.gap_mean == pytest.approx(0.68) and b.num_updates == 2


def test_beta_dpo_state_round_trip_json_and_torch(tmp_path):
    b = BetaDPO()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        b.update(torch.randn(16, generator=g))
    state = json.loads(json.dumps(b.state_dict()))
    torch.save(b.state_dict(), tmp_path / "s.pt")
    state_pt = torch.load(tmp_path / "s.pt")
    for st_ in (state, state_pt):
        c = BetaDPO()
        c.load_state_dict(st_)
        assert c.state_dict() == b.state_dict()
        gaps = torch.randn(12, generator=torch.Generator().manual_seed(9))
        m_b = b.keep_mask(gaps, generator=torch.Generator().manual_seed(5))
        m_c = c.keep_mask(gaps, generator=torch.Generator().manual_seed(5))
        assert torch.equal(m_b, m_c)
        assert float(b.beta(gaps, m_b)) == float(c.beta(gaps, m_c))
    with pytest.raises(ValueError):
        BetaDPO().load_state_dict({"gap_mean": 0.0})


def test_beta_dpo_validation_and_nonfinite():
    for kw in (dict(beta0=0.0), dict(rho=1.0), dict(rho=-0.1), dict(gamma=1.5), dict(min_std=0.0)):
        with pytest.raises(ValueError):
            BetaDPO(**kw)
    b = BetaDPO()
    for fn in (b.update, b.keep_mask, b.beta):
        with pytest.raises(ValueError, match="gaps"):
            fn(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="gaps"):
        b.update(torch.zeros(2, 2))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=20),
    st.floats(min_value=0.0, max_value=0.9),
)
def test_beta_dpo_property_finite(gaps, rho):
    b = BetaDPO(rho=rho)
    t = torch.tensor(gaps, dtype=torch.float64)
    keep, beta = b.step(t, generator=torch.Generator().manual_seed(0))
    assert int(keep.sum()) == b.n_keep(len(gaps)) >= 1
    assert math.isfinite(float(beta)) and float(beta) >= 1e-3
    assert math.isfinite(b.gap_mean) and math.isfinite(b.gap_std) and b.gap_std >= 0
