"""GRPO's group-normalised advantage as the default advantage estimator of the strategy protocol.

``A_i = (r_i - mean_group(r)) / (std_group(r) + 1e-4)`` (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2
"outcome supervision"), with TRL 1.16's ``scale_rewards`` (``group`` / ``batch`` / ``none``: Dr. GRPO's
mean-centring, Liu et al. 2025, arXiv 2503.20783) taken from the trainer. NaN rewards (unscorable samples) are left
out of the group statistics and get advantage 0, as in TRL (:func:`posttrain.losses.group_advantages`).
"""
from __future__ import annotations

import torch

from posttrain.losses.advantages import group_advantages
from posttrain.weighting.protocol import RolloutContext, Strategy, register_strategy


@register_strategy("advantage", "grpo")
class GRPOAdvantage(Strategy):
    """GRPO group advantages (DeepSeekMath, arXiv 2402.03300); TRL's own computation, kept when nothing reshapes."""

    cite = "Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), Sec. 4.1.2; TRL GRPOTrainer (scale_rewards)"
    trl_native = True

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        return group_advantages(ctx.rewards_N, ctx.group_size, scale=ctx.scale_rewards)
