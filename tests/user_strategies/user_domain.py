"""A user's domain strategies, outside posttrain/, built by import path ``tests.user_strategies.user_domain:Class``.
Used by ``tests/test_strategies_domains.py``."""
from __future__ import annotations

from typing import List

import torch
from pydantic import Field

from posttrain.weighting.protocol import DomainContext, Strategy, StrategyConfig


class LossProportionalConfig(StrategyConfig):
    power: float = Field(1.0, ge=0, description="w_d ∝ losses_D^power (a toy)")


class LossProportional(Strategy):
    """Sample domains in proportion to their training loss to the given power (a toy with one hook and a log key);
    uniform before any loss is known. Records the steps it was called at in :attr:`calls`."""

    Config = LossProportionalConfig

    def __init__(self, config=None, env=None):
        super().__init__(config, env)
        self.calls: List[int] = []

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        self.calls.append(ctx.step)
        if ctx.losses_D is None:
            return [1.0 / len(ctx.domains)] * len(ctx.domains)
        w = ctx.losses_D.double().clamp(min=0) ** self.config.power
        ctx.log("user/loss_sum", float(w.sum()))
        return (w / w.sum()).tolist()


class ConfigOnly(Strategy):
    """Implements no hook: refused as a domain strategy (it would silently do nothing)."""

    Config = LossProportionalConfig


class TokenHookOnly(Strategy):
    """Implements a token hook only: refused as a domain strategy."""

    def token_weights(self, batch) -> torch.Tensor:
        return torch.ones_like(batch.advantages)
