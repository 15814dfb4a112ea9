"""Losses (pure torch; never imports TRL or transformers).

Each function stands alone so users can drop it into their own training loop::

    from posttrain.losses import policy_loss, dpo_loss, kl_divergence, selective_logprobs_and_entropy

* :func:`policy_loss` — clipped policy-gradient loss of the GRPO family (GRPO / DAPO / Dr. GRPO / BNPO / GSPO),
  per-token weights, k1/k2/k3 KL penalty, explicit aggregation; equals TRL 1.16's GRPOTrainer loss.
* :func:`kl_divergence` — per-token KL estimators k1 / k2 / k3.
* :func:`dpo_loss` / :func:`rpo_nll_term` — DPO (sigmoid, cDPO), IPO, hinge (SLiC), robust DPO; RPO's NLL term.
* :func:`grpo_advantages` (alias :func:`group_advantages`, TRL 1.16's ``sum_then_normalize``),
  :func:`rloo_advantages`, :func:`remax_advantages`, :func:`reinforce_pp_advantages`,
  :func:`reinforce_pp_baseline_advantages` — critic-free advantage estimators from scalar rewards
  (docs/advantages.md).
* :func:`selective_logprobs_and_entropy` — per-token log-probs and entropies from hidden states + LM head (or
  logits), chunked in forward *and* backward so the [B, T, V] fp32 logits never exist.

See docs/losses.md.
"""
from .advantages import (ADVANTAGE_ESTIMATORS, grpo_advantages, group_advantages, kl_penalized_rewards,
                         reinforce_pp_advantages, reinforce_pp_baseline_advantages, remax_advantages, rloo_advantages)
from .kl import KL_ESTIMATORS, kl_divergence
from .logprobs import selective_logprobs_and_entropy
from .policy import AGGREGATIONS, policy_loss
from .preference import DPO_LOSS_TYPES, dpo_loss, rpo_nll_term

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "dpo_loss",
    "grpo_advantages",
    "group_advantages",
    "kl_divergence",
    "kl_penalized_rewards",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rloo_advantages",
    "rpo_nll_term",
    "selective_logprobs_and_entropy",
]
