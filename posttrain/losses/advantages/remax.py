"""ReMax: REINFORCE with the greedy completion's reward as the baseline (pure torch; never imports TRL)."""
from __future__ import annotations

from typing import Optional

import torch

from ._common import float_tensor, reward_matrix

__all__ = ["remax_advantages"]


def remax_advantages(rewards: torch.Tensor, greedy_rewards_P: torch.Tensor,
                     group_size: Optional[int] = None) -> torch.Tensor:
    """ReMax advantage ``A[p, g] = R[p, g] - b[p]``, ``b[p]`` = reward of the greedy completion of prompt p.

    Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large
    Language Models" (arXiv 2310.10505): the gradient estimate
    ``sum_t grad log pi(a_t | x, a_<t) * (r(x, a) - r(x, a_greedy))`` of the official code (``liziniu/ReMax``,
    ``remax_trainer.py``; equation number not checked: only the abstract was available to us).
    The greedy completion is used only for its reward (it is not trained on). verl:
    ``verl/trainer/ppo/core_algos.py::compute_remax_outcome_advantage`` (``reward_baselines`` = the greedy output's
    reward, repeated to the G rollouts of its prompt).

    Args:
        rewards: ``[P, G]`` matrix ``rewards_PG`` or flat ``[N]`` with ``group_size`` (G >= 1 sampled rollouts per
            prompt; the official code uses G = 1). NaN marks an unscorable rollout: advantage 0.
        greedy_rewards_P: ``[P]`` rewards of the greedy (``temperature = 0``) completion of each prompt. NaN (the
            greedy completion could not be scored) means no baseline: every rollout of that prompt gets 0.
        group_size: ``G``; required for ``[N]``, ``None`` or ``G`` for ``[P, G]``.

    Returns:
        Detached advantages with the shape of ``rewards``, never NaN.

    Not reproduced here: verl's per-token form with in-reward KL (``A[i, t] = r_i - beta * sum_{t' >= t} kl - b_i``;
    with ``beta = 0`` it is this scalar broadcast to tokens) and the official code's clipping of ``R - b`` to +-5
    with gamma-discounted per-token returns. All-equal rewards are *not* 0 unless the greedy reward is the same.
    +-inf in either input raises ``ValueError``.
    """
    R, shape = reward_matrix(rewards, group_size)
    b = float_tensor("greedy_rewards_P", greedy_rewards_P)
    if b.dim() != 1 or b.shape[0] != R.shape[0]:
        raise ValueError(f"greedy_rewards_P must be [P] with P = {R.shape[0]} prompts, got shape {tuple(b.shape)}")
    n_inf = int(torch.isinf(b).sum())
    if n_inf:
        raise ValueError(f"greedy_rewards_P has {n_inf} infinite value(s); use NaN to mark a missing reward")
    adv = R - b.to(R.dtype).unsqueeze(1)
    return torch.nan_to_num(adv, nan=0.0).reshape(shape)
