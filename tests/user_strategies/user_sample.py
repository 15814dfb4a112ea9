"""A user's SFT sample strategies, outside posttrain/, built by import path ``user_strategies.user_sample:Class``
(``tests/`` is on ``sys.path`` under pytest). Used by ``tests/test_sft_user_samples.py``."""
from __future__ import annotations

from typing import ClassVar, List, Tuple

import torch
from pydantic import Field

from posttrain.weighting.protocol import SampleContext, Strategy, StrategyConfig


class ColumnScaleConfig(StrategyConfig):
    scale: float = Field(1.0, ge=0, description="multiplies the 'quality' column into the sample weights")


class ColumnScale(Strategy):
    """Sample weights ``scale * quality`` from a user data column. Records ``(step, N)`` of every call."""

    Config = ColumnScaleConfig
    columns: ClassVar[Tuple[str, ...]] = ("quality",)

    def __init__(self, config=None, env=None):
        super().__init__(config, env)
        self.calls: List[Tuple[int, int]] = []

    def sample_weights(self, ctx: SampleContext) -> torch.Tensor:
        self.calls.append((ctx.step, int(ctx.losses_N.numel())))
        ctx.log("user/quality_mean", float(ctx.columns["quality"].mean()))
        return self.config.scale * ctx.columns["quality"]


class ZeroSamples(Strategy):
    """Every sample's weight 0: the loss is 0 and training changes nothing."""

    def sample_weights(self, ctx: SampleContext) -> torch.Tensor:
        return torch.zeros_like(ctx.losses_N)


class WrongLength(Strategy):
    """Returns one weight too few (a bug the trainer must name)."""

    def sample_weights(self, ctx: SampleContext) -> torch.Tensor:
        return torch.ones(ctx.losses_N.numel() - 1)


class Exploding(Strategy):
    def sample_weights(self, ctx: SampleContext) -> torch.Tensor:
        raise RuntimeError("boom from a user sample strategy")


class Plain(Strategy):
    """No hook: refused (it would silently do nothing)."""
