"""Per-objective reward weights that adapt during online RL (torch/numpy/math only; never imports TRL).

Each reward function of a GRPO recipe is an objective ``k`` with reward ``r_k``; a strategy supplies weights
``w_k(t)`` and the trainer forms ``r = sum_k w_k r_k`` (plus, for some strategies, an extra factor documented on
the class). User guide: ``docs/weighting_objectives.md``; specs: ``methods.md`` C8-C11.

==========================================  ================================  =======================================
strategy (registry name)                    paper                             ``update(...)`` input
==========================================  ================================  =======================================
:class:`FixedWeights` ``fixed``             linear scalarisation              (ignored)
:class:`HypervolumeWeights` ``hypervolume`` DRW (a), arXiv 2509.11452         held-out performance vector
:class:`GradientWeights` ``gradient``       DRW (b), arXiv 2509.11452         per-objective policy gradients, lr
:class:`LagrangianWeights` ``lagrangian``   Constrained RLHF, arXiv 2310.04373 per-objective mean returns
:class:`ConvergenceInstabilityWeights`      RECAP-like, arXiv 2510.21978v2    per-objective losses (or surrogate)
``convergence_instability`` / ``recap``
:class:`TrustWeighting` ``trust``           Trust-GRPO, arXiv 2505.17018      step (rewards via ``combine``)
==========================================  ================================  =======================================

Common protocol: ``.weights() -> list[float]``, ``.update(...)``, ``.state_dict()`` (JSON-serialisable),
``.load_state_dict(sd)``, ``.from_state_dict(sd)``, ``.step``, ``.names``, ``.named_weights()``.
Pure functions: :func:`hypervolume`, :func:`hypervolume_contribution`, :func:`pareto_front`,
:func:`gram_alignment`, :func:`meta_reward_from_hvc`.
"""
from __future__ import annotations

from posttrain.registry import Registry
from posttrain.weighting.objectives._common import ObjectiveWeighting
from posttrain.weighting.objectives.fixed import FixedWeights
from posttrain.weighting.objectives.gradient import GradientWeights, gram_alignment
from posttrain.weighting.objectives.hypervolume import hypervolume, hypervolume_contribution, pareto_front
from posttrain.weighting.objectives.hypervolume_guided import HypervolumeWeights, meta_reward_from_hvc
from posttrain.weighting.objectives.lagrangian import LagrangianWeights
from posttrain.weighting.objectives.recap import ConvergenceInstabilityWeights
from posttrain.weighting.objectives.trust import TrustWeighting

__all__ = [
    "OBJECTIVE_STRATEGIES",
    "ObjectiveWeighting",
    "FixedWeights",
    "HypervolumeWeights",
    "GradientWeights",
    "LagrangianWeights",
    "ConvergenceInstabilityWeights",
    "TrustWeighting",
    "hypervolume",
    "hypervolume_contribution",
    "pareto_front",
    "gram_alignment",
    "meta_reward_from_hvc",
]

OBJECTIVE_STRATEGIES = Registry("objective weighting strategy")
OBJECTIVE_STRATEGIES.register("fixed", FixedWeights)
OBJECTIVE_STRATEGIES.register("hypervolume", HypervolumeWeights)
OBJECTIVE_STRATEGIES.register("gradient", GradientWeights)
OBJECTIVE_STRATEGIES.register("lagrangian", LagrangianWeights)
OBJECTIVE_STRATEGIES.register("convergence_instability", ConvergenceInstabilityWeights)
OBJECTIVE_STRATEGIES.register("recap", ConvergenceInstabilityWeights)  # alias; RECAP-like, see the class docstring
OBJECTIVE_STRATEGIES.register("trust", TrustWeighting)
