"""Advantage estimators as strategies of kind ``advantage`` (the recipe's ``advantage: {name: ...}``).

The pure estimators live in :mod:`posttrain.losses.advantages`; each file here registers one of them with the
strategy protocol (:mod:`posttrain.weighting.protocol`): ``grpo`` (default), ``rloo``, ``remax``, ``reinforce_pp``,
``reinforce_pp_baseline``.
"""
from .grpo import GRPOAdvantage
from .reinforce_pp import ReinforcePP, ReinforcePPBaseline
from .remax import ReMax
from .rloo import RLOO

__all__ = ["GRPOAdvantage", "ReMax", "ReinforcePP", "ReinforcePPBaseline", "RLOO"]
