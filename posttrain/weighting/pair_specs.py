"""Compatibility shim: the pre-protocol entry points for ``weighting.pairs`` specs.

The pair strategies are protocol strategies now (:mod:`posttrain.weighting.pairs`; build them with
:func:`posttrain.weighting.pairs.build_pair_strategies` or ``protocol.build_strategies("pair", specs, env)``).
What is kept here, for callers not ported yet:

* :func:`dry_run_pair_specs` -- builds the strategies (pydantic checks every argument) and checks that at most one
  sets the batch beta; the recipe loader's ``posttrain validate`` path calls it.
* :class:`PairWeighting` / :func:`build_pair_weighting` -- a view of built strategies with the old attributes:
  ``margin_weights(margins)`` (the product of the weights of the strategies reading a ``margin`` column, as a
  function of the margins alone: the curve ``margins.png`` draws) and ``gap_strategy`` (the :class:`BetaDPO` state
  of a ``beta_dpo`` strategy, else the batch-beta strategy itself).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch

from posttrain.weighting.pairs import build_pair_strategies, split_pair_strategies
from posttrain.weighting.protocol import PairContext, Strategy, StrategyEnv

__all__ = ["PairWeighting", "build_pair_weighting", "dry_run_pair_specs"]


class PairWeighting:
    """Built pair strategies with the pre-protocol attributes (``margin_weights``, ``gap_strategy``)."""

    def __init__(self, strategies: Sequence[Strategy]):
        self.strategies: List[Strategy] = list(strategies)
        self.weighters, self.beta_strategy = split_pair_strategies(self.strategies)

    @property
    def needs_margins(self) -> bool:
        return any("margin" in getattr(s, "columns", ()) for s in self.weighters)

    @property
    def active(self) -> bool:
        return bool(self.strategies)

    @property
    def gap_strategy(self) -> Optional[Any]:
        return getattr(self.beta_strategy, "beta_dpo", self.beta_strategy)

    def margin_weights(self, margins: torch.Tensor) -> torch.Tensor:
        """Product of the margin strategies' weights (detached, shape of ``margins``); ones if there are none."""
        margins = torch.as_tensor(margins)
        w = torch.ones_like(margins, dtype=margins.dtype if margins.is_floating_point() else torch.float32)
        zeros = torch.zeros(margins.shape[:1], dtype=w.dtype)
        ctx = PairContext(policy_chosen_B=zeros, policy_rejected_B=zeros, ref_chosen_B=zeros, ref_rejected_B=zeros,
                          beta=0.1, columns={"margin": margins}, mode="eval")
        for strategy in self.weighters:
            if "margin" in getattr(strategy, "columns", ()):
                w = w * strategy.pair_weights(ctx).to(w.dtype)
        return w.detach()


def build_pair_weighting(specs: Sequence[Any], env: Optional[StrategyEnv] = None) -> PairWeighting:
    """:class:`PairWeighting` of ``[{"name": ..., **args}, ...]`` (errors: one line naming the index and strategy)."""
    return PairWeighting(build_pair_strategies(specs, env))


def dry_run_pair_specs(specs: Sequence[Any], env: Optional[StrategyEnv] = None) -> None:
    """Check ``weighting.pairs`` specs at ``posttrain validate`` time: every argument (pydantic) and at most one
    batch-beta strategy. Raises a one-line ``ValueError`` / ``RegistryError`` naming the index and strategy."""
    build_pair_strategies(specs, env)
