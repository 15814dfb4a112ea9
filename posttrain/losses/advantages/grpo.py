"""GRPO group advantages from scalar rewards (pure torch; never imports TRL).

:func:`grpo_advantages` (alias :func:`group_advantages`, the historical name) reproduces TRL 1.16's
``GRPOTrainer._generate_and_score_completions`` advantage for ``multi_objective_aggregation="sum_then_normalize"``
exactly (tests/test_trainer_objectives.py checks it against TRL's output). posttrain's trainer uses it only when a
strategy reshapes the *scalar* reward before the group baseline (DRA-GRPO's diversity factor, Trust-GRPO's per-group
auxiliary mix); otherwise TRL computes the advantages itself.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import AllReduce, check_choice, check_real, masked_mean_var, reward_matrix

__all__ = ["SCALES", "grpo_advantages", "group_advantages", "nanstd"]

SCALES = ("group", "batch", "none")


def nanstd(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Unbiased std ignoring NaNs (TRL's ``nanstd``): NaN where fewer than two values are present."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    corr = torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    std = torch.sqrt(var * corr)
    return std.squeeze() if dim is None else std.squeeze(dim)


def grpo_advantages(rewards: torch.Tensor, group_size: Optional[int] = None, *, scale: str = "group",
                    eps: float = 1e-4, all_reduce: AllReduce | None = None) -> torch.Tensor:
    """GRPO advantage ``A[p, g] = (R[p, g] - mean_g R[p, :]) / (std + eps)`` (outcome supervision).

    Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), Sec. 4.1.2: ``A_i = (r_i - mean(r)) / std(r)`` over the G
    outputs of a question. verl: ``verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage``; TRL 1.16:
    ``GRPOTrainer._generate_and_score_completions`` (this function equals TRL's numbers).

    Args:
        rewards: ``[P, G]`` matrix ``rewards_PG``, or flat ``[N]`` with ``group_size`` (rows of a prompt
            contiguous). NaN marks an unscorable sample: it is left out of its group's mean/std and gets 0.
        group_size: ``G``; required for ``[N]`` input, ``None`` or ``G`` for ``[P, G]``.
        scale: ``"group"`` (std of the group, default, DeepSeekMath), ``"batch"`` (std over all N scorable rewards,
            TRL's ``scale_rewards="batch"``) or ``"none"`` (mean-centred only, Dr. GRPO, Liu et al. 2025,
            arXiv 2503.20783). All stds are unbiased (``torch.std``), as TRL and verl.
        eps: added to the std; ``1e-4`` as TRL (verl's default is ``1e-6``).
        all_reduce: optional sum all-reduce (see :data:`._common.AllReduce`); only ``scale="batch"`` uses global
            statistics, which are then computed over the rows of every process. Groups must not straddle processes.

    Returns:
        Detached advantages with the shape of ``rewards``, never NaN.

    Edge cases:
        * group size 1 (or one scorable row): the group std is undefined, the advantage is **0** (TRL). verl's
          loop instead uses mean 0, std 1, i.e. ``A = r / (1 + eps)``.
        * all-equal rewards in a group: ``A ~ 0``: TRL's numerics keep the rounding of the group mean, e.g.
          ``1.1e-12`` for (0.7, 0.7, 0.7) (``1e-16 / (0 + eps)``), kept for bit-exact TRL parity.
        * TRL's ``nanstd`` computes its Bessel factor ``count / (count - 1)`` as an int / int division, i.e. in
          float32 (relative error ~3e-8), and so does this function without ``all_reduce``; with ``all_reduce`` the
          ``"batch"`` statistics are exact float64 sums (see :func:`._common.masked_mean_var`).
        * +-inf reward: ``ValueError``.
    """
    check_choice("scale", scale, SCALES)
    eps = check_real("eps", eps, low=0.0)
    grouped, shape = reward_matrix(rewards, group_size)
    g = grouped.shape[1]
    r = grouped.reshape(-1)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(g)
    if scale == "batch":
        if all_reduce is not None:
            ok = ~torch.isnan(r)
            _, var, count = masked_mean_var(r, ok, unbiased=True, all_reduce=all_reduce)
            std = torch.where(count > 1, var.sqrt(), var.new_tensor(float("nan"))).to(r.dtype).expand_as(r)
        else:
            std = nanstd(r).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(g) if g > 1 else torch.zeros_like(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + eps)
    return torch.nan_to_num(adv, nan=0.0).reshape(shape)


group_advantages = grpo_advantages
"""Historical name of :func:`grpo_advantages` (same function)."""
