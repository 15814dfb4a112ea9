"""RLOO: REINFORCE with a leave-one-out baseline (pure torch; never imports TRL)."""
from __future__ import annotations

from typing import Optional

import torch

from ._common import check_choice, reward_matrix, shift_groups

__all__ = ["SINGLETONS", "rloo_advantages"]

SINGLETONS = ("zero", "raw")


def rloo_advantages(rewards: torch.Tensor, group_size: Optional[int] = None, *,
                    singleton: str = "zero") -> torch.Tensor:
    """RLOO advantage ``A[p, g] = R[p, g] - (1 / (k - 1)) * sum_{h != g} R[p, h]``, ``k`` scorable rows of prompt p.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (arXiv 2402.14740; the REINFORCE Leave-One-Out estimator of Kool et al. 2019, "Buy 4 REINFORCE
    samples, get a baseline for free!"): each of the k samples uses the mean reward of the other k - 1 as its
    baseline (equation number not checked: the paper text was not available to us). Equivalently
    ``A = k / (k - 1) * (R - mean_g R)``, so the advantages of a group sum to 0. No std normalisation. verl:
    ``verl/trainer/ppo/core_algos.py::compute_rloo_outcome_advantage`` (per-uid loop) and
    ``compute_rloo_vectorized_outcome_advantage``; TRL 1.16: ``RLOOTrainer._generate_and_score_completions``.

    For the KL-penalised reward of the paper (``R = r - beta * KL_seq``, as TRL and verl with
    ``use_kl_in_reward``) pass ``kl_penalized_rewards(r, kl_NT, mask_NT, beta)`` as ``rewards``.

    Args:
        rewards: ``[P, G]`` matrix ``rewards_PG`` or flat ``[N]`` with ``group_size`` (rows of a prompt contiguous).
            NaN marks an unscorable sample (TRL 1.16): it is excluded from its siblings' baselines (``k`` counts
            scorable rows only) and its own advantage is 0.
        group_size: ``G``; required for ``[N]``, ``None`` or ``G`` for ``[P, G]``.
        singleton: advantage of a row with no scorable sibling (``G = 1``, or all siblings NaN), where the
            leave-one-out baseline is undefined. ``"zero"`` (default): 0, as TRL 1.16 (``nan_to_num`` of 0/0) and
            verl's vectorized RLOO (``* (c > 1)``). ``"raw"``: the raw reward ``R`` (baseline 0), as verl's per-uid
            loop.

    Returns:
        Detached advantages with the shape of ``rewards``, never NaN.

    Edge cases: all-equal rewards in a group give exactly 0; +-inf raises ``ValueError``; OpenRLHF divides by zero for
    G = 1 (not reproduced).
    """
    check_choice("singleton", singleton, SINGLETONS)
    raw, shape = reward_matrix(rewards, group_size)
    R = shift_groups(raw)  # the estimator is shift-invariant per group; exact 0 for a constant group
    ok = ~torch.isnan(R)
    k = ok.sum(dim=1, keepdim=True).to(R.dtype)  # scorable rows per prompt
    total = torch.nansum(R, dim=1, keepdim=True)
    has_siblings = k > 1
    baseline = (total - R) / torch.where(has_siblings, k - 1, torch.ones_like(k))
    adv = torch.where(has_siblings, R - baseline, raw if singleton == "raw" else torch.zeros_like(R))
    return torch.where(ok, adv, torch.zeros_like(adv)).reshape(shape)
