"""Advantage estimators: hand-computed cases, edge cases, 2-"process" all-reduce, properties, parity with verl.

The verl references at the bottom are independent transcriptions of the per-uid loops in volcengine/verl at commit
b178a3cd56f58b2d502255daba591e92833930a7 (2026-01-29): ``verl/trainer/ppo/core_algos.py`` l.267
``compute_grpo_outcome_advantage``, l.425 ``compute_reinforce_plus_plus_baseline_outcome_advantage``, l.477
``compute_rloo_outcome_advantage``, l.583 ``compute_reinforce_plus_plus_outcome_advantage``, l.622
``compute_remax_outcome_advantage``, l.721 ``compute_rloo_vectorized_outcome_advantage``;
``verl/utils/torch_functional.py`` l.287 ``masked_mean``, l.304 ``masked_var``, l.322 ``masked_whiten``;
``verl/trainer/ppo/ray_trainer.py`` l.70 ``apply_kl_penalty``.
"""
import math
import threading
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.losses import (ADVANTAGE_ESTIMATORS, grpo_advantages, group_advantages, kl_penalized_rewards,
                              reinforce_pp_advantages, reinforce_pp_baseline_advantages, remax_advantages,
                              rloo_advantages)
from posttrain.losses.advantages import group_advantages as group_advantages_pkg

F64 = torch.float64
NAN = float("nan")


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), rtol=0, atol=tol)


# --------------------------------------------------------------------------------------------------------- API ---

def test_names_and_alias():
    assert group_advantages is grpo_advantages is group_advantages_pkg
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "rloo", "remax", "reinforce_pp", "reinforce_pp_baseline"}


# -------------------------------------------------------------------------------------------------------- GRPO ---

def test_grpo_hand_computed():
    # group (1, 3): mean 2, unbiased std sqrt(((-1)^2 + 1^2) / 1) = sqrt(2) = 1.41421356
    # -> -+1 / (1.41421356 + 1e-4) = -+0.70705678; group (0, 0): 0
    r = t([[1.0, 3.0], [0.0, 0.0]])
    close(grpo_advantages(r), [[-0.70705678, 0.70705678], [0.0, 0.0]])
    close(grpo_advantages(r, scale="none"), [[-1.0, 1.0], [0.0, 0.0]])
    # batch std over (1, 3, 0, 0): mean 1, squared deviations 0, 4, 1, 1 -> 6 / 3 = 2 -> sqrt(2): same numbers here
    close(grpo_advantages(r, scale="batch"), [[-0.70705678, 0.70705678], [0.0, 0.0]])
    # flat [N] input gives the same numbers in [N] shape
    close(grpo_advantages(r.reshape(-1), 2), [-0.70705678, 0.70705678, 0.0, 0.0])


def test_grpo_nan_and_singleton():
    # NaN left out: group (1, nan, 3) is the (1, 3) group above, NaN row -> 0
    close(grpo_advantages(t([[1.0, NAN, 3.0]])), [[-0.70705678, 0.0, 0.70705678]])
    # singleton groups: 0 (TRL), not verl's raw r / (1 + eps)
    close(grpo_advantages(t([5.0, -2.0]), 1), [0.0, 0.0])


# -------------------------------------------------------------------------------------------------------- RLOO ---

def test_rloo_hand_computed():
    # (1, 0, 2): baselines (0+2)/2 = 1, (1+2)/2 = 1.5, (1+0)/2 = 0.5 -> 0, -1.5, 1.5
    close(rloo_advantages(t([[1.0, 0.0, 2.0]])), [[0.0, -1.5, 1.5]])
    close(rloo_advantages(t([1.0, 0.0, 2.0, 4.0, 4.0, 4.0]), 3), [0.0, -1.5, 1.5, 0.0, 0.0, 0.0])


def test_rloo_nan_rows_leave_the_baselines():
    # scorable (1, 3, 0), k = 3: 1 - (3+0)/2 = -0.5, 3 - (1+0)/2 = 2.5, 0 - (1+3)/2 = -2; NaN -> 0
    close(rloo_advantages(t([[1.0, NAN, 3.0, 0.0]])), [[-0.5, 0.0, 2.5, -2.0]])
    # one scorable row: no sibling -> 0 (default) or the raw reward (verl loop)
    close(rloo_advantages(t([[NAN, 4.0]])), [[0.0, 0.0]])
    close(rloo_advantages(t([[NAN, 4.0]]), singleton="raw"), [[0.0, 4.0]])


def test_rloo_singleton_groups():
    close(rloo_advantages(t([[5.0], [-2.0]])), [[0.0], [0.0]])
    close(rloo_advantages(t([[5.0], [-2.0]]), singleton="raw"), [[5.0], [-2.0]])


# ------------------------------------------------------------------------------------------------------- ReMax ---

def test_remax_hand_computed():
    r = t([[1.0, 0.0], [0.5, 0.5]])
    close(remax_advantages(r, t([0.5, 1.0])), [[0.5, -0.5], [-0.5, -0.5]])
    close(remax_advantages(r.reshape(-1), t([0.5, 1.0]), 2), [0.5, -0.5, -0.5, -0.5])
    # G = 1 (the official code)
    close(remax_advantages(t([2.0, 0.0]), t([1.0, 1.0]), 1), [1.0, -1.0])


def test_remax_nan():
    # NaN rollout -> 0; NaN greedy reward -> no baseline -> the whole prompt 0
    close(remax_advantages(t([[1.0, NAN], [3.0, 1.0]]), t([0.0, NAN])), [[1.0, 0.0], [0.0, 0.0]])


def test_remax_checks():
    with pytest.raises(ValueError, match=r"greedy_rewards_P must be \[P\] with P = 2"):
        remax_advantages(t([[1.0], [2.0]]), t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="greedy_rewards_P has 1 infinite"):
        remax_advantages(t([[1.0], [2.0]]), t([1.0, math.inf]))


# ------------------------------------------------------------------------------------------------- REINFORCE++ ---

MASK_23 = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_reinforce_pp_hand_computed():
    # rewards (1, 0) on the last valid token, gamma 1, no KL: returns (1, 1 | 0, 0, 0) on the 5 valid tokens.
    # mean 0.4; squared deviations 0.36 * 2 + 0.16 * 3 = 1.2; unbiased var 1.2 / 4 = 0.3, std 0.54772256
    # -> 0.6 / 0.5477 = 1.09544512, -0.4 / 0.5477 = -0.73029674 ; biased var 0.24 -> 1.22474487, -0.81649658
    a = reinforce_pp_advantages(t([1.0, 0.0]), MASK_23)
    close(a, [[1.09544512, 1.09544512, 0.0], [-0.73029674] * 3])
    b = reinforce_pp_advantages(t([1.0, 0.0]), MASK_23, unbiased=False)
    close(b, [[1.22474487, 1.22474487, 0.0], [-0.81649658] * 3])


def test_reinforce_pp_in_reward_kl_hand_computed():
    # beta 0.5, kl row 0 (0.2, 0.4, [99 masked]), row 1 (0, 0.2, 0.2): token rewards row 0 (-0.1, 1 - 0.2 = 0.8),
    # row 1 (0, -0.1, -0.1); returns-to-go row 0 (0.7, 0.8), row 1 (-0.2, -0.2, -0.1).
    # mean 1.0 / 5 = 0.2; deviations 0.5, 0.6, -0.4, -0.4, -0.3 -> squares sum 1.02; var 1.02 / 4 = 0.255,
    # std 0.50497525 -> 0.99014754, 1.18817705, -0.79211803, -0.79211803, -0.59408853
    kl = t([[0.2, 0.4, 99.0], [0.0, 0.2, 0.2]])
    a = reinforce_pp_advantages(t([1.0, 0.0]), MASK_23, kl_NT=kl, beta=0.5)
    close(a, [[0.99014754, 1.18817705, 0.0], [-0.79211803, -0.79211803, -0.59408853]])


def test_reinforce_pp_gamma_hand_computed():
    # one sequence, reward 1 on token 3, gamma 0.5: returns (0.25, 0.5, 1), mean 0.58333333,
    # deviations -1/3, -1/12, 5/12 -> squares sum 0.29166667, var 0.14583333, std 0.38188131
    # -> -0.87287156, -0.21821789, 1.09108945
    a = reinforce_pp_advantages(t([1.0]), torch.ones(1, 3), gamma=0.5)
    close(a, [[-0.87287156, -0.21821789, 1.09108945]])


def test_reinforce_pp_edge_cases():
    # all returns equal -> exactly 0
    assert torch.equal(reinforce_pp_advantages(t([2.0, 2.0]), torch.ones(2, 4)), torch.zeros(2, 4, dtype=F64))
    # one valid token in the batch -> 0 (finite; verl's masked_var raises)
    one = torch.tensor([[0, 1, 0], [0, 0, 0]])
    assert torch.equal(reinforce_pp_advantages(t([3.0, 1.0]), one), torch.zeros(2, 3, dtype=F64))
    # empty mask -> 0
    assert torch.equal(reinforce_pp_advantages(t([3.0, 1.0]), torch.zeros(2, 3)), torch.zeros(2, 3, dtype=F64))
    # a single sequence with in-reward KL is whitened over its own tokens: finite, mean 0
    a = reinforce_pp_advantages(t([1.0]), torch.ones(1, 4), kl_NT=t([[0.1, 0.3, 0.0, 0.2]]), beta=1.0)
    assert torch.isfinite(a).all() and abs(a.sum().item()) < 1e-9 and a.abs().sum() > 0
    # NaN reward: row left out of the statistics and 0 -> same as the batch without it
    a = reinforce_pp_advantages(t([1.0, NAN, 0.0]), torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]]))
    close(a, [[1.09544512, 1.09544512, 0.0], [0.0] * 3, [-0.73029674] * 3])


def test_reinforce_pp_mask_with_holes_carries_the_return():
    # token 1 is an observation (mask 0): token 0 still sees the outcome reward on token 2
    a = reinforce_pp_advantages(t([1.0, 0.0]), torch.tensor([[1, 0, 1], [1, 1, 0]]), unbiased=False)
    # returns valid: 1, 1 | 0, 0 -> mean 0.5, biased std 0.5 -> +-1
    close(a, [[1.0, 0.0, 1.0], [-1.0, -1.0, 0.0]])


def test_reinforce_pp_checks():
    with pytest.raises(ValueError, match="beta != 0 needs kl_NT"):
        reinforce_pp_advantages(t([1.0]), torch.ones(1, 2), beta=0.1)
    with pytest.raises(ValueError, match="kl_NT has non-finite values at valid"):
        reinforce_pp_advantages(t([1.0]), torch.ones(1, 2), kl_NT=t([[0.0, NAN]]), beta=0.1)
    # non-finite KL at a masked position is ignored
    reinforce_pp_advantages(t([1.0, 0.0]), torch.tensor([[1, 0], [1, 1]]), kl_NT=t([[0.0, math.inf], [0, 0]]),
                            beta=0.1)
    with pytest.raises(ValueError, match=r"mask_NT must be \[N, T\] with N = 2"):
        reinforce_pp_advantages(t([1.0, 0.0]), torch.ones(3, 2))
    with pytest.raises(ValueError, match="gamma must be <= 1.0, got 1.5"):
        reinforce_pp_advantages(t([1.0]), torch.ones(1, 2), gamma=1.5)
    with pytest.raises(ValueError, match=r"shape mismatch: kl_NT=\(1, 3\)"):
        reinforce_pp_advantages(t([1.0]), torch.ones(1, 2), kl_NT=torch.zeros(1, 3), beta=0.1)


# ---------------------------------------------------------------------------------------- REINFORCE++-baseline ---

def _lengths_mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_reinforce_pp_baseline_hand_computed_token_stats():
    # methods.md F1.4: groups (1, 1) and (1, 0), lengths (2, 6) and (3, 5).
    # centred C = (0, 0, 0.5, -0.5); tokens: 8 x 0, 3 x 0.5, 5 x -0.5 -> n 16, mean -1/16 = -0.0625;
    # deviations 0.0625 (x8), 0.5625 (x3), -0.4375 (x5) -> squares 0.03125 + 0.94921875 + 0.95703125 = 1.9375;
    # var 1.9375 / 15 = 0.12916667, std 0.35939764 -> 0.17390209, 1.56511877, -1.21731460
    mask = _lengths_mask([2, 6, 3, 5], 6)
    a = reinforce_pp_baseline_advantages(t([[1.0, 1.0], [1.0, 0.0]]), None, mask)
    exp = torch.zeros(4, 6, dtype=F64)
    exp[0, :2], exp[1, :6], exp[2, :3], exp[3, :5] = 0.17390209, 0.17390209, 1.56511877, -1.21731460
    close(a, exp)


def test_reinforce_pp_baseline_sequence_stats():
    # sequence stats over C = (0, 0, 0.5, -0.5): mean 0, var 0.5 / 3, std 0.40824829 -> 0, 0, 1.22474487, -1.2247
    mask = _lengths_mask([2, 6, 3, 5], 6)
    a = reinforce_pp_baseline_advantages(t([1.0, 1.0, 1.0, 0.0]), 2, mask, stats="sequence")
    exp = torch.zeros(4, 6, dtype=F64)
    exp[2, :3], exp[3, :5] = 1.22474487, -1.22474487
    close(a, exp)


def test_reinforce_pp_baseline_singleton_and_constant():
    # G = 1: "zero" -> C = 0 -> all 0; "raw" -> C = (2, 0): tokens 2, 2, 0, 0, mean 1, var 4/3 -> +-0.8660254
    r, mask = t([[2.0], [0.0]]), torch.ones(2, 2)
    assert torch.equal(reinforce_pp_baseline_advantages(r, None, mask), torch.zeros(2, 2, dtype=F64))
    close(reinforce_pp_baseline_advantages(r, None, mask, singleton="raw"), [[0.8660254] * 2, [-0.8660254] * 2])
    # every group constant in the batch -> 0 whatever the lengths
    a = reinforce_pp_baseline_advantages(t([[1.0, 1.0], [0.0, 0.0]]), None, _lengths_mask([1, 3, 2, 4], 4))
    assert torch.equal(a, torch.zeros(4, 4, dtype=F64))


def test_reinforce_pp_baseline_nan_and_kl():
    # NaN row: out of the group mean and of the statistics -> (1, nan, 0) is the (1, 0) group: +-1 (biased, equal
    # lengths), NaN row 0
    a = reinforce_pp_baseline_advantages(t([[1.0, NAN, 0.0]]), None, torch.ones(3, 2), unbiased=False)
    close(a, [[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    # in-reward KL enters the score before the group mean: r = (1, 1), sum kl = (0, 2), beta 0.5 -> R = (1, 0)
    kl = t([[0.0, 0.0], [1.0, 1.0]])
    a = reinforce_pp_baseline_advantages(t([[1.0, 1.0]]), None, torch.ones(2, 2), kl_NT=kl, beta=0.5, unbiased=False)
    close(a, [[1.0, 1.0], [-1.0, -1.0]])
    close(kl_penalized_rewards(t([1.0, 1.0]), kl, torch.ones(2, 2), 0.5), [1.0, 0.0])


def test_kl_penalized_rewards():
    # (1, 2) - 0.5 * (0.2 + 0.4 | 1.0, [5 masked]) = (0.7, 1.5); NaN stays NaN; no KL with beta 0 = the rewards
    kl, mask = t([[0.2, 0.4], [1.0, 5.0]]), torch.tensor([[1, 1], [1, 0]])
    close(kl_penalized_rewards(t([1.0, 2.0]), kl, mask, 0.5), [0.7, 1.5])
    assert torch.isnan(kl_penalized_rewards(t([NAN, 2.0]), kl, mask, 0.5)[0])
    close(kl_penalized_rewards(t([[1.0, 2.0]]), None, mask, 0.0), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="beta must be >= 0.0"):
        kl_penalized_rewards(t([1.0, 2.0]), kl, mask, -0.1)


def test_matrix_and_flat_inputs_agree():
    r = t([[1.0, 0.0, 2.0], [0.5, NAN, -1.0]])
    m = _lengths_mask([1, 2, 3, 3, 2, 1], 3)
    b = t([0.2, -0.3])
    for fn in (grpo_advantages, rloo_advantages, lambda x, g=None: remax_advantages(x, b, g),
               lambda x, g=None: reinforce_pp_baseline_advantages(x, g, m)):
        a2, a1 = fn(r), fn(r.reshape(-1), 3)
        torch.testing.assert_close(a2.reshape(a1.shape), a1, rtol=0, atol=0)
    torch.testing.assert_close(reinforce_pp_advantages(r, m), reinforce_pp_advantages(r.reshape(-1), m))


# ------------------------------------------------------------------------------------------- common input checks ---

SEQ_FNS = {
    "grpo": lambda r, g: grpo_advantages(r, g),
    "rloo": lambda r, g: rloo_advantages(r, g),
    "remax": lambda r, g: remax_advantages(r, torch.full((r.numel() // g,), 0.7, dtype=r.dtype), g),
    "reinforce_pp": lambda r, g: reinforce_pp_advantages(r, torch.ones(r.numel(), 3)),
    "reinforce_pp_baseline": lambda r, g: reinforce_pp_baseline_advantages(r, g, torch.ones(r.numel(), 3)),
}


@pytest.mark.parametrize("name", sorted(SEQ_FNS))
def test_inf_reward_is_an_error(name):
    with pytest.raises(ValueError, match="rewards has 1 infinite value.*use NaN"):
        SEQ_FNS[name](t([1.0, math.inf, 0.0, 1.0]), 2)


@pytest.mark.parametrize("name", sorted(SEQ_FNS))
def test_all_equal_rewards_give_finite_zeros(name):
    a = SEQ_FNS[name](t([0.7] * 6), 3)
    if name in ("grpo", "reinforce_pp"):
        # the mean of (0.7, 0.7, 0.7) rounds: TRL's GRPO numerics give 1.1e-12 (1e-16 / (0 + eps)), and so does
        # global whitening (1e-16 * rsqrt(1e-32 + 1e-8)); finite and ~0
        close(a, torch.zeros_like(a), tol=1e-10)
    else:  # the group estimators shift each group by its max first: exact 0
        assert torch.equal(a, torch.zeros_like(a))


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp_baseline"])
def test_group_size_checks(name):
    fn = {"grpo": grpo_advantages, "rloo": rloo_advantages,
          "reinforce_pp_baseline": lambda r, g: reinforce_pp_baseline_advantages(r, g, torch.ones(6, 2))}[name]
    with pytest.raises(ValueError, match=r"multiple of group_size \(4\)"):
        fn(t([0.0] * 6), 4)
    with pytest.raises(ValueError, match="group_size is required"):
        fn(t([0.0] * 6), None)
    with pytest.raises(ValueError, match=r"is \[P, G\] = \(3, 2\) but group_size = 3"):
        fn(t([[0.0] * 2] * 3), 3)


def test_option_checks():
    with pytest.raises(ValueError, match="scale must be one of"):
        grpo_advantages(t([1.0, 0.0]), 2, scale="std")
    with pytest.raises(ValueError, match="singleton must be one of"):
        rloo_advantages(t([1.0, 0.0]), 2, singleton="nan")
    with pytest.raises(ValueError, match="stats must be one of"):
        reinforce_pp_baseline_advantages(t([1.0, 0.0]), 2, torch.ones(2, 1), stats="prompt")
    with pytest.raises(TypeError, match="all_reduce must return the summed tensor"):
        reinforce_pp_advantages(t([1.0, 0.0]), torch.ones(2, 1), all_reduce=lambda x: None)


def test_outputs_are_detached_and_keep_dtype():
    r = t([1.0, 0.0, 2.0, 3.0], dtype=torch.float32).requires_grad_()
    mask = torch.ones(4, 2)
    outs = [grpo_advantages(r, 2), rloo_advantages(r, 2), remax_advantages(r, torch.zeros(2), 2),
            reinforce_pp_advantages(r, mask), reinforce_pp_baseline_advantages(r, 2, mask)]
    for a in outs:
        assert not a.requires_grad and a.dtype == torch.float32
    # integer rewards are accepted (promoted to the default float dtype)
    close(rloo_advantages(torch.tensor([[1, 0, 2]])), [[0.0, -1.5, 1.5]])


# ------------------------------------------------------------------- global statistics over 2 simulated processes ---

def run_two_processes(fn, parts):
    """Run ``fn(*parts[rank], all_reduce=...)`` in two threads whose all_reduce sums the two ranks' tensors."""
    slots, results, errors = [None, None], [None, None], []
    barrier = threading.Barrier(2, timeout=30)
    calls = [0, 0]

    def make_all_reduce(rank):
        def all_reduce(x):
            calls[rank] += 1
            slots[rank] = x.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both ranks have read before either writes its next tensor
            return total
        return all_reduce

    def worker(rank):
        try:
            results[rank] = fn(*parts[rank], all_reduce=make_all_reduce(rank))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert calls[0] == calls[1] > 0
    return results


def _batch(seed, P=5, G=3, T=7, nan=True):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(P * G, generator=g, dtype=F64)
    if nan:
        r[1] = NAN
    lengths = torch.randint(1, T + 1, (P * G,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    kl = torch.randn(P * G, T, generator=g, dtype=F64).abs() * 0.1
    return r, mask, kl


@pytest.mark.parametrize("split_prompts", [1, 2, 4])
def test_two_processes_equal_single_process(split_prompts):
    P, G = 5, 3
    r, mask, kl = _batch(split_prompts, P, G)
    s = split_prompts * G  # rank 0 holds the first `split_prompts` prompts (unequal halves)
    cases = {
        "reinforce_pp": (lambda r, m, k, **kw: reinforce_pp_advantages(r, m, kl_NT=k, beta=0.3, **kw)),
        "reinforce_pp_gamma": (lambda r, m, k, **kw: reinforce_pp_advantages(r, m, kl_NT=k, beta=0.3, gamma=0.9,
                                                                              unbiased=False, **kw)),
        "baseline_token": (lambda r, m, k, **kw: reinforce_pp_baseline_advantages(r, G, m, **kw)),
        "baseline_sequence": (lambda r, m, k, **kw: reinforce_pp_baseline_advantages(r, G, m, stats="sequence",
                                                                                      kl_NT=k, beta=0.1, **kw)),
        "grpo_batch": (lambda r, m, k, **kw: grpo_advantages(r, G, scale="batch", **kw)),
    }
    for name, fn in cases.items():
        # one process; GRPO "batch" without all_reduce keeps TRL's float32 Bessel factor (test below)
        full = fn(r, mask, kl, all_reduce=(lambda x: x) if name == "grpo_batch" else None)
        a0, a1 = run_two_processes(fn, [(r[:s], mask[:s], kl[:s]), (r[s:], mask[s:], kl[s:])])
        torch.testing.assert_close(torch.cat([a0, a1]), full, rtol=0, atol=1e-12, msg=name)


def test_two_processes_one_rank_without_valid_tokens():
    r, mask, _ = _batch(7, nan=False)
    mask[:6] = False
    full = reinforce_pp_advantages(r, mask)
    a0, a1 = run_two_processes(reinforce_pp_advantages, [(r[:6], mask[:6]), (r[6:], mask[6:])])
    assert torch.equal(a0, torch.zeros_like(a0))
    torch.testing.assert_close(a1, full[6:], rtol=0, atol=1e-12)


def test_two_processes_grpo_batch_equals_trl_path():
    # Without all_reduce GRPO "batch" keeps TRL's nanstd numerics, whose Bessel factor count / (count - 1) is an
    # int / int division, i.e. float32 (relative error ~3e-8); the all-reduced statistics are exact float64.
    r, _, _ = _batch(3)
    fn = lambda r, **kw: grpo_advantages(r, 3, scale="batch", **kw)  # noqa: E731
    a0, a1 = run_two_processes(fn, [(r[:6],), (r[6:],)])
    torch.testing.assert_close(torch.cat([a0, a1]), fn(r, all_reduce=lambda x: x), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([a0, a1]), fn(r), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------- properties ---

@st.composite
def reward_batches(draw, allow_nan=True):
    P = draw(st.integers(1, 4))
    G = draw(st.integers(1, 5))
    T = draw(st.integers(1, 5))
    vals = st.floats(-5, 5, allow_nan=False, width=32) | st.sampled_from([0.0, 1.0])
    if allow_nan:
        vals = vals | st.just(NAN)
    r = torch.tensor(draw(st.lists(vals, min_size=P * G, max_size=P * G)), dtype=F64).view(P, G)
    lengths = draw(st.lists(st.integers(0, T), min_size=P * G, max_size=P * G))
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    perm_p = draw(st.permutations(range(P)))
    perm_g = draw(st.permutations(range(G)))
    return r, mask, list(perm_p), list(perm_g)


def _all_estimators(r, mask):
    P, G = r.shape
    b = torch.linspace(-1, 1, P, dtype=F64)
    return {
        "grpo": grpo_advantages(r),
        "grpo_none": grpo_advantages(r, scale="none"),
        "grpo_batch": grpo_advantages(r, scale="batch"),
        "rloo": rloo_advantages(r),
        "rloo_raw": rloo_advantages(r, singleton="raw"),
        "remax": remax_advantages(r, b),
        "rpp": reinforce_pp_advantages(r, mask),
        "rpp_b": reinforce_pp_baseline_advantages(r, None, mask),
        "rpp_b_seq": reinforce_pp_baseline_advantages(r, None, mask, stats="sequence"),
    }


@settings(max_examples=60, deadline=None)
@given(reward_batches())
def test_finite_outputs_and_shapes(batch):
    r, mask, _, _ = batch
    for name, a in _all_estimators(r, mask).items():
        assert torch.isfinite(a).all(), name
        assert a.shape == (r.shape if name in ("grpo", "grpo_none", "grpo_batch", "rloo", "rloo_raw", "remax")
                           else mask.shape), name
        if name.startswith("rpp"):
            assert (a[~mask] == 0).all(), name


@settings(max_examples=60, deadline=None)
@given(reward_batches())
def test_zero_sum_per_group(batch):
    r, mask, _, _ = batch
    for a in (rloo_advantages(r), grpo_advantages(r, scale="none")):
        torch.testing.assert_close(a.sum(dim=1), torch.zeros(r.shape[0], dtype=F64), rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(reward_batches())
def test_invariance_to_prompt_and_sample_order(batch):
    r, mask, perm_p, perm_g = batch
    P, G = r.shape
    # permute prompts and, inside every prompt, samples; token tensors follow their rows
    rows = torch.tensor([p * G + g for p in perm_p for g in perm_g])
    r2, mask2 = r[perm_p][:, perm_g], mask[rows]
    b = torch.linspace(-1, 1, P, dtype=F64)
    ref = _all_estimators(r, mask)
    got = _all_estimators(r2, mask2)
    got["remax"] = remax_advantages(r2, b[perm_p])  # the greedy baseline follows its prompt
    for name, a in ref.items():
        expected = a[perm_p][:, perm_g] if a.shape == r.shape else a[rows]
        torch.testing.assert_close(got[name], expected.reshape(got[name].shape), rtol=0, atol=1e-9, msg=name)


@settings(max_examples=40, deadline=None)
@given(reward_batches(allow_nan=False), st.floats(-3, 3))
def test_group_shift_invariance(batch, c):
    r, mask, _, _ = batch
    shift = torch.arange(r.shape[0], dtype=F64).unsqueeze(1) * c  # a different constant per prompt
    for fn in (lambda x: rloo_advantages(x), lambda x: grpo_advantages(x),
               lambda x: reinforce_pp_baseline_advantages(x, None, mask)):
        torch.testing.assert_close(fn(r + shift), fn(r), rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(reward_batches(allow_nan=False))
def test_token_whitening_moments(batch):
    r, mask, _, _ = batch
    a = reinforce_pp_advantages(r, mask)
    if int(mask.sum()) >= 2:
        x = r.reshape(-1, 1).expand_as(mask)[mask]  # without KL the return of every token is its row's reward
        v = x.var(unbiased=True).item()
        w = a[mask]
        assert abs(w.mean().item()) < 1e-9
        assert w.var(unbiased=True).item() == pytest.approx(v / (v + 1e-8), abs=1e-6)  # rsqrt(var + eps)


# ------------------------------------------------------------------------------- verl reference transcriptions ---
# Written from reading verl's source (commit/lines in the module docstring); per-uid Python loops as verl has them.

def verl_masked_mean(values, mask):
    return (torch.where(mask.bool(), values, 0.0) * mask).sum() / (mask.sum() + 1e-8)


def verl_masked_var(values, mask):
    mean = verl_masked_mean(values, mask)
    variance = verl_masked_mean((values - mean) ** 2, mask)
    n = mask.sum()
    if n == 0 or n == 1:
        raise ValueError("verl masked_var needs >= 2 valid tokens")
    return variance * (n / (n - 1))


def verl_masked_whiten(values, mask):
    mean, var = verl_masked_mean(values, mask), verl_masked_var(values, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def verl_apply_kl_penalty(token_level_scores, kld, response_mask, beta):
    return token_level_scores - beta * (kld * response_mask)


def verl_grpo(token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    scores = token_level_rewards.sum(dim=-1).clone()
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx, vals in id2score.items():
        if len(vals) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.stack(vals)), torch.std(torch.stack(vals))
    for i in range(scores.shape[0]):
        if norm_adv_by_std_in_grpo:
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            scores[i] = scores[i] - id2mean[index[i]]
    return scores.unsqueeze(-1) * response_mask


def verl_rloo(token_level_rewards, response_mask, index):
    scores = token_level_rewards.sum(dim=-1).clone()
    id2score, id2mean = defaultdict(list), {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx, vals in id2score.items():
        id2mean[idx] = torch.tensor(0.0) if len(vals) == 1 else torch.mean(torch.stack(vals))
    for i in range(scores.shape[0]):
        n = len(id2score[index[i]])
        if n > 1:
            scores[i] = scores[i] * n / (n - 1) - id2mean[index[i]] * n / (n - 1)
    return scores.unsqueeze(-1) * response_mask


def verl_rloo_vectorized(token_level_rewards, response_mask, index):
    scores = token_level_rewards.sum(dim=-1)
    uniq = {u: k for k, u in enumerate(dict.fromkeys(index))}
    inv = torch.tensor([uniq[u] for u in index])
    c = torch.bincount(inv)[inv].to(scores.dtype)
    adv = ((c * scores - torch.bincount(inv, weights=scores)[inv]) / (c - 1).clamp_min(1)) * (c > 1)
    return adv.unsqueeze(-1) * response_mask


def verl_reinforce_pp_baseline(token_level_rewards, response_mask, index):
    T = token_level_rewards.shape[-1]
    scores = token_level_rewards.sum(dim=-1).clone()
    id2score, id2mean = defaultdict(list), {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx, vals in id2score.items():
        id2mean[idx] = torch.tensor(0.0) if len(vals) == 1 else torch.mean(torch.stack(vals))
    for i in range(scores.shape[0]):
        scores[i] = scores[i] - id2mean[index[i]]
    scores = scores.unsqueeze(-1).tile([1, T]) * response_mask
    return verl_masked_whiten(scores, response_mask) * response_mask


def verl_reinforce_pp(token_level_rewards, response_mask, gamma):
    returns = torch.zeros_like(token_level_rewards)
    running = 0
    for t_ in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t_] + gamma * running
        returns[:, t_] = running
        running = running * response_mask[:, t_]  # "Reset after EOS"
    return verl_masked_whiten(returns, response_mask) * response_mask


def verl_remax(token_level_rewards, reward_baselines, response_mask):
    returns = (token_level_rewards * response_mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    return returns - reward_baselines.unsqueeze(-1) * response_mask


def _scores_on_last_token(r, mask):
    """verl's token_level_scores: the scalar reward on the last valid (prefix-mask) token."""
    out = torch.zeros(mask.shape, dtype=r.dtype)
    last = mask.long().sum(-1) - 1
    for i in range(r.shape[0]):
        if last[i] >= 0:
            out[i, last[i]] = r[i]
    return out


def _verl_batch(seed, P, G, T, singleton=False):
    """Random float64 batch with prefix masks (>= 1 token) and a shuffled row order for verl (groups by uid)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(P, G, generator=g, dtype=F64)
    if seed % 3 == 0:
        r = torch.randint(0, 2, (P, G), generator=g).to(F64)  # binary rewards: constant groups happen
    lengths = torch.randint(1, T + 1, (P * G,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    kl = torch.randn(P * G, T, generator=g, dtype=F64) * 0.05
    perm = torch.randperm(P * G, generator=g)
    uids = [f"uid-{p}" for p in range(P) for _ in range(G)]
    return r, mask, kl, perm, [uids[k] for k in perm.tolist()]


def _unshuffle(x_perm, perm):
    out = torch.empty_like(x_perm)
    out[perm] = x_perm
    return out


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_verl_grpo(seed):
    P, G, T = 4, 2 + seed % 4, 6
    r, mask, _, perm, uids = _verl_batch(seed, P, G, T)
    tlr = _scores_on_last_token(r.reshape(-1), mask)
    for norm, scale in ((True, "group"), (False, "none")):
        ref = _unshuffle(verl_grpo(tlr[perm], mask[perm], uids, epsilon=1e-6, norm_adv_by_std_in_grpo=norm), perm)
        ours = grpo_advantages(r, scale=scale, eps=1e-6).reshape(-1, 1) * mask
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_parity_verl_grpo_singleton_differs_as_documented():
    r = t([[2.0], [-1.0]])
    ref = verl_grpo(r, torch.ones(2, 1), ["a", "b"])
    close(ref, [[2.0 / (1 + 1e-6)], [-1.0 / (1 + 1e-6)]])  # verl: raw r / (1 + eps)
    close(grpo_advantages(r), [[0.0], [0.0]])  # ours (TRL): 0


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_verl_rloo(seed):
    P, G, T = 4, 1 + seed % 5, 5  # includes G = 1
    r, mask, kl, perm, uids = _verl_batch(seed, P, G, T)
    beta = 0.1
    tlr = verl_apply_kl_penalty(_scores_on_last_token(r.reshape(-1), mask), kl, mask, beta)
    R = kl_penalized_rewards(r, kl, mask, beta)  # [P, G] in, [P, G] out
    ref_loop = _unshuffle(verl_rloo(tlr[perm], mask[perm], uids), perm)
    ref_vec = _unshuffle(verl_rloo_vectorized(tlr[perm], mask[perm], uids), perm)
    torch.testing.assert_close(rloo_advantages(R, singleton="raw").reshape(-1, 1) * mask, ref_loop, rtol=0, atol=1e-6)
    torch.testing.assert_close(rloo_advantages(R).reshape(-1, 1) * mask, ref_vec, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_verl_reinforce_pp_baseline(seed):
    P, G, T = 4, 1 + seed % 4, 6
    r, mask, kl, perm, uids = _verl_batch(seed, P, G, T)
    beta = 0.0 if seed % 2 else 0.2
    tlr = verl_apply_kl_penalty(_scores_on_last_token(r.reshape(-1), mask), kl, mask, beta)
    ref = _unshuffle(verl_reinforce_pp_baseline(tlr[perm], mask[perm], uids), perm)
    ours = reinforce_pp_baseline_advantages(r, None, mask, kl_NT=kl if beta else None, beta=beta, singleton="raw")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if G > 1:  # the singleton choice only matters for G = 1
        torch.testing.assert_close(reinforce_pp_baseline_advantages(r, None, mask, kl_NT=kl, beta=beta), ref,
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_parity_verl_reinforce_pp(seed, gamma):
    N, T = 3 + seed, 7
    r, mask, kl, _, _ = _verl_batch(seed, N, 1, T)
    r = r.reshape(-1)
    beta = 0.0 if seed % 2 else 0.3
    tlr = verl_apply_kl_penalty(_scores_on_last_token(r, mask), kl, mask, beta)
    ref = verl_reinforce_pp(tlr, mask, gamma)
    ours = reinforce_pp_advantages(r, mask, kl_NT=kl, beta=beta, gamma=gamma)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_verl_remax(seed):
    P, G, T = 4, 1 + seed % 4, 5
    r, mask, _, _, _ = _verl_batch(seed, P, G, T)
    b = torch.randn(P, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
    tlr = _scores_on_last_token(r.reshape(-1), mask)
    ref = verl_remax(tlr, b.repeat_interleave(G), mask)  # verl repeats the greedy baseline to the G rollouts
    torch.testing.assert_close(remax_advantages(r, b).reshape(-1, 1) * mask, ref, rtol=0, atol=1e-6)


def test_verl_masked_var_raises_where_we_return_zero():
    one = torch.tensor([[0.0, 1.0]], dtype=F64)
    with pytest.raises(ValueError):
        verl_reinforce_pp(_scores_on_last_token(t([1.0]), one), one, 1.0)
    assert torch.equal(reinforce_pp_advantages(t([1.0]), one), torch.zeros(1, 2, dtype=F64))


def test_float32_inputs_match_float64():
    r, mask, kl, _, _ = _verl_batch(5, 6, 4, 9)
    r = r + 1000.0  # a large common offset: the group estimators shift each group first, whitening is float64
    for fn in (lambda x, k: grpo_advantages(x), lambda x, k: rloo_advantages(x),
               lambda x, k: reinforce_pp_advantages(x, mask, kl_NT=k, beta=0.2),
               lambda x, k: reinforce_pp_baseline_advantages(x, None, mask, kl_NT=k, beta=0.2)):
        a64, a32 = fn(r, kl), fn(r.float(), kl.float())
        assert a32.dtype == torch.float32
        # float32 holds 1000 + r to ~6e-5, which bounds the difference (observed <= 1.2e-4, GRPO)
        torch.testing.assert_close(a32.double(), a64, rtol=0, atol=5e-4)
