"""Per-sample weights of supervised (SFT) losses: the recipe section ``weighting.samples`` (torch only).

The SFT trainer multiplies each sample's token losses by ``w_i`` (mean 1 over the gathered batch); the strategies
listed here compute ``w_i`` from the samples' own losses. They reuse the sequence strategies' pure math and
configs, so one method has one implementation whatever the algorithm:

=====================  ==========================================  ==================================================
name                   paper                                       math
=====================  ==========================================  ==================================================
``loss_reweighting``   Sow et al., ICLR 2025, arXiv 2502.06733     :class:`~posttrain.weighting.sequences.
                                                                   LossSampleWeighter` (burn-in, then
                                                                   :func:`~posttrain.weighting.sequences.
                                                                   loss_sample_weights`); per-sample loss
                                                                   :func:`~posttrain.weighting.sequences.
                                                                   token_mean_nll`; arguments
                                                                   :class:`~posttrain.weighting.sequences.
                                                                   LossReweightingConfig`
=====================  ==========================================  ==================================================

A built sample strategy is the registered sequence strategy object (its ``config``, ``weighter``, ``num_steps``,
``state_dict`` / ``load_state_dict`` and ``warnings``); the SFT trainer calls ``weighter.weights(losses)`` on the
all-gathered per-sample losses, never a GRPO hook.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from posttrain.weighting import protocol

#: the names ``weighting.samples`` accepts (each maps to the sequence strategy of the same name)
SAMPLE_STRATEGIES = ("loss_reweighting",)

__all__ = ["SAMPLE_STRATEGIES", "build_sample_strategies", "sample_strategy_warnings"]


def build_sample_strategies(specs: Sequence[Any], env: Optional[protocol.StrategyEnv] = None) -> List[Any]:
    """Build ``weighting.samples`` (specs or already built strategies). Errors are one line prefixed with the
    list index (``0: loss_reweighting: temperature: ...``); a name is allowed once."""
    out: List[Any] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, protocol.Strategy):
            strategy = spec
        else:
            try:
                name, _, _ = protocol.split_spec("sequence", spec)
                if name not in SAMPLE_STRATEGIES:
                    raise protocol.StrategyError(f"unknown sample strategy '{name}'; known: "
                                                 f"{', '.join(SAMPLE_STRATEGIES)}")
                strategy = protocol.build_strategy("sequence", spec, env)
            except ValueError as exc:
                raise type(exc)(f"{i}: {exc}") from None
        if strategy.name not in SAMPLE_STRATEGIES:
            raise protocol.StrategyError(f"{i}: '{strategy.name}' is not a sample strategy; known: "
                                         f"{', '.join(SAMPLE_STRATEGIES)}")
        if any(s.name == strategy.name for s in out):
            raise protocol.StrategyError(f"{i}: {strategy.name} is listed twice")
        out.append(strategy)
    return out


def sample_strategy_warnings(strategies: Sequence[Any]) -> List[str]:
    """Lines for settings that would make a strategy do nothing in this run (a burn-in as long as the run)."""
    return protocol.strategy_warnings(strategies)
