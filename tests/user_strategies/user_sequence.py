"""A user's sequence strategy, outside posttrain/, built by import path ``user_strategies.user_sequence:Class``
(``tests/`` is on ``sys.path`` under pytest). Used by ``tests/test_strategies_sequences.py``."""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig


class ShortCompletionBonusConfig(StrategyConfig):
    factor: float = Field(2.0, gt=0, description="multiplies the advantage of every completion shorter than max_chars")
    max_chars: int = Field(3, ge=0, description="completions with fewer characters count as short")


class ShortCompletionBonus(Strategy):
    """Multiply the advantages of short completions by ``factor`` (a toy: one hook, a config, a log key)."""

    Config = ShortCompletionBonusConfig

    def adjust_advantages(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        short = torch.tensor([len(t) < self.config.max_chars for t in ctx.texts], dtype=torch.bool)
        ctx.log("user/short_share", float(short.float().mean()))
        factor = torch.where(short, torch.tensor(self.config.factor), torch.tensor(1.0))
        return ctx.advantages_N * factor.to(ctx.advantages_N.device, ctx.advantages_N.dtype)


class ConfigOnly(Strategy):
    """Implements no hook: refused as a sequence strategy (it would silently do nothing)."""

    Config = ShortCompletionBonusConfig


class TokenHookOnly(Strategy):
    """Implements a token hook only: refused as a sequence strategy."""

    def token_weights(self, batch) -> torch.Tensor:
        return torch.ones_like(batch.advantages)
