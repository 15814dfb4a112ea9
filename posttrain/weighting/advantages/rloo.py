"""RLOO, the REINFORCE leave-one-out baseline, as an advantage estimator of the strategy protocol.

``A[p, g] = R[p, g] - (1 / (G - 1)) Σ_{h≠g} R[p, h]`` (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740; Kool
et al. 2019's estimator); verl ``core_algos.py::compute_rloo_outcome_advantage``, TRL 1.16 ``RLOOTrainer``. The math
is :func:`posttrain.losses.advantages.rloo_advantages`. The KL to the reference stays in the loss (``train.beta``),
as GRPO's; the paper's in-reward KL is not offered by this estimator.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from posttrain.losses.advantages import rloo_advantages
from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig, StrategyEnv, register_strategy


class RLOOConfig(StrategyConfig):
    singleton: Literal["zero", "raw"] = Field(
        "zero", description="Advantage of a prompt with a single scorable sample: 'zero' (TRL 1.16 RLOOTrainer, "
        "verl's vectorised RLOO) or 'raw' (its reward, verl's per-uid loop compute_rloo_outcome_advantage).")


@register_strategy("advantage", "rloo")
class RLOO(Strategy):
    """RLOO leave-one-out baseline (Ahmadian et al. 2024, arXiv 2402.14740); no std scaling."""

    Config = RLOOConfig
    cite = "Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740); verl core_algos.compute_rloo_outcome_advantage"

    def __init__(self, config=None, env: StrategyEnv = None):
        super().__init__(config, env)
        if self.env.num_generations < 2:
            raise ValueError(f"rloo needs at least 2 samples per prompt (train.num_generations), got "
                             f"{self.env.num_generations}")

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        return rloo_advantages(ctx.rewards_N, ctx.group_size, singleton=self.config.singleton)
