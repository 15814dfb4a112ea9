"""Per-sequence / per-prompt weights for GRPO-family training (torch only; never imports TRL or transformers).

One file per method; each holds the method's pure math, its typed configuration and its ``sequence`` strategy
(:mod:`posttrain.weighting.protocol`). User guide: ``docs/weighting_pairs_sequences.md``.

=====================  ==========================================  ====================  ===========================
strategy (recipe name)  paper                                       hook                  pure functions
=====================  ==========================================  ====================  ===========================
``dra``                DRA-GRPO, arXiv 2505.09655                  ``reshape_rewards``   :func:`dra_weights`,
                                                                                         :func:`dra_adjust_rewards`
``seed``               SEED-GRPO, arXiv 2505.12346                 ``adjust_advantages`` :func:`semantic_entropy`,
                                                                                         :func:`seed_grpo_scale`,
                                                                                         :func:`seed_grpo_prompt_scales`
``loss_reweighting``   Sow et al., ICLR 2025, arXiv 2502.06733     ``adjust_advantages`` :func:`loss_sample_weights`,
                                                                                         :class:`LossSampleWeighter`
=====================  ==========================================  ====================  ===========================

Every strategy works on the gathered batch (the ``N`` completions of all processes, identical on every rank); the
trainer keeps its own rows afterwards. House rules: every returned weight is detached; any finite input gives
finite output (empty, single element, all-equal, zero variance); a non-finite input raises ``ValueError`` naming
the argument. Batch statistics are computed over exactly the tensors handed in.
The strategy classes are registered with the protocol (``protocol.registered("sequence")``).
"""
from __future__ import annotations

from posttrain.weighting.sequences.dra import DiversityRewardAdjustment, DRAConfig, dra_adjust_rewards, dra_weights
from posttrain.weighting.sequences.loss_reweighting import (
    LOSS_STRATEGIES,
    LossReweighting,
    LossReweightingConfig,
    LossSampleWeighter,
    loss_sample_weights,
    token_mean_nll,
)
from posttrain.weighting.sequences.seed import (
    SEEDConfig,
    SemanticEntropyScaling,
    final_answers,
    seed_grpo_prompt_scales,
    seed_grpo_scale,
    semantic_entropy,
)

__all__ = [
    "dra_weights",
    "dra_adjust_rewards",
    "semantic_entropy",
    "seed_grpo_scale",
    "seed_grpo_prompt_scales",
    "loss_sample_weights",
    "LossSampleWeighter",
    "LOSS_STRATEGIES",
    "token_mean_nll",
    "final_answers",
    "DRAConfig",
    "DiversityRewardAdjustment",
    "SEEDConfig",
    "SemanticEntropyScaling",
    "LossReweightingConfig",
    "LossReweighting",
]

