"""GRPO group advantages from scalar rewards (pure torch; never imports TRL).

:func:`group_advantages` reproduces TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` advantage for
``multi_objective_aggregation="sum_then_normalize"`` exactly (a test checks it against TRL's output). posttrain's
trainer uses it only when a strategy reshapes the *scalar* reward before the group baseline (DRA-GRPO's diversity
factor, Trust-GRPO's per-group auxiliary mix); otherwise TRL computes the advantages itself.
"""
from __future__ import annotations

import torch

__all__ = ["group_advantages", "nanstd"]

SCALES = ("group", "batch", "none")


def nanstd(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Unbiased std ignoring NaNs (TRL's ``nanstd``): NaN where fewer than two values are present."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    corr = torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    std = torch.sqrt(var * corr)
    return std.squeeze() if dim is None else std.squeeze(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """``A_i = (r_i - mean_g) / (std + eps)`` over consecutive groups of ``group_size`` rows (GRPO, Shao et al. 2024).

    ``rewards``: [N] scalar rewards, ``N`` a multiple of ``group_size``; NaN marks an unscorable sample: it is left out
    of its group's mean/std and gets advantage 0 (TRL 1.16). ``scale``: ``"group"`` (std of the group, default),
    ``"batch"`` (std over all N) or ``"none"`` (mean-centred only, Dr. GRPO). ``eps = 1e-4`` as TRL.
    Returns a detached [N] tensor with no NaN.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    r = rewards.detach()
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    g = int(group_size)
    if g < 1 or r.numel() % g:
        raise ValueError(f"the number of rewards ({r.numel()}) must be a multiple of group_size ({g})")
    if torch.isinf(r).any():
        raise ValueError("rewards has infinite values; use NaN for a missing reward")
    grouped = r.view(-1, g)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(g)
    if scale == "batch":
        std = nanstd(r).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(g) if g > 1 else torch.zeros_like(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + eps)
    return torch.nan_to_num(adv, nan=0.0)
