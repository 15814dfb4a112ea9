"""DAPO dynamic sampling: which prompt groups carry a learning signal (pure torch; never imports TRL).

DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 11 and Algorithm 1) keeps a prompt only if its group of G rollouts has
at least one correct and one wrong answer (``0 < #correct < G``): with group-normalised advantages an all-correct or
all-wrong group has advantage 0 and only adds variance. It over-samples and refills the batch until it is full.
verl's DAPO recipe (``recipe/dapo/dapo_ray_trainer.py::fit``) generalises the test to any per-trajectory metric:
keep a group when the population std of its values is > 0 (here: its values are not all equal, compared exactly),
or when it holds a single trajectory; OpenRLHF
(``--algo.dynamic_filtering_enable``) keeps a group when ``low < mean < high`` (strictly), default ``(0, 1)``.
For binary rewards all three rules agree.

Missing values (NaN: a failed reward) are left out of a group's statistics; a group with no finite value carries
no signal and is dropped.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["informative_groups", "RULES"]

RULES = ("std", "range")


def informative_groups(values_N: torch.Tensor, group_size: int, *, rule: str = "std",
                       bounds: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """``[P]`` bool: which of the ``P = N / group_size`` contiguous groups of ``values_N`` to keep.

    ``rule="std"`` (verl, default): population std of the group's finite values > 0, or exactly one finite value.
    ``rule="range"`` (OpenRLHF): ``bounds[0] < mean < bounds[1]`` strictly (default bounds ``(0, 1)``).
    ``values_N`` [N] float (NaN = missing; ``inf`` is an error), ``N`` a multiple of ``group_size``.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    v = torch.as_tensor(values_N).detach().double()
    g = int(group_size)
    if v.dim() != 1 or g < 1 or v.numel() % g:
        raise ValueError(f"values must be 1-D with a length that is a multiple of group_size ({g}), got shape "
                         f"{tuple(v.shape)}")
    if torch.isinf(v).any():
        raise ValueError("values has infinite entries; use NaN for a missing value")
    grouped = v.view(-1, g)
    finite = ~torch.isnan(grouped)
    count = finite.sum(dim=1)
    total = torch.where(finite, grouped, torch.zeros_like(grouped)).sum(dim=1)
    mean = total / count.clamp(min=1)
    if rule == "range":
        low, high = bounds if bounds is not None else (0.0, 1.0)
        return (count > 0) & (mean > low) & (mean < high)
    # std > 0 <=> the finite values are not all equal; compared exactly (a computed std of equal floats can be
    # 1e-17 instead of 0)
    high = torch.where(finite, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1)
    low = torch.where(finite, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1)
    return (count == 1) | ((count > 1) & (high > low))
