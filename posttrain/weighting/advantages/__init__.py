"""Advantage estimators as strategies of kind ``advantage`` (the recipe's ``advantage: {name: ...}``).

The pure estimators live in :mod:`posttrain.losses.advantages`; each file here registers one of them with the
strategy protocol (:mod:`posttrain.weighting.protocol`): ``grpo`` (default).
"""
from .grpo import GRPOAdvantage

__all__ = ["GRPOAdvantage"]
