"""A user's pair strategies, outside posttrain/, built by import path ``user_strategies.user_pair:Class``
(``tests/`` is on ``sys.path`` under pytest). Used by ``tests/test_strategies_pairs.py``."""
from __future__ import annotations

from typing import ClassVar, List, Tuple

import torch
from pydantic import Field

from posttrain.weighting.protocol import PairContext, Strategy, StrategyConfig


class ScaledColumnConfig(StrategyConfig):
    scale: float = Field(1.0, ge=0, description="multiplies the 'difficulty' column into the pair weights")


class ScaledColumnWeights(Strategy):
    """Pair weights ``scale * difficulty`` from a user data column (a toy: one hook, a config, a column, a log key).
    Records every call as ``(mode, number of pairs)`` in :attr:`calls`."""

    Config = ScaledColumnConfig
    columns: ClassVar[Tuple[str, ...]] = ("difficulty",)

    def __init__(self, config=None, env=None):
        super().__init__(config, env)
        self.calls: List[Tuple[str, int]] = []

    def pair_weights(self, ctx: PairContext) -> torch.Tensor:
        self.calls.append((ctx.mode, int(ctx.policy_chosen_B.numel())))
        ctx.log("user/difficulty_mean", float(ctx.columns["difficulty"].mean()))
        return (self.config.scale * ctx.columns["difficulty"]).detach()


class ZeroWeights(Strategy):
    """Every pair's weight 0: the loss is 0 and training changes nothing."""

    def pair_weights(self, ctx: PairContext) -> torch.Tensor:
        return torch.zeros_like(ctx.policy_chosen_B).detach()


class FailingBeta(Strategy):
    """A batch-beta strategy whose hook raises (the trainer must name it and the hook in one line)."""

    def batch_beta(self, ctx: PairContext):
        raise ValueError("no beta today\nsecond line")


class ConfigOnly(Strategy):
    """Implements no hook: refused as a pair strategy (it would silently do nothing)."""

    Config = ScaledColumnConfig


class TokenHookOnly(Strategy):
    """Implements a token hook only: refused as a pair strategy."""

    def token_weights(self, batch) -> torch.Tensor:
        return torch.ones_like(batch.advantages)
