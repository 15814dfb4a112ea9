"""The DPO-family loss of a batch with per-pair weights, a keep mask and TRL's loss-type combination (torch only).

For ``B`` pairs with per-pair weights ``w_i`` (a ``weight`` column times the pair strategies' weights, e.g. MADPO's),
a keep mask ``keep_i`` (beta-DPO's filter) and the batch beta ``beta_b``::

    L = sum_k lambda_k * ( sum_i w_i keep_i l_k,i(beta_b) / max(sum_i keep_i, 1) )   for each pairwise loss type k
      + lambda_sft * NLL(chosen)                                                    if "sft" is among the types

with ``l_k,i`` from :func:`posttrain.losses.preference.dpo_loss` and ``lambda_k`` TRL 1.16's ``loss_weights``.
With unit weights and nothing filtered it is TRL's ``DPOTrainer`` loss for the same ``loss_type`` list (a plain
mean per type, weights summed); weights are not renormalised (MADPO's plain mean), filtered pairs leave both the
numerator and the denominator (beta-DPO's masked mean, Wu et al. arXiv 2407.08639, official
``junkangwu/beta-DPO`` ``trainers.py::preference_loss``). Details kept from TRL 1.16:

* ``ipo`` works on length-normalised log-ratios: each sequence log-prob divided by its number of completion tokens
  (at least 1), as TRL's ``DPOTrainer._compute_loss`` does before the IPO loss.
* ``sft`` is RPO's SFT term (:func:`posttrain.losses.preference.rpo_nll_term`, the token-mean NLL over all chosen
  tokens of the batch): never weighted, never filtered.
* ``label_smoothing`` applies to ``robust`` only (TRL 1.16's ``sigmoid`` has no label smoothing).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .preference import DPO_LOSS_TYPES, dpo_loss, rpo_nll_term

__all__ = ["WEIGHTED_LOSS_TYPES", "weighted_preference_loss"]

#: loss types :func:`weighted_preference_loss` combines: the pairwise ones and RPO's ``sft`` term
WEIGHTED_LOSS_TYPES = DPO_LOSS_TYPES + ("sft",)


def weighted_preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_types: Sequence[str] = ("sigmoid",),
    loss_weights: Optional[Sequence[float]] = None,
    weights: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
    chosen_token_logps: Optional[torch.Tensor] = None,
    chosen_mask: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The batch loss ``sum_k lambda_k sum_i w_i keep_i l_k,i(beta) / max(sum_i keep_i, 1)`` (+ ``sft``) -- 0-d,
    carrying the gradient of the policy log-probs.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[B]`` sequence
            log-probs (summed over completion tokens); the reference ones are constants.
        beta: the batch beta (> 0; beta-DPO's ``beta_b`` or the recipe's beta).
        loss_types: TRL's ``loss_type`` list, each of :data:`WEIGHTED_LOSS_TYPES`; ``loss_weights``: one factor
            per type (``None``: all 1, as TRL).
        weights: ``[B]`` per-pair weights (detached; ``None``: all 1). keep: ``[B]`` bool/0-1 mask (``None``: all).
        chosen_lengths, rejected_lengths: ``[B]`` completion token counts; required for ``ipo`` (clamped to >= 1).
        chosen_token_logps, chosen_mask: ``[B, T]`` per-token log-probs and mask of the chosen completions;
            required for ``sft``.
        label_smoothing: the robust-DPO flip rate for ``robust`` (ignored by the other types).

    Raises ``ValueError`` for an unknown loss type, mismatched ``loss_weights``, or a missing input a type needs.
    """
    loss_types = list(loss_types)
    unknown = [t for t in loss_types if t not in WEIGHTED_LOSS_TYPES]
    if unknown:
        raise ValueError(f"unknown loss type(s) {unknown}; expected some of {', '.join(WEIGHTED_LOSS_TYPES)}")
    if not any(t in DPO_LOSS_TYPES for t in loss_types):
        raise ValueError(f"loss_types {loss_types} has no pairwise term (one of {', '.join(DPO_LOSS_TYPES)})")
    factors = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    if len(factors) != len(loss_types):
        raise ValueError(f"loss_weights has {len(factors)} entries for {len(loss_types)} loss types")
    chosen = policy_chosen_logps
    if weights is None:
        weights = torch.ones_like(chosen).detach()
    if keep is None:
        keep = torch.ones(chosen.shape, dtype=torch.bool, device=chosen.device)
    if "ipo" in loss_types and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError("loss type 'ipo' needs chosen_lengths and rejected_lengths (completion token counts)")
    if "sft" in loss_types and (chosen_token_logps is None or chosen_mask is None):
        raise ValueError("loss type 'sft' needs chosen_token_logps and chosen_mask ([B, T])")

    pair_weights = weights * keep.to(weights.dtype)
    denom = keep.sum().clamp(min=1).to(chosen.dtype)
    loss = chosen.new_zeros(())
    for loss_type, factor in zip(loss_types, factors, strict=True):
        if loss_type == "sft":
            loss = loss + factor * rpo_nll_term(chosen_token_logps, chosen_mask)
            continue
        logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
        if loss_type == "ipo":  # length-normalised log-ratios, as TRL
            len_chosen, len_rejected = chosen_lengths.clamp(min=1.0), rejected_lengths.clamp(min=1.0)
            logps = (logps[0] / len_chosen, logps[1] / len_rejected, logps[2] / len_chosen, logps[3] / len_rejected)
        losses, _, _ = dpo_loss(*logps, beta=beta, loss_type=loss_type, weights=pair_weights,
                                label_smoothing=label_smoothing if loss_type == "robust" else 0.0)
        loss = loss + factor * losses.sum() / denom
    return loss
