"""ReMax, REINFORCE with the greedy completion's reward as the baseline, as an advantage estimator.

``A[p, g] = R[p, g] - r(x_p, ȳ_p)`` with ``ȳ_p`` the greedy completion of prompt p under the current policy, generated
and scored in the same step and used only for its reward (Li et al. 2023, "ReMax", arXiv 2310.10505; official code
``liziniu/ReMax`` ``remax_trainer.py``; verl ``core_algos.py::compute_remax_outcome_advantage``). The trainer's
``greedy_rewards()`` service generates one greedy completion per prompt (all processes) and scores it with every
reward function, mixed with this step's objective weights; its cost is logged (``remax/greedy_seconds``). The math
is :func:`posttrain.losses.advantages.remax_advantages`. A greedy completion no reward can score (NaN) leaves its
prompt without a baseline: advantage 0.
"""
from __future__ import annotations

import torch

from posttrain.losses.advantages import remax_advantages
from posttrain.weighting.protocol import RolloutContext, Strategy, register_strategy


@register_strategy("advantage", "remax")
class ReMax(Strategy):
    """ReMax greedy-baseline REINFORCE (Li et al. 2023, arXiv 2310.10505): one extra greedy rollout per prompt."""

    cite = "Li et al. 2023, ReMax (arXiv 2310.10505); verl core_algos.compute_remax_outcome_advantage"

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        baseline_P = ctx.greedy_rewards().to(ctx.rewards_N.device, ctx.rewards_N.dtype)
        return remax_advantages(ctx.rewards_N, baseline_P, ctx.group_size)
