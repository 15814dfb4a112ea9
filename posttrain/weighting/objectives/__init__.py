"""Per-objective reward weights that adapt during online RL (torch/numpy/math only; never imports TRL).

Each reward function of a GRPO recipe is an objective ``k`` with reward ``r_k``; a strategy supplies weights
``w_k(t)`` and the trainer forms ``r = sum_k w_k r_k`` (plus, for some strategies, an extra factor documented on
the class). User guide: ``docs/weighting_objectives.md``.

One method, one file: ``fixed.py``, ``lagrangian.py``, ``recap.py``, ``trust.py``, ``hypervolume.py``,
``gradient.py``. Each holds the method's pure object (``*Weights``, below), its typed configuration
(``*Config``) and its objective :class:`~posttrain.weighting.protocol.Strategy` (``*Strategy``, registered with
``register_strategy("objective", name)``), whose hooks the GRPO trainer calls.

==========================================  ================================  =======================================
strategy (registry name)                    paper                             ``update(...)`` input
==========================================  ================================  =======================================
:class:`FixedWeights` ``fixed``             linear scalarisation              (ignored)
:class:`HypervolumeWeights` ``hypervolume`` DRW (a), arXiv 2509.11452         held-out performance vector
:class:`GradientWeights` ``gradient``       DRW (b), arXiv 2509.11452         per-objective policy gradients, lr
:class:`LagrangianWeights` ``lagrangian``   Constrained RLHF, arXiv 2310.04373 per-objective mean returns
:class:`RecapWeights` ``recap``             RECAP-like, arXiv 2510.21978v2    per-objective losses (or surrogate)
:class:`TrustWeighting` ``trust``           Trust-GRPO, arXiv 2505.17018      step (rewards via ``combine``)
==========================================  ================================  =======================================

``recap`` is also registered as ``convergence_instability``, and :class:`RecapWeights` is importable under its former
name ``ConvergenceInstabilityWeights``. :class:`HypervolumeWeights` and :func:`meta_reward_from_hvc` moved from
``hypervolume_guided.py`` to ``hypervolume.py`` (the old module re-exports them).

The pure objects' common interface: ``.weights() -> list[float]``, ``.update(...)``, ``.state_dict()``
(JSON-serialisable), ``.load_state_dict(sd)``, ``.from_state_dict(sd)``, ``.step``, ``.names``, ``.named_weights()``.
Pure functions: :func:`hypervolume`, :func:`hypervolume_contribution`, :func:`pareto_front`,
:func:`gram_alignment`, :func:`meta_reward_from_hvc`.
"""
from __future__ import annotations

from posttrain.weighting.objectives._common import ObjectiveWeighting
from posttrain.weighting.objectives.fixed import FixedConfig, FixedStrategy, FixedWeights
from posttrain.weighting.objectives.gradient import GradientConfig, GradientStrategy, GradientWeights, gram_alignment
from posttrain.weighting.objectives.hypervolume import (
    HypervolumeConfig,
    HypervolumeStrategy,
    HypervolumeWeights,
    hypervolume,
    hypervolume_contribution,
    meta_reward_from_hvc,
    pareto_front,
)
from posttrain.weighting.objectives.lagrangian import LagrangianConfig, LagrangianStrategy, LagrangianWeights
from posttrain.weighting.objectives.recap import (
    ConvergenceInstabilityWeights,
    RecapConfig,
    RecapStrategy,
    RecapWeights,
)
from posttrain.weighting.objectives.trust import TrustConfig, TrustStrategy, TrustWeighting

__all__ = [
    "ObjectiveWeighting",
    "FixedWeights",
    "HypervolumeWeights",
    "GradientWeights",
    "LagrangianWeights",
    "ConvergenceInstabilityWeights",
    "RecapWeights",
    "TrustWeighting",
    "FixedConfig", "FixedStrategy",
    "LagrangianConfig", "LagrangianStrategy",
    "RecapConfig", "RecapStrategy",
    "TrustConfig", "TrustStrategy",
    "HypervolumeConfig", "HypervolumeStrategy",
    "GradientConfig", "GradientStrategy",
    "hypervolume",
    "hypervolume_contribution",
    "pareto_front",
    "gram_alignment",
    "meta_reward_from_hvc",
]

