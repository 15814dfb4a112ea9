"""EM-FT of Agarwal et al., "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning",
arXiv 2505.15134 (paper abstract: "minimizes token-level entropy similarly to instruction finetuning, but on
unlabeled outputs drawn from the model"; the official repository ``shivamag125/EM_PT`` has no EM-FT training code).

As a token strategy on the GRPO trainer's online rollouts: the sampled completions are the unlabeled data, the
per-token loss is ``coef · H(π_θ(·|x, y_<t))`` (full-vocabulary entropy, differentiated *through* the entropy;
:func:`posttrain.losses.entropy_loss` is the same loss stand-alone), aggregated token-mean by the policy loss with
``train.loss_type: dapo`` (Σ over valid tokens / count, as SFT). The policy-gradient term is removed (advantages
set to 0) unless ``keep_policy_gradient``: the rewards then only log (e.g. accuracy on the training prompts).

[inferred; NOT FOUND in the text available to us]: online regeneration each step (not one fixed sample set), the
number of samples per prompt, learning rate, steps and temperature; the shipped recipe's choices are documented
there (recipes/em_ft.yaml).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..protocol import Strategy, register_strategy
from ._common import broadcast_advantages, check_finite, valid_of
from .registry import TokenBatch, TokenStrategyConfig

_PAPER = "Agarwal et al., arXiv 2505.15134, EM-FT"


class EmFtConfig(TokenStrategyConfig):
    """Arguments of the ``em_ft`` token strategy."""

    coef: float = Field(1.0, gt=0, allow_inf_nan=False,
                        description=f"Weight of the token entropy loss ({_PAPER}: the loss is the token-level "
                        "entropy itself, coefficient 1).")
    keep_policy_gradient: bool = Field(
        False, description=f"Keep the rewards' policy-gradient term beside the entropy loss [our option; {_PAPER} "
        "trains on the entropy alone, no reward: false].")


def em_ft_token_loss(entropies_grad: torch.Tensor, mask: torch.Tensor, *, coef: float = 1.0) -> torch.Tensor:
    """``[B, T]`` per-token EM-FT loss ``coef · H_t`` (0 on padding), keeping the entropies' gradient
    (arXiv 2505.15134, EM-FT). Non-finite entropies at valid positions raise ``ValueError``."""
    valid = valid_of(mask)
    check_finite("entropies", entropies_grad.detach(), valid)
    return (coef * entropies_grad).masked_fill(~valid, 0.0)


@register_strategy("token", "em_ft")
class EmFt(Strategy):
    """EM-FT (arXiv 2505.15134): minimise the token-level entropy of the model's own sampled completions, no label.

    Hooks: ``token_advantages`` sets the advantages to 0 (no policy-gradient term; unchanged with
    ``keep_policy_gradient``), ``token_loss`` adds ``coef · H_t`` with gradient (needs ``entropies_grad``). The
    trainer never skips its micro-batches for zero advantages (it adds a loss term)."""

    Config = EmFtConfig
    cite: ClassVar[str] = f"{_PAPER} (token-level entropy on the model's own outputs)"
    needs: ClassVar[frozenset] = frozenset({"entropies_grad"})

    def token_advantages(self, batch: TokenBatch) -> torch.Tensor:
        adv = broadcast_advantages(batch.advantages, batch.mask).detach()
        return adv if self.config.keep_policy_gradient else torch.zeros_like(adv, dtype=torch.float32)

    def token_loss(self, batch: TokenBatch) -> torch.Tensor:
        if batch.entropies_grad is None:
            raise ValueError("em_ft needs batch input 'entropies_grad' (entropies with gradient)")
        return em_ft_token_loss(batch.entropies_grad, batch.mask, coef=self.config.coef)
