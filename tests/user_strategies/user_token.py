"""A user's token strategies, outside posttrain/: tests build them by import path ``user_strategies.user_token:X``."""
import torch
from pydantic import Field

from posttrain.weighting.protocol import Strategy, StrategyConfig


class ConstantWeights(Strategy):
    """Every valid token gets the weight ``factor``."""

    needs = frozenset({"entropies"})

    class Config(StrategyConfig):
        factor: float = Field(0.5, gt=0.0, description="the weight of every token")

    def token_weights(self, batch):
        return torch.full(batch.mask.shape, float(self.config.factor))


class EntropyLoss(Strategy):
    """An extra per-token loss ``coef * H`` that asks for the policy loss without ratio clipping."""

    needs = frozenset({"entropies"})
    disables_clipping = True

    class Config(StrategyConfig):
        coef: float = Field(0.1, ge=0.0, description="coefficient of the entropy")

    def token_loss(self, batch):
        loss = self.config.coef * batch.entropies * batch.mask
        return loss, {"coef": float(self.config.coef)}


class ShiftedAdvantages(Strategy):
    """Advantages plus ``shift`` on every token, and weights 2 (two token hooks in one class)."""

    class Config(StrategyConfig):
        shift: float = Field(1.0, description="added to every advantage")

    def token_advantages(self, batch):
        adv = batch.advantages if batch.advantages.dim() == 2 else batch.advantages.unsqueeze(1)
        return (adv + self.config.shift).expand(batch.mask.shape) * batch.mask

    def token_weights(self, batch):
        return torch.full(batch.mask.shape, 2.0)


class PairOnly(Strategy):
    """Implements a pair hook only: as a token strategy it would do nothing."""

    def pair_weights(self, ctx):
        return torch.ones(ctx.policy_chosen_B.shape)


class NoHook(Strategy):
    """Implements no hook at all."""


class NotAStrategy:
    """Has a token hook but does not subclass Strategy."""

    def token_weights(self, batch):
        return torch.ones(batch.mask.shape)


def doubled(batch, *, factor: float = 2.0):
    """A plain function strategy: a weight, needing nothing extra."""
    return torch.full(batch.mask.shape, factor)


def at_most_one(batch, *, factor: float = 0.5):
    """A plain function whose own check (factor <= 1) no signature-derived Config knows about."""
    if factor > 1:
        raise ValueError(f"factor must be <= 1, got {factor}")
    return torch.full(batch.mask.shape, factor)
