"""Losses (pure torch; never imports TRL or transformers).

Each function stands alone so users can drop it into their own training loop::

    from posttrain.losses import policy_loss, dpo_loss, kl_divergence, selective_logprobs_and_entropy

* :func:`policy_loss` — clipped policy-gradient loss of the GRPO family (GRPO / DAPO / Dr. GRPO / BNPO / GSPO),
  per-token weights, k1/k2/k3 KL penalty, explicit aggregation; equals TRL 1.16's GRPOTrainer loss.
* :func:`kl_divergence` — per-token KL estimators k1 / k2 / k3.
* :func:`dpo_loss` / :func:`rpo_nll_term` — DPO (sigmoid, cDPO), IPO, hinge (SLiC), robust DPO; RPO's NLL term.
* :func:`group_advantages` — GRPO group advantages from scalar rewards (TRL 1.16's ``sum_then_normalize``).
* :func:`selective_logprobs_and_entropy` — per-token log-probs and entropies from hidden states + LM head (or
  logits), chunked in forward *and* backward so the [B, T, V] fp32 logits never exist.

See docs/losses.md.
"""
from .advantages import group_advantages
from .kl import KL_ESTIMATORS, kl_divergence
from .logprobs import selective_logprobs_and_entropy
from .policy import AGGREGATIONS, policy_loss
from .preference import DPO_LOSS_TYPES, dpo_loss, rpo_nll_term
from .weighted_preference import weighted_preference_loss

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "dpo_loss",
    "group_advantages",
    "kl_divergence",
    "policy_loss",
    "rpo_nll_term",
    "selective_logprobs_and_entropy",
    "weighted_preference_loss",
]
