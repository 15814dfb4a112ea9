"""REINFORCE++ and REINFORCE++-baseline: advantages whitened over the global batch, as advantage estimators.

Hu et al. 2025, "REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Normalization"
(arXiv 2501.03262): ``reinforce_pp`` whitens the outcome reward over every valid token of the global batch
(verl ``core_algos.py::compute_reinforce_plus_plus_outcome_advantage``); ``reinforce_pp_baseline`` first subtracts
the prompt group's mean (no group std), then whitens (``compute_reinforce_plus_plus_baseline_outcome_advantage``).
The rollout context holds every process's rows, so the statistics are global: identical on every rank, whatever
the number of processes. The math is :mod:`posttrain.losses.advantages.reinforce_pp`; the KL to the reference stays
in the loss (``train.beta``), so each sequence's advantage is constant over its tokens and is returned per sequence
(the in-reward KL form, whose advantages vary per token, is not offered by these estimators).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from posttrain.losses.advantages import reinforce_pp_advantages, reinforce_pp_baseline_advantages
from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig, StrategyEnv, register_strategy


class ReinforcePPConfig(StrategyConfig):
    unbiased: bool = Field(True, description="Whitening variance with the N/(N-1) correction (verl masked_whiten); "
                           "false: the biased one (OpenRLHF).")
    eps: float = Field(1e-8, gt=0.0, description="Added to the variance before the square root (verl, OpenRLHF).")


class ReinforcePPBaselineConfig(ReinforcePPConfig):
    singleton: Literal["zero", "raw"] = Field(
        "zero", description="Centred reward of a prompt with a single scorable sample: 'zero' (OpenRLHF) or 'raw' "
        "(verl's per-uid loop).")


def _token_mask(ctx: RolloutContext) -> torch.Tensor:
    lengths = ctx.completion_lengths_N.to(ctx.rewards_N.device)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    return (torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)).float()


def _per_sequence(adv_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    return (adv_NT * mask_NT).sum(dim=1) / mask_NT.sum(dim=1).clamp(min=1.0)


def _check_batch(name: str, env: StrategyEnv) -> None:
    if env.generation_batch_size is not None and env.generation_batch_size * env.world_size < 2:
        raise ValueError(f"{name} normalises over the global batch and needs at least 2 sequences per step, got "
                         f"{env.generation_batch_size * env.world_size}")


@register_strategy("advantage", "reinforce_pp")
class ReinforcePP(Strategy):
    """REINFORCE++ (Hu et al. 2025, arXiv 2501.03262): the reward whitened over all tokens of the global batch."""

    Config = ReinforcePPConfig
    cite = ("Hu et al. 2025, REINFORCE++ (arXiv 2501.03262); verl "
            "core_algos.compute_reinforce_plus_plus_outcome_advantage")

    def __init__(self, config=None, env: StrategyEnv = None):
        super().__init__(config, env)
        _check_batch("reinforce_pp", self.env)

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        mask = _token_mask(ctx)
        adv = reinforce_pp_advantages(ctx.rewards_N, mask, unbiased=self.config.unbiased, eps=self.config.eps)
        return _per_sequence(adv, mask)


@register_strategy("advantage", "reinforce_pp_baseline")
class ReinforcePPBaseline(Strategy):
    """REINFORCE++-baseline (Hu et al. 2025): group-mean baseline, then whitening over the global batch."""

    Config = ReinforcePPBaselineConfig
    cite = ("Hu et al. 2025, REINFORCE++ w/ baseline (arXiv 2501.03262); verl "
            "core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage")

    def __init__(self, config=None, env: StrategyEnv = None):
        super().__init__(config, env)
        _check_batch("reinforce_pp_baseline", self.env)

    def estimate(self, ctx: RolloutContext) -> torch.Tensor:
        mask = _token_mask(ctx)
        adv = reinforce_pp_baseline_advantages(ctx.rewards_N, ctx.group_size, mask, singleton=self.config.singleton,
                                               unbiased=self.config.unbiased, eps=self.config.eps)
        return _per_sequence(adv, mask)
