"""High-entropy ("forking") token mask of "Beyond the 80/20 Rule" (arXiv 2506.01939), TRL semantics."""
from __future__ import annotations

import torch

from ._common import check_finite, check_range, check_same_shape, quantile_linear, valid_of


def high_entropy_threshold(entropies: torch.Tensor, mask: torch.Tensor, *, top_fraction: float = 0.2):
    """The entropy threshold ``tau = torch.quantile(valid H as float32, 1 - top_fraction)``; ``None`` if no valid token.

    Exposed so a trainer can log it. Same semantics and checks as :func:`high_entropy_mask`.
    """
    rho = check_range("top_fraction", top_fraction, 0.0, 1.0)
    valid = valid_of(mask)
    check_same_shape(entropies=entropies, mask=mask)
    check_finite("entropies", entropies.detach(), valid)
    local = entropies.detach()[valid].float()
    if local.numel() == 0:
        return None
    return quantile_linear(local, 1 - rho)


def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, *, top_fraction: float = 0.2) -> torch.Tensor:
    """{0,1} weights keeping only the valid tokens whose entropy is in the top ``top_fraction``.

    Paper: Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM
    Reasoning", arXiv 2506.01939 (NeurIPS 2025), objective with the gate ``1[H_{i,t} >= tau_rho^B]``
    (``methods.md`` A2; no official code was found). We follow **TRL 1.16**
    ``GRPOTrainer.get_high_entropy_mask`` (``trl/trainer/grpo_trainer.py``, called with ``1 - top_entropy_quantile``)
    line for line, minus its cross-process gather:

    - ``tau = torch.quantile(entropies[mask.bool()].float(), 1 - top_fraction)`` (linear interpolation);
    - keep ``(entropies * mask.float() >= tau) & mask.bool()`` (ties at ``tau`` are kept).

    For n distinct values this keeps ``n - 1 - floor((1 - rho)(n - 1))`` tokens, not exactly ``ceil(rho n)``
    (n = 10, rho = 0.2 keeps 2). ``top_fraction = 1`` keeps every valid token; ``top_fraction = 0`` keeps the
    maximum and its ties; an empty mask keeps nothing. Default ``top_fraction = 0.2`` (the paper's rho).

    Scope: the quantile is taken over the tensors passed in. TRL gathers entropies from all processes first
    (``scope: global``); for that, the trainer passes the gathered batch. Above 2**24 valid tokens, where
    ``torch.quantile`` refuses, an equivalent ``kthvalue`` computation is used.

    Args:
        entropies: [B, T] token entropies (TRL: current policy, detached; any log base, only ranks matter).
        mask: [B, T], nonzero = valid.
        top_fraction: rho in [0, 1].

    Returns:
        float32 [B, T] detached tensor with values in {0, 1}; 0 on padding. NaN/inf entropies at valid
        positions raise ``ValueError``.
    """
    tau = high_entropy_threshold(entropies, mask, top_fraction=top_fraction)
    valid = valid_of(mask)
    if tau is None:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    with torch.no_grad():
        h = entropies.detach()
        keep = (h * mask.float() >= tau) & valid  # TRL: entropies * mask.float() >= threshold
        return keep.float()
