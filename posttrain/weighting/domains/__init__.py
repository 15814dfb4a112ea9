"""Domain (data-mixture) weights for SFT and GRPO over several datasets / prompt domains: the ``domain`` strategies,
one file per method (torch only; never imports a trainer, TRL or transformers). User guide: ``docs/domains.md``.

* ``fixed`` -- constant mix, given or proportional to size; hook ``domain_weights``; :func:`fixed_domain_weights`.
* ``temperature`` -- temperature sampling ``p ∝ n^(1/T)`` with the cooldown of arXiv 2410.04579; hook
  ``domain_weights``; :func:`temperature_weights`, :func:`cooldown_temperature`.
* ``upweight`` -- natural sampling with loss factors ``p(T)/q`` (arXiv 2410.04579); hooks ``domain_weights`` and
  ``domain_loss_weights``; :func:`upweight_factors`.
* ``influence`` -- TiKMiX-style group influence (arXiv 2508.17677); hook ``domain_weights``;
  :func:`influence_scores`, :func:`influence_weights`.
* ``bilevel`` -- first-order bilevel rule (ScaleBiO arXiv 2406.19976 / DreamPRM arXiv 2505.20241), entropic mirror
  descent; hook ``domain_weights``; :func:`mirror_descent_step`; the only stateful one.

Data Mixing Agent (arXiv 2507.15640) is not implemented: it is a learned policy (offline RL on proxy-model
trajectories) with no official code; ``docs/domains.md`` says what was and was not possible.

House rules: weights stay on the simplex (non-negative, sum 1); any finite input gives finite output; a non-finite
input raises ``ValueError`` naming the argument; a domain of size 0 is an error. Only ``bilevel`` keeps state.
"""
from __future__ import annotations

from posttrain.weighting.domains.bilevel import BilevelConfig, BilevelMixing, mirror_descent_step
from posttrain.weighting.domains.fixed import FixedDomainConfig, FixedDomains, fixed_domain_weights
from posttrain.weighting.domains.influence import (InfluenceConfig, InfluenceMixing, influence_scores,
                                                   influence_weights, standardize_scores)
from posttrain.weighting.domains.temperature import (TemperatureSampling, TemperatureScheduleConfig,
                                                     cooldown_temperature, temperature_weights)
from posttrain.weighting.domains.upweight import Upweighting, upweight_factors
from posttrain.weighting.domains._common import apply_floor

__all__ = [
    "fixed_domain_weights", "FixedDomainConfig", "FixedDomains",
    "temperature_weights", "cooldown_temperature", "TemperatureScheduleConfig", "TemperatureSampling",
    "upweight_factors", "Upweighting",
    "influence_scores", "standardize_scores", "influence_weights", "InfluenceConfig", "InfluenceMixing",
    "mirror_descent_step", "BilevelConfig", "BilevelMixing",
    "apply_floor",
]
