"""Per-sample weights of supervised (SFT) losses: the ``sample`` strategy kind, recipe section ``weighting.samples``
(torch only).

The SFT trainer builds a :class:`~posttrain.weighting.protocol.SampleContext` per micro-batch (every sample's
token-mean NLL, gathered over processes) and multiplies each sample's token losses by the product of every sample
strategy's ``sample_weights(ctx)`` (and the data's ``weight`` column). A user's own strategy is a
``Strategy`` subclass with the hook ``sample_weights``, named by import path (``name: my_pkg.mod:MyWeights``).

=====================  ==========================================  ==================================================
name                   paper                                       math
=====================  ==========================================  ==================================================
``loss_reweighting``   Sow et al., ICLR 2025, arXiv 2502.06733     :class:`~posttrain.weighting.sequences.
                                                                   LossSampleWeighter` (burn-in, then
                                                                   :func:`~posttrain.weighting.sequences.
                                                                   loss_sample_weights`) on the per-sample loss
                                                                   :func:`~posttrain.weighting.sequences.
                                                                   token_mean_nll`; arguments
                                                                   :class:`~posttrain.weighting.sequences.
                                                                   LossReweightingConfig` (one implementation
                                                                   with the GRPO sequence strategy)
=====================  ==========================================  ==================================================
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from posttrain.weighting import protocol
from posttrain.weighting.protocol import SampleContext, Strategy, StrategyEnv, register_strategy
from posttrain.weighting.sequences.loss_reweighting import LossReweighting, LossReweightingConfig, LossSampleWeighter

__all__ = ["LossReweightingSamples", "build_sample_strategies", "sample_strategy_warnings"]


@register_strategy("sample", "loss_reweighting")
class LossReweightingSamples(Strategy):
    """Sow et al.: up- or down-weight SFT samples by their loss within the batch (arXiv 2502.06733, Sec. 3).

    Hook ``sample_weights(ctx)`` (training only): burn-in counter ``num_steps = ctx.step`` (completed optimizer
    steps), weights :meth:`~posttrain.weighting.sequences.LossSampleWeighter.weights` of ``ctx.losses_N`` (the
    gathered token-mean NLLs: the official all-process scope) times ``N`` (mean 1). With one process this is the
    official repo's loss ``sum_i w_i (n_i / sum n) l_i * B`` under the trainer's token-mean denominator.
    State: ``{"num_steps": int}``.
    """

    Config = LossReweightingConfig
    cite = LossReweighting.cite
    warnings = classmethod(LossReweighting.warnings.__func__)

    def __init__(self, config: Optional[LossReweightingConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        self.weighter = LossSampleWeighter(strategy=c.strategy, temperature=c.temperature, delta=c.delta,
                                           burn_in_steps=c.burn_in_steps)

    @torch.no_grad()
    def sample_weights(self, ctx: SampleContext) -> torch.Tensor:
        self.weighter.num_steps = int(ctx.step)  # burn-in counts completed optimizer steps
        losses = ctx.losses_N.float()
        return self.weighter.weights(losses) * losses.numel()

    def state_dict(self) -> Dict[str, Any]:
        return self.weighter.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.weighter.load_state_dict(state)


def build_sample_strategies(specs: Sequence[Any], env: Optional[StrategyEnv] = None) -> List[Strategy]:
    """Build ``weighting.samples`` (specs or already built strategies). Errors are one line prefixed with the
    list index (``0: loss_reweighting: temperature: ...``); a name is allowed once."""
    built = [s for s in specs if isinstance(s, Strategy)]
    for s in built:
        if s.kind != "sample":
            raise protocol.StrategyError(f"'{s.name}' is a {s.kind or 'untyped'} strategy, not a sample strategy")
    if len(built) == len(specs):
        return list(specs)
    if built:
        raise protocol.StrategyError("give weighting.samples as specs or as built strategies, not both")
    return protocol.build_strategies("sample", specs, env)


def sample_strategy_warnings(strategies: Sequence[Any]) -> List[str]:
    """Lines for settings that would make a strategy do nothing in this run (a burn-in as long as the run)."""
    return protocol.strategy_warnings(strategies)
