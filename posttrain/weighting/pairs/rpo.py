"""RPO: Regularized Preference Optimization, DPO plus an SFT term on the chosen response (Liu et al., "Provably
Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer", NeurIPS 2024,
arXiv 2405.16436).

The paper's objective adds to the DPO loss a supervised term on a baseline response -- in its experiments the
chosen one -- as a regulariser against reward over-optimisation: ``L_RPO = L_DPO + eta * beta *
E[-log pi(y_base | x)]`` (sequence log-likelihood).

**Not a pair strategy.** RPO weights no pair and sets no beta, so it implements neither pair hook; it is a loss
term, and TRL 1.16 already has it: ``train.loss_type: [sigmoid, sft]`` with ``train.loss_weights: [1, alpha]``
(``alpha`` plays ``eta * beta``'s role; :func:`rpo_trl_args` builds these two settings). On the unweighted path
TRL computes it; on our weighted path (a ``weight`` column or any ``weighting.pairs`` strategy) it is
:func:`rpo_nll_term` -- re-exported here from :mod:`posttrain.losses.preference` -- inside
:func:`posttrain.losses.weighted_preference_loss`, so both paths give the same number.

What is computed (TRL's form, not the paper's exact scaling):

* ``alpha * (-sum_{i,t} m_it log pi(y_w,it) / sum_{i,t} m_it)``: a **token mean** of the chosen responses' NLL over
  the whole batch, one scalar added to the reduced DPO loss; the paper's term is a per-sequence sum, so long
  responses weigh more there. (TRL attributes its ``sft`` / former ``rpo_alpha`` term to a different paper on
  iterative reasoning preference optimisation; the objective named RPO is the one above.)
* It is neither multiplied by pair weights (MADPO, a ``weight`` column) nor masked by beta-DPO's filter: those act
  on the pairwise term only (TRL adds the NLL after the per-pair losses too).
"""
from __future__ import annotations

import math
from typing import Any, Dict

from posttrain.losses.preference import rpo_nll_term

__all__ = ["rpo_nll_term", "rpo_trl_args"]


def rpo_trl_args(alpha: float = 1.0) -> Dict[str, Any]:
    """TRL 1.16 ``DPOConfig`` settings for RPO with SFT-term weight ``alpha`` (> 0):
    ``{"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, alpha]}`` (the recipe's ``train.loss_type`` /
    ``train.loss_weights``). The repository's ``recipes/dpo_rpo.yaml`` uses ``alpha = 1``."""
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (weight of RPO's SFT term) must be a finite number > 0, got {alpha!r}")
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, alpha]}
