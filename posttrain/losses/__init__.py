"""Losses (pure torch; never imports TRL or transformers).

Each function stands alone so users can drop it into their own training loop::

    from posttrain.losses import policy_loss, dpo_loss, kl_divergence, selective_logprobs_and_entropy

* :func:`policy_loss` — policy-gradient loss of the GRPO family (GRPO / DAPO / Dr. GRPO / BNPO / GSPO / LUSPO, and
  the CISPO / SAPO / VESPO surrogates), per-token weights, k1/k2/k3 KL penalty, explicit aggregation, off-policy
  sequence mask, rollout importance-sampling ratio, entropy bonus; equals TRL 1.16's GRPOTrainer loss for every
  ``loss_type`` (:data:`TRL_LOSS_TYPES`, :func:`trl_scaled_loss`).
* :func:`vllm_importance_sampling_ratio`, :func:`off_policy_sequence_mask`, :func:`vespo_gamma_weights`,
  :func:`entropy_bonus`, :class:`AdaptiveEntropyCoef` — the pieces, as TRL 1.16 computes them.
* :func:`kl_divergence` — per-token KL estimators k1 / k2 / k3.
* :func:`weighted_sft_loss` — TRL 1.16's SFT loss (``nll`` / ``dft``) with per-sample weights;
  :func:`relift_sft_loss` — ReLIFT's token-mean NLL minus an entropy bonus.
* :func:`dpo_loss` / :func:`rpo_nll_term` — DPO (sigmoid, cDPO), IPO, hinge (SLiC), robust DPO; RPO's NLL term.
* :func:`grpo_advantages` (alias :func:`group_advantages`, TRL 1.16's ``sum_then_normalize``),
  :func:`rloo_advantages`, :func:`remax_advantages`, :func:`reinforce_pp_advantages`,
  :func:`reinforce_pp_baseline_advantages` — critic-free advantage estimators from scalar rewards
  (docs/advantages.md).
* :func:`selective_logprobs_and_entropy` — per-token log-probs and entropies from hidden states + LM head (or
  logits), chunked in forward *and* backward so the [B, T, V] fp32 logits never exist.
* :func:`entropy_loss`, :func:`neg_entropy_reward`, :func:`em_inf_adjust_logits`,
  :func:`adaptive_temperature_logits` — entropy minimisation EM-FT / EM-RL / EM-INF (arXiv 2505.15134).

See docs/losses.md.
"""
from .advantages import (ADVANTAGE_ESTIMATORS, grpo_advantages, group_advantages, kl_penalized_rewards,
                         reinforce_pp_advantages, reinforce_pp_baseline_advantages, remax_advantages, rloo_advantages)
from .entropy import (adaptive_temperature_logits, em_inf_adjust_logits, entropy_loss, neg_entropy_reward,
                      token_mean_entropy)
from .kl import KL_ESTIMATORS, kl_divergence
from .sft import relift_sft_loss, weighted_sft_loss
from .logprobs import selective_logprobs_and_entropy
from .policy import (
    AGGREGATIONS,
    IS_MODES,
    SURROGATES,
    TRL_LOSS_TYPES,
    AdaptiveEntropyCoef,
    entropy_bonus,
    off_policy_sequence_mask,
    policy_loss,
    trl_scaled_loss,
    vespo_gamma_weights,
    vllm_importance_sampling_ratio,
)
from .preference import DPO_LOSS_TYPES, dpo_loss, rpo_nll_term
from .weighted_preference import weighted_preference_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "IS_MODES",
    "KL_ESTIMATORS",
    "SURROGATES",
    "TRL_LOSS_TYPES",
    "AdaptiveEntropyCoef",
    "adaptive_temperature_logits",
    "em_inf_adjust_logits",
    "entropy_loss",
    "neg_entropy_reward",
    "token_mean_entropy",
    "dpo_loss",
    "entropy_bonus",
    "grpo_advantages",
    "group_advantages",
    "kl_divergence",
    "kl_penalized_rewards",
    "off_policy_sequence_mask",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rloo_advantages",
    "relift_sft_loss",
    "rpo_nll_term",
    "selective_logprobs_and_entropy",
    "trl_scaled_loss",
    "vespo_gamma_weights",
    "vllm_importance_sampling_ratio",
    "weighted_preference_loss",
    "weighted_sft_loss",
]
