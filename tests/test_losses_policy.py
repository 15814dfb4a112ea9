"""policy_loss / kl_divergence: hand-computed cases, edge cases, properties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.losses import AGGREGATIONS, kl_divergence, policy_loss

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
