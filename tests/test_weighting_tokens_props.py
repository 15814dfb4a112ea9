"""Property tests (hypothesis): every token strategy is finite, in its documented range, zero on padding and
detached, for any finite input (including extreme float32 values, all-equal values and empty masks)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.weighting.tokens import (
    TokenBatch,
    clip_cov_mask,
    compose_token_weights,
    entropy_advantage,
    high_entropy_mask,
    kl_cov_mask,
    kl_cov_penalty,
    steer_weights,
    token_weight_stats,
    tw_grpo_weights,
    tw_grpo_weights_chunked,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ANY = st.floats(width=32, allow_nan=False, allow_infinity=False)
SMALL = st.floats(-30, 30, width=32)
NONNEG = st.floats(0, 30, width=32)
LOGP = st.floats(-60, 0, width=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def shapes(draw):
    return draw(st.integers(1, 3)), draw(st.integers(1, 5))


def tensor(draw, elems, B, T, grad=False):
    vals = draw(st.lists(elems, min_size=B * T, max_size=B * T))
    if draw(st.booleans()):  # all-equal values
        vals = [vals[0]] * (B * T)
    x = torch.tensor(vals, dtype=torch.float32).reshape(B, T)
    return x.requires_grad_(True) if grad else x


def mask_of(draw, B, T):
    kind = draw(st.sampled_from(["random", "empty", "full", "one"]))
    if kind == "empty":
        return torch.zeros(B, T)
    if kind == "full":
        return torch.ones(B, T)
    m = torch.tensor(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T)), dtype=torch.float32).reshape(B, T)
    if kind == "one":
        m = torch.zeros(B, T)
        m[draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1))] = 1
    return m


def with_nan_padding(x, m):
    """Garbage (NaN) at padding must never leak into the output."""
    return torch.where(m.bool(), x.detach(), torch.full_like(x.detach(), float("nan"))).requires_grad_(x.requires_grad)


def check_common(w, m, lo, hi):
    assert tuple(w.shape) == tuple(m.shape)
    assert not w.requires_grad
    assert torch.isfinite(w).all()
    assert (w[~m.bool()] == 0).all()
    v = w[m.bool()]
    if v.numel():
        assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6, (v, lo, hi)


@SETTINGS
@given(st.data(), shapes(), st.sampled_from(["linear", "exponential"]), st.booleans(), st.booleans())
def test_steer_props(data, shape, mode, extreme, adv_1d):
    B, T = shape
    a_el, h_el, lp_el = (ANY, ANY, ANY) if extreme else (SMALL, NONNEG, LOGP)
    m = mask_of(data.draw, B, T)
    adv = (torch.tensor(data.draw(st.lists(a_el, min_size=B, max_size=B)), dtype=torch.float32)
           if adv_1d else tensor(data.draw, a_el, B, T))
    h = tensor(data.draw, h_el, B, T, grad=True)
    old = tensor(data.draw, lp_el, B, T)
    lp = tensor(data.draw, lp_el, B, T, grad=True)
    w_min = data.draw(st.floats(0.05, 1.0))
    w_max = data.draw(st.floats(w_min, 3.0)) if mode == "linear" else 1.0
    w = steer_weights(adv, with_nan_padding(h, m), old, with_nan_padding(lp, m), m, w_min=w_min, w_max=w_max, mode=mode)
    check_common(w, m, w_min, w_max if mode == "linear" else 1.0)


@SETTINGS
@given(st.data(), shapes(), st.floats(0, 1))
def test_high_entropy_props(data, shape, rho):
    B, T = shape
    m = mask_of(data.draw, B, T)
    h = tensor(data.draw, data.draw(st.sampled_from([ANY, NONNEG])), B, T, grad=True)
    w = high_entropy_mask(with_nan_padding(h, m), m, top_fraction=rho)
    check_common(w, m, 0, 1)
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    valid = m.bool()
    if valid.any():
        kept, dropped = h.detach()[valid & (w == 1)], h.detach()[valid & (w == 0)]
        assert kept.numel() >= 1  # the maximum is always kept
        if dropped.numel():
            assert kept.min() > dropped.max()  # a threshold on entropy, ties kept together
        if rho == 1.0:
            assert dropped.numel() == 0


@SETTINGS
@given(st.data(), shapes(), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_clip_cov_props(data, shape, ratio, seed):
    B, T = shape
    m = mask_of(data.draw, B, T)
    el = data.draw(st.sampled_from([ANY, SMALL]))
    adv = tensor(data.draw, el, B, T)
    lp = tensor(data.draw, data.draw(st.sampled_from([ANY, LOGP])), B, T, grad=True)
    old = tensor(data.draw, LOGP, B, T)
    lb = data.draw(st.floats(-5, 5))
    ub = lb + data.draw(st.floats(0, 10))
    w = clip_cov_mask(adv, with_nan_padding(lp, m), old, m, clip_ratio=ratio, cov_lb=lb, cov_ub=ub,
                      generator=torch.Generator().manual_seed(seed))
    check_common(w, m, 0, 1)
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    n = int(m.sum())
    assert int((w[m.bool()] == 0).sum()) <= max(int(ratio * n), 1)
    w2 = clip_cov_mask(adv, lp, old, m, clip_ratio=ratio, cov_lb=lb, cov_ub=lb + 1.0)  # global RNG path
    assert set(w2.unique().tolist()) <= {0.0, 1.0}


@SETTINGS
@given(st.data(), shapes(), st.floats(0, 100))
def test_kl_cov_props(data, shape, k_percent):
    B, T = shape
    m = mask_of(data.draw, B, T)
    adv = tensor(data.draw, data.draw(st.sampled_from([ANY, SMALL])), B, T)
    lp = tensor(data.draw, data.draw(st.sampled_from([ANY, LOGP])), B, T, grad=True)
    sel = kl_cov_mask(adv, with_nan_padding(lp, m), m, k_percent=k_percent)
    check_common(sel, m, 0, 1)
    n = int(m.sum())
    k = min(k_percent, n)
    assert int(sel.sum()) == (0 if k == 0 else max(1, int(n * k / 100)))
    old = tensor(data.draw, LOGP, B, T)
    lp2 = tensor(data.draw, LOGP, B, T, grad=True)
    pen = kl_cov_penalty(lp2, old, sel, kl_coef=data.draw(st.floats(0, 10)))
    assert torch.isfinite(pen).all() and (pen >= 0).all() and (pen[sel == 0] == 0).all()
    assert pen.requires_grad  # a loss term: the gradient flows through logps


@SETTINGS
@given(st.data(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(2, 6),
       st.floats(0.1, 3.0), st.integers(0, 2**31 - 1))
def test_tw_grpo_props(data, n_groups, G, T, V, alpha, seed):
    B = n_groups * G
    m = mask_of(data.draw, B, T)
    g = torch.Generator().manual_seed(seed)
    scale = data.draw(st.sampled_from([0.0, 1.0, 30.0, 1e4]))
    hidden = (torch.randn(B, T, 3, generator=g) * scale).requires_grad_(True)
    W = torch.randn(V, 3, generator=g)
    full = torch.log_softmax(hidden @ W.T, -1)
    w = tw_grpo_weights(full, m, G, alpha=alpha)
    check_common(w, m, min(1.0, alpha), max(1.0, alpha))
    wc = tw_grpo_weights_chunked(hidden, W, m, G, alpha=alpha, chunk_size=data.draw(st.integers(1, 4)))
    check_common(wc, m, min(1.0, alpha), max(1.0, alpha))
    if scale <= 30.0:  # at 1e4 the +-11 clamp and float32 rounding make tiny K differences scale-sensitive
        assert bool(((wc - w).abs() <= 1e-5).all()), (wc, w)


@SETTINGS
@given(st.data(), shapes(), st.floats(0, 5), st.floats(1.01, 10), st.booleans())
def test_entropy_advantage_props(data, shape, alpha, kappa, extreme):
    B, T = shape
    m = mask_of(data.draw, B, T)
    adv = tensor(data.draw, ANY if extreme else SMALL, B, T, grad=True)
    h = tensor(data.draw, NONNEG, B, T, grad=True)
    out = entropy_advantage(adv, with_nan_padding(h, m), m, alpha=alpha, kappa=kappa)
    big = torch.finfo(torch.float32).max
    check_common(out, m, -big, big)
    a, v = adv.detach()[m.bool()].double(), out[m.bool()].double()
    assert (v >= a).all()  # psi >= 0 when H >= 0
    # psi <= |A| / kappa, up to float32 rounding of |A| / kappa: relative for normal numbers, one subnormal
    # spacing (2**-149) below them (|A| = 1.4e-45 gives |A| / 1.5 = 9.3e-46, which rounds up to 1.4e-45)
    assert (v <= a + a.abs() / kappa * (1 + 1e-6) + 2.0 ** -149).all()
    assert (v[a < 0] <= 0).all() and (v[a > 0] > 0).all() and (v[a == 0] == 0).all()  # no sign flip


@SETTINGS
@given(st.data(), shapes())
def test_stats_props(data, shape):
    B, T = shape
    m = mask_of(data.draw, B, T)
    w = tensor(data.draw, st.floats(0, 5, width=32), B, T)
    h = tensor(data.draw, data.draw(st.sampled_from([NONNEG, ANY])), B, T)
    s = token_weight_stats(w, h, m)
    assert all(isinstance(v, float) and math.isfinite(v) for v in s.values()), s
    assert -1.0 <= s["weight_entropy_corr"] <= 1.0
    assert 0.0 <= s["weight_frac_zero"] <= 1.0


@SETTINGS
@given(st.data(), shapes(), st.floats(0, 1))
def test_compose_is_product(data, shape, rho):
    B, T = shape
    m = mask_of(data.draw, B, T)
    adv = tensor(data.draw, SMALL, B, T)
    h = tensor(data.draw, NONNEG, B, T)
    lp = tensor(data.draw, LOGP, B, T, grad=True)
    old = tensor(data.draw, LOGP, B, T)
    b = TokenBatch(advantages=adv, mask=m, logps=lp, old_logps=old, entropies=h, old_entropies=h)
    w, diag = compose_token_weights([{"name": "steer"}, {"name": "high_entropy", "top_fraction": rho}], b)
    expected = steer_weights(adv, h, old, lp, m) * high_entropy_mask(h, m, top_fraction=rho)
    assert torch.equal(w, expected)
    check_common(w, m, 0, 1.2)
    assert all(math.isfinite(x) for d in diag.values() for x in d.values())
