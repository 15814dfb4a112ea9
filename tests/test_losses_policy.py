"""policy_loss / kl_divergence: hand-computed cases, edge cases, properties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.losses import (
    AGGREGATIONS,
    AdaptiveEntropyCoef,
    entropy_bonus,
    kl_divergence,
    policy_loss,
    trl_scaled_loss,
    vllm_importance_sampling_ratio,
)

F64 = torch.float64


def _case():
    """B=2, T=3. Ratios r = exp(logp - old) are written out; old_logps = 0.

    row 0, A = +1:  r = 1.0, 1.5, 0.5  -> per-token -min(rA, clip(r)A) = -1.0, -1.2 (clipped high), -0.5
    row 1, A = -2:  r = 0.9, 1.1, (2.0 masked) -> 1.8, 2.2
    valid sum = -1 - 1.2 - 0.5 + 1.8 + 2.2 = 1.3 over 5 tokens.
    """
    r = torch.tensor([[1.0, 1.5, 0.5], [0.9, 1.1, 2.0]], dtype=F64)
    logps = r.log().requires_grad_()
    old = torch.zeros(2, 3, dtype=F64)
    adv = torch.tensor([1.0, -2.0], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return logps, old, adv, mask


@pytest.mark.parametrize(
    "aggregation,max_len,expected",
    [
        ("token_mean", None, 1.3 / 5),
        ("seq_mean_token_mean", None, ((-2.7 / 3) + (4.0 / 2)) / 2),  # 0.55
        ("seq_mean_token_sum", None, (-2.7 + 4.0) / 2),  # 0.65
        ("dr_grpo", 4, 1.3 / (2 * 4)),  # 0.1625
        ("dr_grpo", None, 1.3 / (2 * 3)),  # max_len defaults to T
    ],
)
def test_hand_computed_aggregations(aggregation, max_len, expected):
    logps, old, adv, mask = _case()
    loss, metrics = policy_loss(logps, old, adv, mask, aggregation=aggregation, max_len=max_len)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 5)  # token (0, 1): r = 1.5 > 1.2 with A > 0
    assert metrics["clip_frac_low"].item() == 0.0  # r = 0.5 has A > 0: not a clipped region
    assert metrics["clip_frac"].item() == pytest.approx(1 / 5)
    assert metrics["ratio_mean"].item() == pytest.approx((1 + 1.5 + 0.5 + 0.9 + 1.1) / 5)
    assert metrics["num_tokens"].item() == 5
    assert "kl" not in metrics


def test_hand_computed_gradient_token_mean():
    logps, old, adv, mask = _case()
    loss, _ = policy_loss(logps, old, adv, mask)
    loss.backward()
    # d/dlogp of -A r is -A r where the unclipped branch is active, 0 where clipped; / 5 tokens.
    expected = torch.tensor([[-1.0, 0.0, -0.5], [1.8, 2.2, 0.0]], dtype=F64) / 5
    torch.testing.assert_close(logps.grad, expected, rtol=0, atol=1e-12)


def test_token_weights_hand_computed():
    logps, old, adv, mask = _case()
    w = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 7.0]], dtype=F64)  # 7.0 sits on a masked token
    # weighted per-token: -1, 0, -1, 0.9, 2.2 -> 1.1
    loss, m = policy_loss(logps, old, adv, mask, token_weights=w)
    assert loss.item() == pytest.approx(1.1 / 5)
    loss_w, _ = policy_loss(logps, old, adv, mask, token_weights=w, normalize="weights")
    assert loss_w.item() == pytest.approx(1.1 / 4.5)  # sum w*m = 1 + 0 + 2 + 0.5 + 1
    assert m["weighted_token_frac"].item() == pytest.approx(4 / 5)
    assert m["token_weight_mean"].item() == pytest.approx(4.5 / 5)
    # per-sequence weight normalisation: row 0: (-1 + 0 - 1) / 3 ; row 1: (0.9 + 2.2) / 1.5
    loss_s, _ = policy_loss(logps, old, adv, mask, token_weights=w, normalize="weights",
                            aggregation="seq_mean_token_mean")
    assert loss_s.item() == pytest.approx(((-2.0 / 3) + (3.1 / 1.5)) / 2)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_normalize_weights_without_weights_is_count(aggregation):
    logps, old, adv, mask = _case()
    a, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation)
    b, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, normalize="weights")
    assert a.item() == b.item()


def test_weights_do_not_touch_kl_or_extra_term():
    logps, old, adv, mask = _case()
    ref = torch.zeros(2, 3, dtype=F64)
    zero_w = torch.zeros(2, 3, dtype=F64)
    extra = torch.full((2, 3), 0.5, dtype=F64)
    loss, m = policy_loss(logps, old, adv, mask, token_weights=zero_w, ref_logps=ref, kl_coef=0.1,
                          extra_token_loss=extra)
    kl = kl_divergence(logps.detach(), ref)
    expected = (0.1 * kl[mask].sum() + 0.5 * 5) / 5
    assert loss.item() == pytest.approx(expected.item())
    assert m["kl"].item() == pytest.approx(kl[mask].mean().item())
    assert m["weighted_token_frac"].item() == 0.0


def test_kl_estimators_hand_computed():
    logps = torch.zeros(1, 1, dtype=F64)
    ref = torch.full((1, 1), math.log(2.0), dtype=F64)  # log(pi_ref / pi) = ln 2
    assert kl_divergence(logps, ref, "k1").item() == pytest.approx(-math.log(2))
    assert kl_divergence(logps, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_divergence(logps, ref, "k3").item() == pytest.approx(1 - math.log(2))  # 2 - ln 2 - 1
    assert kl_divergence(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_divergence(logps, ref, "k4")


def test_kl_term_adds_beta_k3():
    logps, old, adv, mask = _case()
    ref = torch.full((2, 3), -0.3, dtype=F64)
    base, _ = policy_loss(logps, old, adv, mask)
    with_kl, m = policy_loss(logps, old, adv, mask, ref_logps=ref, kl_coef=0.04)
    lr = -0.3 - logps.detach()
    k3 = (lr.exp() - lr - 1)[mask]
    assert (with_kl - base).item() == pytest.approx(0.04 * k3.sum().item() / 5)
    assert m["kl"].item() == pytest.approx(k3.mean().item())


def test_gspo_sequence_ratio_hand_computed():
    # log r = [ln 2, 0] -> s = exp(ln2 / 2) = sqrt(2)
    logps = torch.tensor([[math.log(2.0), 0.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 2, dtype=F64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, m = policy_loss(logps, old, torch.tensor([1.0], dtype=F64), mask, importance_level="sequence")
    assert loss.item() == pytest.approx(-1.2)  # clipped at 1 + 0.2
    assert m["ratio_mean"].item() == pytest.approx(math.sqrt(2))
    loss, _ = policy_loss(logps, old, torch.tensor([-1.0], dtype=F64), mask, importance_level="sequence")
    assert loss.item() == pytest.approx(math.sqrt(2))  # A < 0: min picks -s
    loss.backward()
    # each token gets d(-A s)/dlogp_t with the stop-gradient trick = s, / 2 tokens
    torch.testing.assert_close(logps.grad, torch.full((1, 2), math.sqrt(2) / 2, dtype=F64))


def test_gspo_single_token_equals_token_level():
    torch.manual_seed(0)
    logps = torch.randn(4, 1, dtype=F64)
    old = logps + 0.3 * torch.randn(4, 1, dtype=F64)
    adv, mask = torch.randn(4, dtype=F64), torch.ones(4, 1)
    a, _ = policy_loss(logps, old, adv, mask, importance_level="sequence")
    b, _ = policy_loss(logps, old, adv, mask, importance_level="token")
    assert a.item() == pytest.approx(b.item())


def test_clipping_disabled_gives_plain_surrogate():
    logps, old, adv, mask = _case()
    for lo, hi in [(None, None), (math.inf, math.inf)]:
        loss, m = policy_loss(logps, old, adv, mask, clip_low=lo, clip_high=hi)
        r = logps.detach().exp()
        expected = (-(adv.unsqueeze(1) * r))[mask].mean()
        assert loss.item() == pytest.approx(expected.item())
        assert m["clip_frac"].item() == 0.0


def test_delta_caps_the_unclipped_branch():
    logps = torch.tensor([[math.log(3.0)]], dtype=F64)
    old, mask, adv = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1), torch.tensor([-1.0], dtype=F64)
    assert policy_loss(logps, old, adv, mask)[0].item() == pytest.approx(3.0)  # -min(-3, -1.2)
    assert policy_loss(logps, old, adv, mask, delta=2.0)[0].item() == pytest.approx(2.0)  # -min(-2, -1.2)


def test_asymmetric_clip_low():
    logps = torch.tensor([[math.log(0.5)]], dtype=F64)
    old, mask = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1)
    loss, m = policy_loss(logps, old, torch.tensor([-1.0], dtype=F64), mask, clip_low=0.1, clip_high=0.3)
    assert loss.item() == pytest.approx(0.9)  # -min(-0.5, -0.9)
    assert m["clip_frac_low"].item() == 1.0


def test_old_logps_none_is_on_policy():
    logps, _, adv, mask = _case()
    loss, m = policy_loss(logps, None, adv, mask)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx((-(1 + 1 + 1) + 2 + 2) / 5)  # -A per token


def test_token_level_advantages_equal_broadcast():
    logps, old, adv, mask = _case()
    a, _ = policy_loss(logps, old, adv, mask, aggregation="seq_mean_token_mean")
    b, _ = policy_loss(logps, old, adv.unsqueeze(1).expand(2, 3).clone(), mask, aggregation="seq_mean_token_mean")
    assert a.item() == pytest.approx(b.item())


def test_extra_token_loss_is_masked():
    logps, old, adv, mask = _case()
    extra = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1e6]], dtype=F64)  # only on the masked token
    a, _ = policy_loss(logps, old, adv, mask)
    b, _ = policy_loss(logps, old, adv, mask, extra_token_loss=extra)
    assert a.item() == b.item()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_empty_mask_is_zero_and_backward_works(aggregation):
    logps = torch.randn(2, 3, requires_grad=True)
    loss, m = policy_loss(logps, logps.detach() + 0.1, torch.ones(2), torch.zeros(2, 3), aggregation=aggregation,
                          ref_logps=torch.zeros(2, 3), kl_coef=0.1, token_weights=torch.ones(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros(2, 3))
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in m.values())


def test_infinite_logps_in_padding_do_not_leak_nan():
    logps = torch.tensor([[-0.5, -float("inf")]], requires_grad=True)
    old = torch.tensor([[-0.4, -float("inf")]])
    ref = torch.tensor([[-0.6, float("nan")]])
    loss, m = policy_loss(logps, old, torch.tensor([1.0]), torch.tensor([[1, 0]]), ref_logps=ref, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert all(torch.isfinite(v) for v in m.values())


def test_zero_advantages_give_zero_policy_loss_and_gradient():
    logps = torch.randn(3, 4, dtype=F64, requires_grad=True)
    loss, _ = policy_loss(logps, logps.detach() * 0.9, torch.zeros(3), torch.ones(3, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logps.grad) == 0


def test_all_equal_values_and_single_token():
    loss, m = policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1))
    assert loss.item() == -1.0 and m["ratio_mean"].item() == 1.0 and m["clip_frac"].item() == 0.0


def test_metrics_are_detached_0d_tensors():
    logps, old, adv, mask = _case()
    _, m = policy_loss(logps, old, adv, mask, ref_logps=old)
    assert set(m) == {"clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "kl", "weighted_token_frac",
                      "token_weight_mean", "num_tokens"}
    for v in m.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"aggregation": "mean"}, "unknown aggregation"),
        ({"kl_estimator": "k9"}, "unknown kl_estimator"),
        ({"importance_level": "seq"}, "unknown importance_level"),
        ({"normalize": "sum"}, "unknown normalize"),
        ({"normalize": "weights", "aggregation": "dr_grpo"}, "normalize='weights'"),
        ({"kl_coef": 0.1}, "needs ref_logps"),
        ({"kl_coef": -1.0, "ref_logps": torch.zeros(2, 3)}, "kl_coef"),
        ({"clip_low": -0.1}, "clip_low"),
        ({"max_len": 0}, "max_len"),
        ({"delta": 0.0}, "delta"),
        ({"token_weights": torch.ones(2, 4)}, "shape mismatch: token_weights"),
        ({"ref_logps": torch.ones(3, 3)}, "shape mismatch: ref_logps"),
    ],
)
def test_validation_errors(kwargs, match):
    logps, old, adv, mask = _case()
    with pytest.raises(ValueError, match=match):
        policy_loss(logps, old, adv, mask, **kwargs)


def test_shape_and_finiteness_errors():
    logps, old, adv, mask = _case()
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(logps, old, torch.ones(3), mask)
    with pytest.raises(ValueError, match="logps must be"):
        policy_loss(logps[0], old[0], adv, mask[0])
    with pytest.raises(ValueError, match="shape mismatch: mask"):
        policy_loss(logps, old, adv, mask[:, :2])
    bad = old.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values at valid positions in: old_logps"):
        policy_loss(logps, bad, adv, mask)


# ---------------------------------------------------------------- properties
_shapes = st.tuples(st.integers(1, 4), st.integers(1, 6))


def _random_inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = shape
    logps = (-3 * torch.rand(B, T, generator=g, dtype=F64)).requires_grad_()
    old = logps.detach() + 0.5 * torch.randn(B, T, generator=g, dtype=F64)
    adv = torch.randn(B, generator=g, dtype=F64)
    mask = torch.rand(B, T, generator=g) < 0.7
    return logps, old, adv, mask


@settings(max_examples=40, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 10_000), aggregation=st.sampled_from(AGGREGATIONS),
       level=st.sampled_from(["token", "sequence"]))
def test_unit_weights_equal_unweighted(shape, seed, aggregation, level):
    logps, old, adv, mask = _random_inputs(shape, seed)
    a, ma = policy_loss(logps, old, adv, mask, aggregation=aggregation, importance_level=level)
    b, mb = policy_loss(logps, old, adv, mask, aggregation=aggregation, importance_level=level,
                        token_weights=torch.ones(shape, dtype=F64))
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), abs=1e-12)
    assert ma["clip_frac"].item() == mb["clip_frac"].item()
    if aggregation in ("token_mean", "seq_mean_token_mean"):
        c, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, importance_level=level,
                           token_weights=torch.ones(shape, dtype=F64), normalize="weights")
        assert a.item() == pytest.approx(c.item(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0),
       aggregation=st.sampled_from(["token_mean", "seq_mean_token_mean"]))
def test_constant_weights_scale_or_cancel(shape, seed, scale, aggregation):
    logps, old, adv, mask = _random_inputs(shape, seed)
    base, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation)
    w = torch.full(shape, scale, dtype=F64)
    scaled, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, token_weights=w)
    normed, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, token_weights=w, normalize="weights")
    assert scaled.item() == pytest.approx(scale * base.item(), abs=1e-10)
    assert normed.item() == pytest.approx(base.item(), abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 10_000), aggregation=st.sampled_from(AGGREGATIONS),
       kl=st.sampled_from(["k1", "k2", "k3"]))
def test_loss_and_gradient_finite(shape, seed, aggregation, kl):
    logps, old, adv, mask = _random_inputs(shape, seed)
    ref = old - 0.2
    loss, m = policy_loss(logps, old, adv, mask, aggregation=aggregation, ref_logps=ref, kl_coef=0.1,
                          kl_estimator=kl, clip_low=0.2, clip_high=0.28)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert torch.count_nonzero(logps.grad[~mask]) == 0  # ignored tokens get no gradient
    assert 0.0 <= m["clip_frac"].item() <= 1.0


def test_kl_bias_correction_hand_computed():
    # old = 0, logp = ln 1.5 (r = 1.5), ref = 0: k3 = 1/1.5 + ln 1.5 - 1 = 0.0721318...; corrected: * r = 1.5
    logps = torch.tensor([[math.log(1.5)]], dtype=F64)
    zeros, adv, mask = torch.zeros(1, 1, dtype=F64), torch.zeros(1, dtype=F64), torch.ones(1, 1)
    k3 = 1 / 1.5 + math.log(1.5) - 1
    plain, _ = policy_loss(logps, zeros, adv, mask, ref_logps=zeros, kl_coef=0.5)
    corrected, m = policy_loss(logps, zeros, adv, mask, ref_logps=zeros, kl_coef=0.5, kl_bias_correction=True)
    assert plain.item() == pytest.approx(0.5 * k3) and corrected.item() == pytest.approx(0.5 * k3 * 1.5)
    assert m["kl"].item() == pytest.approx(k3)  # metrics report the plain estimator


# ---------------------------------------------------------------- surrogates, off-policy mask, IS ratio, entropy
# All on _case() (r = [[1, 1.5, 0.5], [0.9, 1.1, (2.0 masked)]], A = [+1, -2]) with the non-neutral token weights
# W below (7.0 sits on the masked token); expected numbers written out by hand.
W = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 7.0]], dtype=F64)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_cispo_hand_computed_with_weights():
    logps, old, adv, mask = _case()
    # sg(min(r, 1.2)) = 1, 1.2, 0.5 | 0.9, 1.1 ; l = -c * A * log r * w
    loss, m = policy_loss(logps, old, adv, mask, token_weights=W, surrogate="cispo", clip_low=None,
                          cispo_clip_max=1.2)
    expected = (0.0 + 0.0 + 2 * (-0.5 * math.log(0.5)) + 0.5 * (1.8 * math.log(0.9)) + 1.0 * (2.2 * math.log(1.1))) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    # d/dlogp = -c * A * w: every token keeps a gradient, the clipped one (r = 1.5) with c = 1.2 (times w = 0 here)
    grad = torch.tensor([[-1.0, 0.0, -0.5 * 2], [0.9 * 2 * 0.5, 1.1 * 2 * 1.0, 0.0]], dtype=F64) / 5
    torch.testing.assert_close(logps.grad, grad, rtol=0, atol=1e-12)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 5)  # TRL's cispo_clip_ratio: r > 1.2 with A > 0
    # with the default clip_low=0.2 the paper's lower bound applies: token (0, 2) gets sg(0.8) instead of 0.5
    lower, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, surrogate="cispo", cispo_clip_max=1.2)
    assert lower.item() == pytest.approx(expected + 2 * (-(0.8 - 0.5) * math.log(0.5)) / 5, abs=1e-12)
    # without cispo_clip_max the upper bound is 1 + clip_high
    same, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, surrogate="cispo", clip_low=None)
    assert same.item() == pytest.approx(expected, abs=1e-12)


def test_sapo_hand_computed_with_weights():
    logps, old, adv, mask = _case()
    loss, m = policy_loss(logps, old, adv, mask, token_weights=W, surrogate="sapo", aggregation="seq_mean_token_mean")
    # row 0, A = +1, tau = 1:    l = -4 sigmoid(r - 1)
    row0 = [-4 * _sigmoid(0.0) * 1.0, -4 * _sigmoid(0.5) * 0.0, -4 * _sigmoid(-0.5) * 2.0]
    # row 1, A = -2, tau = 1.05: l = +2 * (4 / 1.05) sigmoid(1.05 (r - 1))
    row1 = [2 * 4 / 1.05 * _sigmoid(1.05 * -0.1) * 0.5, 2 * 4 / 1.05 * _sigmoid(1.05 * 0.1) * 1.0]
    assert loss.item() == pytest.approx((sum(row0) / 3 + sum(row1) / 2) / 2, abs=1e-12)
    loss.backward()

    def g(r, a, tau, w, n):  # d/dlogp of -(4/tau) sigmoid(tau (r - 1)) A = -4 s (1 - s) r A
        s = _sigmoid(tau * (r - 1))
        return -4 * s * (1 - s) * r * a * w / n / 2

    grad = torch.tensor([[g(1.0, 1, 1.0, 1.0, 3), 0.0, g(0.5, 1, 1.0, 2.0, 3)],
                         [g(0.9, -2, 1.05, 0.5, 2), g(1.1, -2, 1.05, 1.0, 2), 0.0]], dtype=F64)
    torch.testing.assert_close(logps.grad, grad, rtol=0, atol=1e-12)
    assert m["clip_frac"].item() == 0.0  # a soft gate never clips


def test_vespo_hand_computed_with_weights_and_is_ratio():
    logps, old, adv, mask = _case()
    # row 0: w = 1 * 1.5 * 0.5 = 0.75, A >= 0 -> (k, lam) = (2, 3): phi = e^3 0.75^2 e^-2.25
    # row 1: w = 0.9 * 1.1 = 0.99,     A < 0  -> (k, lam) = (3, 2): phi = e^2 0.99^3 e^-1.98
    phi0, phi1 = math.exp(3 - 2.25) * 0.75 ** 2, math.exp(2 - 1.98) * 0.99 ** 3
    loss, m = policy_loss(logps, old, adv, mask, token_weights=W, surrogate="vespo")
    # l = -phi * A * log pi * w
    expected = (-phi0 * (0 * 1 + math.log(1.5) * 0 + math.log(0.5) * 2)
                + 2 * phi1 * (math.log(0.9) * 0.5 + math.log(1.1) * 1)) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert m["vespo_phi_mean"].item() == pytest.approx((phi0 + phi1) / 2)
    loss.backward()
    grad = torch.tensor([[-phi0 * 1, 0.0, -phi0 * 2], [2 * phi1 * 0.5, 2 * phi1, 0.0]], dtype=F64) / 5
    torch.testing.assert_close(logps.grad, grad, rtol=0, atol=1e-12)
    # the rollout IS ratio enters phi (not the per-token product): row 0's w becomes 0.75 * 2 = 1.5
    rho = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)  # 0.0 on the masked token is ignored
    with_is, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, surrogate="vespo",
                             importance_sampling_ratio=rho)
    phi0_is = math.exp(3 - 4.5) * 1.5 ** 2
    assert with_is.item() == pytest.approx(expected + (phi0 - phi0_is) * math.log(0.5) * 2 / 5, abs=1e-12)


def test_off_policy_mask_hand_computed_with_weights_and_kl():
    logps, old, adv, mask = _case()
    # row 1 (A = -2): mean(sampling - logp) over its 2 valid tokens = (0.4 + 0.6) / 2 = 0.5 > 0.3 -> dropped;
    # row 0 has the same drift but A >= 0 -> kept
    sampling = logps.detach() + torch.tensor([[0.5, 0.5, 0.5], [0.4, 0.6, float("nan")]], dtype=F64)
    ref = torch.zeros(2, 3, dtype=F64)
    loss, m = policy_loss(logps, old, adv, mask, token_weights=W, ref_logps=ref, kl_coef=0.1,
                          off_policy_mask_threshold=0.3, sampling_logps=sampling)
    kl = kl_divergence(logps.detach(), ref)[mask].sum()
    # weighted policy term of row 0 only: -1 * 1, -1.2 * 0, -0.5 * 2 ; the KL is not masked
    assert loss.item() == pytest.approx((-2.0 + 0.1 * kl.item()) / 5, abs=1e-12)
    assert m["off_policy_masked_frac"].item() == pytest.approx(2 / 5)
    kept, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, off_policy_mask_threshold=0.5,
                          sampling_logps=sampling)  # 0.5 <= 0.5: kept
    assert kept.item() == pytest.approx(1.1 / 5)
    # a NaN at a valid token counts as 0 in the mean (TRL): (0.4 + 0) / 2 = 0.2 <= 0.3 -> kept
    sampling[1, 1] = float("nan")
    nan_kept, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, off_policy_mask_threshold=0.3,
                              sampling_logps=sampling)
    assert nan_kept.item() == pytest.approx(1.1 / 5)


def test_off_policy_mask_falls_back_to_old_logps():
    logps, old, adv, mask = _case()  # old = 0: mean(old - logp) of row 1 = -(ln 0.9 + ln 1.1) / 2 = 0.005
    dropped, _ = policy_loss(logps, old, adv, mask, off_policy_mask_threshold=0.001)
    kept, _ = policy_loss(logps, old, adv, mask, off_policy_mask_threshold=0.01)
    assert dropped.item() == pytest.approx(-2.7 / 5) and kept.item() == pytest.approx(1.3 / 5)


def test_is_ratio_hand_computed_with_weights():
    logps, old, adv, mask = _case()
    # weighted per-token ppo terms: -1, 0, -1 | 0.9, 2.2 ; rho multiplies them, not the KL
    rho = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.5, float("inf")]], dtype=F64)  # inf on the masked token: ignored
    loss, m = policy_loss(logps, old, adv, mask, token_weights=W, importance_sampling_ratio=rho)
    assert loss.item() == pytest.approx((-2.0 + 0 - 1.0 + 0.9 + 1.1) / 5, abs=1e-12)
    assert m["is_ratio_mean"].item() == pytest.approx((2 + 1 + 1 + 1 + 0.5) / 5)
    loss.backward()
    # ppo gradient -A r (0 where clipped) times w * rho
    grad = torch.tensor([[-1.0 * 2, 0.0, -0.5 * 2], [1.8 * 0.5, 2.2 * 0.5, 0.0]], dtype=F64) / 5
    torch.testing.assert_close(logps.grad, grad, rtol=0, atol=1e-12)
    seq_rho = torch.tensor([[2.0], [0.5]], dtype=F64)
    seq, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W, importance_sampling_ratio=seq_rho)
    assert seq.item() == pytest.approx((-2.0 * 2 + 3.1 * 0.5) / 5, abs=1e-12)


def test_entropy_bonus_hand_computed():
    logps, old, adv, mask = _case()
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]], dtype=F64, requires_grad=True)
    base, _ = policy_loss(logps.detach(), old, adv, mask, token_weights=W)
    loss, m = policy_loss(logps.detach(), old, adv, mask, token_weights=W, entropies=ent, entropy_coef=0.1)
    assert (loss - base).item() == pytest.approx(-0.1 * 15 / 5)  # weights do not touch the bonus
    assert m["entropy"].item() == pytest.approx(3.0) and m["entropy_bonus"].item() == pytest.approx(-0.3)
    loss.backward()
    torch.testing.assert_close(ent.grad, -0.1 * mask.to(F64) / 5, rtol=0, atol=1e-12)
    # over an effective mask (TRL's top-entropy mask): tokens 1, 3, 4, 5 -> mean 13 / 4
    emask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    sub, m2 = policy_loss(logps.detach(), old, adv, mask, token_weights=W, entropies=ent.detach(),
                          entropy_coef=0.1, entropy_mask=emask)
    assert (sub - base).item() == pytest.approx(-0.1 * 13 / 4)
    assert entropy_bonus(ent.detach(), mask * emask, 0.1).item() == pytest.approx(-0.1 * 13 / 4)
    # entropies with coef 0 are reported only; the loss is unchanged
    zero, m0 = policy_loss(logps.detach(), old, adv, mask, token_weights=W, entropies=ent.detach())
    assert zero.item() == base.item() and m0["entropy"].item() == pytest.approx(3.0)


def test_trl_scaled_loss_hand_computed_with_entropy_bonus():
    logps, old, adv, mask = _case()
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64, requires_grad=True)
    loss, _ = policy_loss(logps, old, adv, mask, entropies=ent, entropy_coef=0.1)  # 1.3 / 5 - 0.1 * 3
    bonus = entropy_bonus(ent, mask, 0.1)
    kw = dict(local_tokens=torch.tensor(5.0), num_items_in_batch=torch.tensor(20.0), num_processes=1,
              gradient_accumulation_steps=2, steps_per_generation=2, training=True)
    # dapo / cispo / vespo: token sum 1.3 over 20 * 2 / 2 = 20 global tokens; the bonus is only halved
    for lt in ["dapo", "cispo", "vespo"]:
        assert trl_scaled_loss(loss, lt, entropy_bonus=bonus, **kw).item() == pytest.approx(1.3 / 20 - 0.3 / 2)
    for lt in ["grpo", "bnpo", "dr_grpo", "sapo", "luspo"]:
        assert trl_scaled_loss(loss, lt, entropy_bonus=bonus, **kw).item() == pytest.approx((0.26 - 0.3) / 2)
        assert trl_scaled_loss(loss, lt, **kw).item() == pytest.approx((0.26 - 0.3) / 2)
    scaled = trl_scaled_loss(loss, "dapo", entropy_bonus=bonus, **kw)
    scaled.backward()
    torch.testing.assert_close(ent.grad, torch.tensor([[1.0, 1, 1], [1, 1, 0]], dtype=F64) * -0.1 / 5 / 2)
    with pytest.raises(ValueError, match="unknown loss_type"):
        trl_scaled_loss(loss, "ppo", **kw)


def test_sequence_shared_spreads_the_gradient_hand_computed():
    # log r = [ln 2, 0] -> s = sqrt 2 > 1.2; A = -1 -> l_t = s (unclipped branch); w = [1, 3]; token mean over 2
    logps = torch.tensor([[math.log(2.0), 0.0]], dtype=F64)
    old, mask, adv = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2), torch.tensor([-1.0], dtype=F64)
    w = torch.tensor([[1.0, 3.0]], dtype=F64)
    s = math.sqrt(2)
    grads = {}
    for level in ["sequence", "sequence_shared"]:
        x = logps.clone().requires_grad_()
        loss, _ = policy_loss(x, old, adv, mask, token_weights=w, importance_level=level)
        assert loss.item() == pytest.approx((s + 3 * s) / 2)
        loss.backward()
        grads[level] = x.grad
    # GSPO-token: each token its own weight, d/dlogp_t = w_t s / 2
    torch.testing.assert_close(grads["sequence"], torch.tensor([[s / 2, 3 * s / 2]], dtype=F64))
    # shared: ds/dlogp_t = s / 2 for both tokens, times sum_t w_t / 2 = 2
    torch.testing.assert_close(grads["sequence_shared"], torch.tensor([[s, s]], dtype=F64))


def test_vllm_importance_sampling_ratio_hand_computed():
    old = torch.tensor([[math.log(2.0), 0.0, math.log(0.5)], [0.0, 0.0, 0.0]], dtype=F64)
    sampling = torch.tensor([[0.0, 0.0, 0.0], [math.log(4.0), float("nan"), 5.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # token ratios: row 0: 2, 1, 0.5; row 1: 1/4, 1 (NaN -> no correction), 1 (padding)
    tt = vllm_importance_sampling_ratio(old, sampling, mask, mode="token_truncate", clip_max=1.5)
    torch.testing.assert_close(tt, torch.tensor([[1.5, 1.0, 0.5], [0.25, 1.0, 1.0]], dtype=F64))
    tm = vllm_importance_sampling_ratio(old, sampling, mask, mode="token_mask", clip_min=0.4, clip_max=1.5)
    torch.testing.assert_close(tm, torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 1.0]], dtype=F64))
    # sequence ratios: row 0: 2 * 1 * 0.5 = 1; row 1: 1/4
    st_ = vllm_importance_sampling_ratio(old, sampling, mask, mode="sequence_truncate", clip_min=0.5, clip_max=3.0)
    torch.testing.assert_close(st_, torch.tensor([[1.0], [0.5]], dtype=F64))
    sm = vllm_importance_sampling_ratio(old, sampling, mask)  # TRL's defaults: sequence_mask, C_max = 3
    torch.testing.assert_close(sm, torch.tensor([[1.0], [0.25]], dtype=F64))
    with pytest.raises(ValueError, match="unknown importance sampling mode"):
        vllm_importance_sampling_ratio(old, sampling, mask, mode="token")
    with pytest.raises(ValueError, match="needs clip_min or clip_max"):
        vllm_importance_sampling_ratio(old, sampling, mask, mode="token_truncate", clip_max=None)
    with pytest.raises(ValueError, match="must be less than"):
        vllm_importance_sampling_ratio(old, sampling, mask, clip_min=3.0, clip_max=2.0)


def test_adaptive_entropy_coef_rule_gating_and_state():
    ctrl = AdaptiveEntropyCoef(0.01, target=1.0, delta=0.005, coef_min=0.0, coef_max=0.02)
    assert ctrl.applied_coef == 0.0  # no measurement yet (last entropy = inf)
    assert ctrl.update(0.8) == pytest.approx(0.015) and ctrl.applied_coef == pytest.approx(0.015)
    assert ctrl.update(1.0) == pytest.approx(0.02)  # at the target counts as below; capped at coef_max next
    assert ctrl.update(0.1) == pytest.approx(0.02)
    assert ctrl.update(1.5) == pytest.approx(0.015) and ctrl.applied_coef == 0.0  # above target: not applied
    for _ in range(5):
        ctrl.update(2.0)
    assert ctrl.coef == 0.0  # floored at coef_min
    # window: token-weighted mean over micro-batches, optionally reduced over processes
    ctrl.observe(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 0]]))
    ctrl.observe(torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 1]]))  # (1 + 0.5 + 0.5) / 3
    ctrl.end_window()
    assert ctrl.last_world_entropy == pytest.approx(2 / 3) and ctrl.coef == pytest.approx(0.005)
    ctrl.observe(torch.tensor([[3.0]]), torch.tensor([[1]]))
    ctrl.end_window(reduce=lambda t: t + torch.tensor([0.0, 2.0]))  # two more (zero-entropy) tokens elsewhere
    assert ctrl.last_world_entropy == pytest.approx(1.0)
    state = ctrl.state_dict()
    assert state == {"entropy_coef": pytest.approx(0.01), "last_world_entropy": pytest.approx(1.0)}
    other = AdaptiveEntropyCoef(0.3, target=1.0, delta=0.005, coef_min=0.0, coef_max=0.02)  # config is not state
    other.load_state_dict(state)
    assert other.coef == ctrl.coef and other.applied_coef == ctrl.applied_coef
    with pytest.raises(ValueError, match="without any observe"):
        other.end_window()
    with pytest.raises(ValueError, match="coef_min <= coef_max"):
        AdaptiveEntropyCoef(coef_min=1.0, coef_max=0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"surrogate": "ppo"}, "unknown surrogate"),
        ({"surrogate": "cispo", "cispo_clip_max": 0.0}, "cispo_clip_max"),
        ({"surrogate": "sapo", "sapo_temperature_pos": 0.0}, "sapo temperatures"),
        ({"vespo_k_pos": math.inf}, "vespo"),
        ({"entropy_coef": 0.1}, "needs entropies"),
        ({"entropies": torch.ones(2, 2)}, "shape mismatch: entropies"),
        ({"importance_sampling_ratio": torch.ones(2, 2)}, "importance_sampling_ratio must be"),
        ({"importance_sampling_ratio": -torch.ones(2, 3)}, "finite and >= 0"),
        ({"off_policy_mask_threshold": math.nan}, "off_policy_mask_threshold"),
        ({"off_policy_mask_threshold": 0.1, "sampling_logps": torch.full((2, 3), -math.inf)},
         "non-finite values at valid positions in: sampling_logps"),
    ],
)
def test_new_argument_validation_errors(kwargs, match):
    logps, old, adv, mask = _case()
    with pytest.raises(ValueError, match=match):
        policy_loss(logps, old, adv, mask, **kwargs)


@settings(max_examples=30, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 10_000), aggregation=st.sampled_from(AGGREGATIONS),
       surrogate=st.sampled_from(["ppo_clip", "cispo", "sapo", "vespo"]),
       level=st.sampled_from(["token", "sequence", "sequence_shared"]))
def test_new_features_finite_and_neutral(shape, seed, aggregation, surrogate, level):
    """Finite loss and gradient; rho = 1, a threshold that keeps everything and unit weights change nothing."""
    logps, old, adv, mask = _random_inputs(shape, seed)
    a, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, surrogate=surrogate, importance_level=level)
    b, _ = policy_loss(logps, old, adv, mask, aggregation=aggregation, surrogate=surrogate, importance_level=level,
                       token_weights=torch.ones(shape, dtype=F64),
                       importance_sampling_ratio=torch.ones(shape, dtype=F64),
                       off_policy_mask_threshold=1e9, sampling_logps=old - 3.0)
    b.backward()
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), abs=1e-10)
    assert torch.isfinite(logps.grad).all() and torch.count_nonzero(logps.grad[~mask]) == 0
