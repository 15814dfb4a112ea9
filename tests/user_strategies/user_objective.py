"""A user's objective strategy defined outside posttrain (built by import path in tests/test_strategies_objectives.py):
weights proportional to each objective's shortfall from 1, so the objective furthest from done counts most."""
from __future__ import annotations

from typing import List, Optional

import torch
from pydantic import Field

from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig


class ShortfallConfig(StrategyConfig):
    floor: float = Field(0.05, ge=0, description="Added to every shortfall, so a solved objective keeps some weight.")


class ShortfallWeights(Strategy):
    """w_k proportional to (1 - mean reward_k) + floor (a toy rule, not a published method)."""

    kind = "objective"
    name = "shortfall"
    Config = ShortfallConfig

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        means = torch.nanmean(ctx.rewards_NK.double(), dim=0)
        raw = (1.0 - means).clamp(min=0.0) + self.config.floor
        weights = (raw / raw.sum()).tolist()
        for name, w in zip(ctx.reward_names, weights):
            ctx.log(f"reward_weights/{name}", w)
        return weights


class DoesNothing(Strategy):
    """Implements no hook: refused (it would silently do nothing)."""

    Config = StrategyConfig


class WrongKindHook(Strategy):
    """Implements a token hook only: refused as an objective strategy."""

    Config = StrategyConfig

    def token_weights(self, batch) -> torch.Tensor:
        return torch.ones_like(batch.logps)
