"""Entropy-based advantage shaping of Cheng et al., "Reasoning with Exploration: An Entropy Perspective".

arXiv 2506.14758, Section 3.2 Eq. 5-6 (no official code was read). Pure function :func:`entropy_advantage`, the
config :class:`EntropyAdvantageConfig` and the token strategy ``entropy_advantage`` (an advantage; protocol class
:class:`EntropyAdvantage`).
"""
from __future__ import annotations

import torch
from pydantic import Field, FiniteFloat

from ._common import broadcast_advantages, check_finite, check_real, check_same_shape, clean, valid_of, work_dtype
from .registry import TokenBatch, TokenStrategyConfig, token_strategy

_PAPER = "Cheng et al., Reasoning with Exploration: An Entropy Perspective, arXiv 2506.14758"


def entropy_advantage(
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
) -> torch.Tensor:
    """Shaped advantages ``A + min(alpha * H.detach(), |A| / kappa)`` (an advantage, not a weight).

    Paper: Cheng et al., "Reasoning with Exploration: An Entropy Perspective", arXiv 2506.14758 (AAAI 2026),
    Section 3.2 Eq. 5 (``psi(H) = min(alpha H^detach, |A| / kappa)``, alpha > 0, kappa > 1) and Eq. 6
    (``A_shaped = A + psi``). Verified from the paper's full text (v3), including the
    one-line placement ``adv += torch.min(alpha * entropy.detach(), adv.abs() / kappa)`` after the (group-
    normalised) advantages and before the policy loss. [unverified]: no official code was read, so the exact
    veRL call site and dtype handling are not confirmed; we follow the paper's formula literally.

    Defaults: ``alpha = 0.4`` (GRPO; the paper uses 0.1 for PPO), ``kappa = 2`` (all experiments).

    Properties and edge cases: the term is added for positive and negative A alike; with ``H >= 0`` it lies in
    ``[0, |A| / kappa]``, so a negative advantage never changes sign (``A + psi <= A (1 - 1/kappa)``). ``A = 0``
    (e.g. a group with equal rewards) gives ``psi = 0``. ``H`` is used as given (no clamp at 0; a full-vocab
    entropy is non-negative up to rounding). A sum that would overflow the dtype saturates at its largest
    finite value. No batch statistic is involved, so the scope does not matter.

    Args:
        advantages: [B] or [B, T]. entropies: [B, T] entropies of the **current** policy (the update-time
            forward, detached), as in the paper's veRL placement. mask: [B, T], nonzero = valid.
        alpha: >= 0. kappa: > 1 (validated).

    Returns:
        [B, T] detached float32 (float64 for float64 input) shaped advantages, 0 on padding. NaN/inf inputs at
        valid positions raise ``ValueError``.
    """
    alpha = check_real("alpha", alpha, 0.0)
    kappa = check_real("kappa", kappa, 1.0, low_open=True)
    valid = valid_of(mask)
    check_same_shape(entropies=entropies, mask=mask)
    adv = broadcast_advantages(advantages, mask)
    check_finite("advantages", adv.detach(), valid)
    check_finite("entropies", entropies.detach(), valid)
    with torch.no_grad():
        dt = work_dtype(adv, entropies)
        a, h = clean(adv, valid, dt), clean(entropies, valid, dt)
        shaped = a + torch.minimum(alpha * h, a.abs() / kappa)
        big = torch.finfo(dt).max  # A + |A|/kappa can overflow only for |A| near the dtype's max: saturate
        shaped = shaped.clamp(min=-big, max=big)
        return torch.where(valid, shaped, torch.zeros((), dtype=dt, device=shaped.device))


class EntropyAdvantageConfig(TokenStrategyConfig):
    """Arguments of the ``entropy_advantage`` token strategy (:func:`entropy_advantage`)."""

    alpha: FiniteFloat = Field(0.4, ge=0.0, description=(
        f"alpha: scale of the entropy term psi = min(alpha H, |A| / kappa) ({_PAPER}, Eq. 5; 0.4 for GRPO, 0.1 "
        "for PPO in the paper)."))
    kappa: FiniteFloat = Field(2.0, gt=1.0, description=(
        f"kappa > 1: the term is capped at |A| / kappa, so a negative advantage never changes sign ({_PAPER}, "
        "Eq. 5; 2 in all the paper's experiments)."))


def _entropy_advantage_warnings(config: EntropyAdvantageConfig, env) -> list:
    if config.alpha == 0.0:
        return ["alpha 0 adds nothing to the advantages: the strategy does nothing"]
    return []


@token_strategy("entropy_advantage", needs={"entropies"}, kind="advantage", config=EntropyAdvantageConfig,
                cite=f"{_PAPER}, Eq. 5-6", warnings=_entropy_advantage_warnings)
def entropy_advantage_shaping(batch: TokenBatch, *, alpha: float = 0.4, kappa: float = 2.0):
    """Entropy-shaped advantages (arXiv 2506.14758 Eq. 5-6), current-policy entropies."""
    return entropy_advantage(batch.advantages, batch.entropies, batch.mask, alpha=alpha, kappa=kappa)


#: The protocol ``Strategy`` class of kind "token" registered as ``entropy_advantage`` (hook ``token_advantages``).
EntropyAdvantage = entropy_advantage_shaping.strategy_class
