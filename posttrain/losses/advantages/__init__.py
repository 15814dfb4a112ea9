"""Advantage estimators of the GRPO family, from scalar outcome rewards (pure torch; never imports TRL).

Shape-suffixed inputs (tinker-cookbook style): ``rewards_PG`` is a ``[P, G]`` reward matrix (P prompts x G samples),
or a flat ``[N]`` vector with ``group_size = G`` (the G rows of a prompt contiguous); ``mask_NT`` / ``kl_NT`` are
``[N, T]`` token tensors. NaN in a reward marks an unscorable sample (TRL 1.16's convention); +-inf is an error.

==================================  ========================================================  ================
function                            advantage                                                 output
==================================  ========================================================  ================
:func:`grpo_advantages`             ``(R - mean_g) / (std + eps)`` (group / batch / no std)   shape of rewards
:func:`rloo_advantages`             ``R - mean of the other G - 1``                           shape of rewards
:func:`remax_advantages`            ``R - R_greedy[prompt]``                                  shape of rewards
:func:`reinforce_pp_advantages`     return-to-go (+ in-reward KL), global token whitening     ``[N, T]``
:func:`reinforce_pp_baseline_...`   ``R - mean_g``, global token whitening                    ``[N, T]``
==================================  ========================================================  ================

Sequence-level outputs are broadcast over tokens by :func:`posttrain.losses.policy_loss` (``advantages`` ``[B]``).
Functions with global statistics take ``all_reduce`` (a sum all-reduce) so that the statistics cover every process.
See docs/advantages.md.
"""
from ._common import AllReduce
from .grpo import SCALES, grpo_advantages, group_advantages, nanstd
from .reinforce_pp import STATS, kl_penalized_rewards, reinforce_pp_advantages, reinforce_pp_baseline_advantages
from .remax import remax_advantages
from .rloo import SINGLETONS, rloo_advantages

ADVANTAGE_ESTIMATORS = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
    "remax": remax_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}
"""Name -> function, the names a recipe's ``advantage: {name: ...}`` will use (docs/advantages.md)."""

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AllReduce",
    "SCALES",
    "SINGLETONS",
    "STATS",
    "grpo_advantages",
    "group_advantages",
    "kl_penalized_rewards",
    "nanstd",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rloo_advantages",
]
