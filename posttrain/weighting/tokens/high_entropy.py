"""High-entropy ("forking") token mask of "Beyond the 80/20 Rule" (arXiv 2506.01939), TRL semantics.

No official code was found; we follow TRL 1.16 ``trl/trainer/grpo_trainer.py::GRPOTrainer.get_high_entropy_mask``.
Pure functions :func:`high_entropy_mask` / :func:`high_entropy_threshold`, the config :class:`HighEntropyConfig`
and the token strategy ``high_entropy`` (a weight; protocol class :class:`HighEntropy`).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, FiniteFloat

from ._common import check_finite, check_real, check_same_shape, quantile_linear, valid_of
from .registry import TokenBatch, TokenStrategyConfig, token_strategy

_PAPER = "Beyond the 80/20 Rule, arXiv 2506.01939"
_TRL = "TRL 1.16 trl/trainer/grpo_trainer.py::GRPOTrainer.get_high_entropy_mask"
_ENTROPY_SOURCES = ("current", "old")


def high_entropy_threshold(entropies: torch.Tensor, mask: torch.Tensor, *, top_fraction: float = 0.2):
    """The entropy threshold ``tau = torch.quantile(valid H as float32, 1 - top_fraction)``; ``None`` if no valid token.

    Exposed so a trainer can log it. Same semantics and checks as :func:`high_entropy_mask`.
    """
    rho = check_real("top_fraction", top_fraction, 0.0, 1.0)
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
    (no official code was found). We follow **TRL 1.16**
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


class HighEntropyConfig(TokenStrategyConfig):
    """Arguments of the ``high_entropy`` token strategy (:func:`high_entropy_mask`)."""

    top_fraction: FiniteFloat = Field(0.2, ge=0.0, le=1.0, description=(
        f"rho: the fraction of highest-entropy valid tokens that keep their gradient ({_PAPER}, the gate "
        f"1[H >= tau_rho]; rho = 0.2 in the paper); TRL's top_entropy_quantile is 1 - rho ({_TRL})."))
    entropy_source: Literal["current", "old"] = Field("current", description=(
        f"Entropies that rank the tokens: 'current' (the update-time forward, as {_TRL}) or 'old' (pi_old, the "
        f"rollout policy); the paper does not say which ({_PAPER})."))


def _high_entropy_needs(args) -> frozenset:
    src = args.get("entropy_source", "current")
    return frozenset({"old_entropies" if src == "old" else "entropies"})


def _high_entropy_warnings(config: HighEntropyConfig, env) -> list:
    if config.top_fraction == 1.0:
        return ["top_fraction 1 keeps every valid token: the mask does nothing"]
    return []


@token_strategy("high_entropy", needs={"entropies"}, needs_fn=_high_entropy_needs, config=HighEntropyConfig,
                cite=f"{_PAPER}; {_TRL}", warnings=_high_entropy_warnings)
def high_entropy(batch: TokenBatch, *, top_fraction: float = 0.2, entropy_source: str = "current"):
    """80/20 mask (arXiv 2506.01939, TRL semantics). ``entropy_source``: "current" (TRL, default) or "old"."""
    if entropy_source not in _ENTROPY_SOURCES:
        raise ValueError(f"entropy_source must be one of {_ENTROPY_SOURCES}, got {entropy_source!r}")
    h = batch.entropies if entropy_source == "current" else batch.old_entropies
    return high_entropy_mask(h, batch.mask, top_fraction=top_fraction)


#: The protocol ``Strategy`` class of kind "token" registered as ``high_entropy`` (hook ``token_weights``).
HighEntropy = high_entropy.strategy_class
