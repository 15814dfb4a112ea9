"""Entropy minimisation math (EM-FT / EM-RL / EM-INF, arXiv 2505.15134): hand-computed cases and edge cases."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from posttrain.losses import (adaptive_temperature_logits, em_inf_adjust_logits, entropy_loss, neg_entropy_reward,
                              selective_logprobs_and_entropy)

LN3 = math.log(3.0)
H_QUARTER = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # entropy of (1/4, 3/4) = 0.5623


def test_neg_entropy_reward_hand_computed():
    logps = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, 0.0, 0.0]])
    ents = torch.tensor([[0.5, 1.0, 9.0], [2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert neg_entropy_reward(logps, None, mask, kind="traj").tolist() == [-3.0, -0.5]
    assert neg_entropy_reward(None, ents, mask, kind="token").tolist() == [-1.5, -2.0]
    assert neg_entropy_reward(logps, None, mask, kind="traj", normalize_by_length=True).tolist() == [-1.5, -0.5]
    assert neg_entropy_reward(None, ents, mask, kind="token", normalize_by_length=True).tolist() == [-0.75, -2.0]


def test_neg_entropy_reward_edges():
    empty = torch.zeros(1, 3)
    assert neg_entropy_reward(torch.full((1, 3), float("nan")), None, empty).tolist() == [0.0]  # masked NaN ignored
    assert neg_entropy_reward(None, torch.ones(1, 3), empty, kind="token", normalize_by_length=True).tolist() == [0.0]
    with pytest.raises(ValueError, match="non-finite"):
        neg_entropy_reward(torch.tensor([[float("inf")]]), None, torch.ones(1, 1))
    with pytest.raises(ValueError, match="needs entropies"):
        neg_entropy_reward(torch.zeros(1, 1), None, torch.ones(1, 1), kind="token")
    with pytest.raises(ValueError, match="kind"):
        neg_entropy_reward(torch.zeros(1, 1), None, torch.ones(1, 1), kind="seq")


def test_entropy_loss_hand_computed_and_gradient():
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0], [5.0, -5.0]]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss = entropy_loss(logits, None, mask)
    assert loss.item() == pytest.approx((H_QUARTER + math.log(2)) / 2, abs=1e-6)
    loss.backward()
    ref = logits.detach().clone().requires_grad_(True)
    p = ref.softmax(-1)
    h = -(p * p.log()).sum(-1)
    ((h * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    assert logits.grad[0, 2].abs().sum() == 0  # masked position: no gradient


def test_entropy_loss_hidden_path_matches_logits_and_empty_mask():
    torch.manual_seed(0)
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(7, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    a = entropy_loss(h, w, mask, temperature=0.7)
    b = entropy_loss(h @ w.T, None, mask, temperature=0.7)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert entropy_loss(h, w, torch.zeros(2, 3)).item() == 0.0


def test_em_inf_one_adam_step_by_hand():
    # z = [0, ln 3]: p = (1/4, 3/4); dH/dz = -p (log p + H) = (+0.206, -0.206); Adam's first step is -lr * sign(grad)
    z = torch.tensor([[0.0, LN3]])
    out = em_inf_adjust_logits(z, learning_rate=0.1, n_grad_steps=1, kl_weight=0.0, threshold=0.0)
    torch.testing.assert_close(out, torch.tensor([[-0.1, LN3 + 0.1]]), atol=1e-6, rtol=0)
    assert em_inf_adjust_logits(z, n_grad_steps=0).equal(z)  # no steps: unchanged
    assert em_inf_adjust_logits(z, threshold=H_QUARTER + 1e-3).equal(z)  # H below the threshold: no step at all


def test_em_inf_lowers_entropy_and_kl_holds_it_back():
    torch.manual_seed(1)
    z = torch.randn(3, 11)
    h0 = -(z.softmax(-1) * z.log_softmax(-1)).sum()
    free = em_inf_adjust_logits(z, n_grad_steps=5, kl_weight=0.0, threshold=0.0)
    held = em_inf_adjust_logits(z, n_grad_steps=5, kl_weight=50.0, threshold=0.0)
    ent = lambda t: float(-(t.softmax(-1) * t.log_softmax(-1)).sum())  # noqa: E731
    assert ent(free) < ent(held) < float(h0)
    assert free.dtype == torch.float32 and not free.requires_grad


def test_em_inf_batch_vs_row_parity():
    # row A: H = 0.562; row B = [0, 5]: H = 0.040. Batch sum 0.60 > 0.3: the official batch mode moves both rows;
    # per row, B is already below the threshold and stays.
    z = torch.tensor([[0.0, LN3], [0.0, 5.0]])
    batch = em_inf_adjust_logits(z, n_grad_steps=1, kl_weight=0.0, threshold=0.3, parity="batch")
    row = em_inf_adjust_logits(z, n_grad_steps=1, kl_weight=0.0, threshold=0.3, parity="row")
    torch.testing.assert_close(batch, torch.tensor([[-0.1, LN3 + 0.1], [-0.1, 5.1]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(row, torch.tensor([[-0.1, LN3 + 0.1], [0.0, 5.0]]), atol=1e-6, rtol=0)


def test_em_inf_bad_input():
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        em_inf_adjust_logits(torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        em_inf_adjust_logits(torch.tensor([[float("nan"), 0.0]]))
    # -inf (a token masked by an earlier processor) is allowed and stays -inf
    out = em_inf_adjust_logits(torch.tensor([[0.0, LN3, -float("inf")]]), n_grad_steps=2, threshold=0.0)
    assert torch.isneginf(out[0, 2]) and torch.isfinite(out[0, :2]).all()


def test_adaptive_temperature_by_hand():
    z = torch.tensor([[0.0, LN3]])
    one = adaptive_temperature_logits(z, target_ratio=0.5, tol=1e-9, max_iter=1)  # one bisection: tau = 0.505
    torch.testing.assert_close(one, z / 0.505)
    out = adaptive_temperature_logits(z, target_ratio=0.5, tol=1e-4)
    h = float(-(out.softmax(-1) * out.log_softmax(-1)).sum())
    assert h == pytest.approx(0.5 * H_QUARTER, abs=1e-4)
    assert out.argmax().item() == 1  # order kept
    assert adaptive_temperature_logits(z, threshold=1.0).equal(z)  # H0 <= threshold: tau = 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=8), st.floats(0.05, 1.0))
def test_adaptive_temperature_never_raises_entropy(row, ratio):
    z = torch.tensor([row])
    out = adaptive_temperature_logits(z, target_ratio=ratio)
    ent = lambda t: float(-(t.softmax(-1) * t.log_softmax(-1)).nan_to_num(0).sum())  # noqa: E731
    assert torch.isfinite(out).all() and ent(out) <= ent(z) + 1e-5


def test_reward_equals_selective_logprobs_and_entropy():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 9)
    labels = torch.randint(0, 9, (2, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    logps, ents = selective_logprobs_and_entropy(logits, None, labels.masked_fill(mask == 0, -100))
    torch.testing.assert_close(neg_entropy_reward(None, ents, mask, kind="token"), -(ents * mask).sum(-1))
    ref = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(neg_entropy_reward(logps, None, mask), (ref * mask).sum(-1))
