"""The supervised (SFT) loss with per-sample weights, as TRL 1.16's ``SFTTrainer.compute_loss`` aggregates it.

    loss = sum_i w_i sum_t m_it * l_it / max(num_tokens, 1)
    l_it = -log p_it                      (loss_type 'nll')
         = -log p_it * p_it (detached)    (loss_type 'dft', Wu et al., arXiv 2508.05629, as TRL)

``num_tokens`` is TRL's denominator: the loss tokens of the micro-batch, or ``num_items_in_batch`` (the loss
tokens of the whole accumulated batch on every process) when the Trainer passes it. ``w_i = 1`` gives TRL's loss.
Per-sample weights (a data column, loss-based reweighting: :mod:`posttrain.weighting.samples`) multiply every
token of their sample and keep the unweighted token count as the denominator (the "mask-count" aggregation of the
official codes; with loss-based weights of mean 1 on one process this is Sow et al.'s repo loss
``sum_i w_i (n_i / sum n) l_i * B``).
"""
from __future__ import annotations

from typing import Optional

import torch

from posttrain.checks import check_choice, check_finite
from posttrain.losses.policy import entropy_bonus

__all__ = ["SFT_LOSS_TYPES", "relift_sft_loss", "weighted_sft_loss"]

SFT_LOSS_TYPES = ("nll", "dft")


def weighted_sft_loss(token_logps: torch.Tensor, mask: torch.Tensor, weights: Optional[torch.Tensor] = None, *,
                      num_tokens: Optional[torch.Tensor | int | float] = None,
                      loss_type: str = "nll") -> torch.Tensor:
    """Scalar SFT loss from ``[B, T]`` per-token log-probs (zero, or anything, where ``mask`` is 0) and ``[B]``
    per-sample weights (detached; default 1). ``num_tokens``: the denominator (default ``mask.sum()``), clamped
    at 1 so a batch without loss tokens gives a finite 0. ``ValueError`` on mismatched shapes, non-finite weights
    or an unknown ``loss_type``."""
    check_choice("loss_type", loss_type, SFT_LOSS_TYPES)
    if token_logps.shape != mask.shape:
        raise ValueError(f"shape mismatch: token_logps={tuple(token_logps.shape)}, mask={tuple(mask.shape)}")
    valid = mask.bool()
    per_token = -token_logps.masked_fill(~valid, 0.0)
    if loss_type == "dft":
        per_token = per_token * token_logps.detach().exp().masked_fill(~valid, 0.0)
    if weights is not None:
        if weights.shape != token_logps.shape[:1]:
            raise ValueError(f"weights must have shape [{token_logps.shape[0]}], got {tuple(weights.shape)}")
        check_finite("weights", weights)
        per_token = per_token * weights.detach().to(per_token.dtype).unsqueeze(1)
    denom = valid.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=per_token.device)
    return per_token.sum() / denom.clamp(min=1)


def relift_sft_loss(token_logps: torch.Tensor, entropies: torch.Tensor, mask: torch.Tensor, *,
                    entropy_coef: float = 0.001) -> torch.Tensor:
    """ReLIFT's SFT loss on demonstration tokens (Ma et al., arXiv 2506.07527; official code
    ``relift/verl/verl/relift/core_algos.py::compute_sft_loss`` and ``actor.py::sft_update_policy``)::

        loss = masked_mean(-log p, mask) - entropy_coef * masked_mean(H, mask)

    the token-mean NLL of the micro-batch (:func:`weighted_sft_loss` with unit weights) plus the entropy bonus
    (:func:`~posttrain.losses.policy.entropy_bonus`, same masked mean); official ``sft.entropy_coeff`` 0.001.
    ``[B, T]`` inputs; a mask with no token gives 0 (plus nothing), never NaN."""
    if entropies.shape != mask.shape:
        raise ValueError(f"shape mismatch: entropies={tuple(entropies.shape)}, mask={tuple(mask.shape)}")
    loss = weighted_sft_loss(token_logps, mask)
    if entropy_coef:
        loss = loss + entropy_bonus(entropies, mask, float(entropy_coef))
    return loss
