"""User strategies of every GRPO kind, written outside ``posttrain/`` exactly as a user would, for the tests that
check that each one takes effect in a real training run (``tests.user_strategies.grpo_kinds:<Class>``)."""
import os

import torch

from posttrain.weighting.protocol import Strategy, StrategyConfig


class SecondRewardOnly(Strategy):
    """Objective strategy: the whole weight on the second reward; counts its calls."""

    calls = 0

    def mix_weights(self, ctx):
        type(self).calls += 1
        return [0.0] * (len(ctx.reward_names) - 1) + [1.0]


class ZeroAdvantages(Strategy):
    """Advantage estimator: every advantage 0 (the policy cannot move)."""

    calls = 0

    def estimate(self, ctx):
        type(self).calls += 1
        return torch.zeros_like(ctx.rewards_N)


class ScaleAdvantagesConfig(StrategyConfig):
    factor: float = 1.0


class ScaleAdvantages(Strategy):
    """Sequence strategy: multiplies every advantage by ``factor`` (0 freezes the policy)."""

    Config = ScaleAdvantagesConfig
    calls = 0

    def adjust_advantages(self, ctx):
        type(self).calls += 1
        ctx.log("user/scale", self.config.factor)
        return ctx.advantages_N * self.config.factor


class ZeroTokenWeights(Strategy):
    """Token strategy: every token weight 0 (no gradient reaches the policy)."""

    calls = 0

    def token_weights(self, batch):
        type(self).calls += 1
        return torch.zeros_like(batch.mask, dtype=torch.float32)


class Exploding(Strategy):
    """Sequence strategy whose hook raises: the run must stop with a checkpoint and a one-line message."""

    def adjust_advantages(self, ctx):
        raise RuntimeError("boom from a user strategy")


class DoesNothing(Strategy):
    """Implements no hook at all: must be refused, never silently ignored."""


class OnesTokenWeights(Strategy):
    """Token strategy with neutral weights: the loss must then be exactly TRL's own."""

    def token_weights(self, batch):
        return batch.mask.float()


class ExplodesOnRankOne(Strategy):
    """Token strategy (neutral weights) whose hook raises on process 1 only once training runs (the validate-time
    dry run happens before the process group exists): every process must stop at that step."""

    def token_weights(self, batch):
        if torch.distributed.is_initialized() and int(os.environ.get("RANK", "0")) == 1:
            raise RuntimeError("boom on rank 1 only")
        return torch.ones_like(batch.mask, dtype=torch.float32)


class ExplodesAlways(Strategy):
    """Token strategy whose hook always raises (a RuntimeError): refused at validate time, in one line."""

    def token_weights(self, batch):
        raise RuntimeError("boom in token_weights")
