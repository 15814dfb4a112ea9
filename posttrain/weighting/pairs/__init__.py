"""Per-pair weighting of DPO-family losses: the ``pair`` strategies, one file per method (torch only).

* :mod:`.madpo` -- MADPO, Margin-Adaptive DPO (arXiv 2510.05342): ``madpo`` implements ``pair_weights`` (a weight
  per pair from its reward-model margin; needs a ``margin`` column). Pure math: :func:`madpo_coefficient`,
  :func:`madpo_weights`.
* :mod:`.beta_dpo` -- beta-DPO, DPO with dynamic beta (Wu et al., NeurIPS 2024, arXiv 2407.08639): ``beta_dpo``
  implements ``batch_beta`` (keep mask + batch beta from the all-gathered implicit-reward gaps). Pure math and
  state: :class:`BetaDPO`.
* :mod:`.rpo` -- RPO (Liu et al., NeurIPS 2024, arXiv 2405.16436): documented there; not a pair strategy (it is
  TRL's ``sft`` loss term, ``train.loss_type: [sigmoid, sft]``).

The DPO trainer calls every strategy implementing ``pair_weights`` (their weights multiply, with a ``weight``
column) and at most one implementing ``batch_beta`` (:func:`split_pair_strategies` checks this). A user strategy
is a :class:`~posttrain.weighting.protocol.Strategy` subclass given by import path (``pkg.mod:Class``).

House rules: every returned weight is detached; any finite input gives finite output; a non-finite input raises
``ValueError`` naming the argument. Batch statistics are computed over exactly the tensors handed in (the strategy
all-gathers through ``ctx.all_gather`` where the method's scope is global).
The strategy classes are registered with the protocol (``protocol.registered("pair")``).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from posttrain.registry import RegistryError
from posttrain.weighting.protocol import (HOOKS, Strategy, StrategyEnv, StrategyError, build_strategy, implemented_hooks,
                                          required_columns)

from . import rpo
from .beta_dpo import BetaDPO, BetaDPOConfig, BetaDPOStrategy
from .madpo import MADPOConfig, MADPOStrategy, madpo_coefficient, madpo_weights
from .rpo import rpo_trl_args

__all__ = [
    "madpo_coefficient",
    "madpo_weights",
    "BetaDPO",
    "MADPOConfig",
    "MADPOStrategy",
    "BetaDPOConfig",
    "BetaDPOStrategy",
    "rpo",
    "rpo_trl_args",
    "build_pair_strategies",
    "split_pair_strategies",
    "required_columns",
]



def _label(strategy: Strategy) -> str:
    return strategy.name or type(strategy).__name__


def build_pair_strategies(specs: Sequence[Any], env: Optional[StrategyEnv] = None) -> List[Strategy]:
    """Pair strategies from recipe specs (``{"name": "madpo", "tau": 2.0}``, ``"beta_dpo"``, an import path
    ``pkg.mod:Class``) or already-built :class:`Strategy` instances (kept as they are, after the same checks), in
    order. Errors are one line prefixed with the entry's index (``"1: beta_dpo: rho: ..."``). A strategy may be
    listed twice (two weightings multiply); two ``batch_beta`` strategies are refused (:func:`split_pair_strategies`).
    """
    out: List[Strategy] = []
    for i, spec in enumerate(specs):
        try:
            if isinstance(spec, Strategy):  # built already: the checks a registered class gets
                if (spec.kind and spec.kind != "pair") or not set(implemented_hooks(spec)) & set(HOOKS["pair"]):
                    raise StrategyError(f"{_label(spec)} is not a pair strategy (it implements none of "
                                        f"{', '.join(HOOKS['pair'])})")
                out.append(spec)
            else:
                out.append(build_strategy("pair", spec, env))
        except (StrategyError, RegistryError, ValueError, TypeError) as exc:
            raise type(exc)(f"{i}: {exc}") from None
    split_pair_strategies(out)
    return out


def split_pair_strategies(strategies: Sequence[Strategy]) -> Tuple[List[Strategy], Optional[Strategy]]:
    """``(weight strategies, batch-beta strategy or None)`` of built pair strategies, in list order. Raises a
    one-line :class:`StrategyError` (``"<i>: <name>: only one batch-beta strategy is allowed (already have
    <name>)"``) when two implement ``batch_beta``: two dynamic betas cannot both set the batch beta."""
    weighters: List[Strategy] = []
    beta: Optional[Strategy] = None
    for i, strategy in enumerate(strategies):
        hooks = implemented_hooks(strategy)
        if "batch_beta" in hooks:
            if beta is not None:
                raise StrategyError(f"{i}: {_label(strategy)}: only one batch-beta strategy is allowed "
                                    f"(already have {_label(beta)})")
            beta = strategy
        if "pair_weights" in hooks:
            weighters.append(strategy)
    return weighters, beta


