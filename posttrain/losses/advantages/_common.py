"""Input checks and (optionally all-reduced) masked statistics shared by the advantage estimators (torch only).

Conventions (tinker-cookbook style shape suffixes): ``P`` prompts, ``G`` samples per prompt, ``N = P * G`` sequences
with the ``G`` rows of one prompt contiguous, ``T`` completion tokens. NaN in a reward marks an unscorable sample
(TRL 1.16's convention); +-inf is an error.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from posttrain.checks import check_choice, check_real  # noqa: F401 - the estimators import them from here

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""A *sum* all-reduce: takes a tensor, returns the elementwise sum of that tensor over all processes (the same
value on every rank), e.g. ``lambda t: accelerator.reduce(t, reduction="sum")``. ``torch.distributed.all_reduce``
works in place and returns ``None``: wrap it (``lambda t: (dist.all_reduce(t), t)[1]``)."""

STATS_DTYPE = torch.float64  # sums, counts and variances are accumulated in float64 (exact counts, no cancellation)


def float_tensor(name: str, x) -> torch.Tensor:
    """``torch.as_tensor(x)`` detached, integer/bool promoted to the default float dtype."""
    t = torch.as_tensor(x).detach()
    return t if torch.is_floating_point(t) else t.to(torch.get_default_dtype())


def reward_matrix(rewards, group_size: Optional[int], name: str = "rewards") -> tuple[torch.Tensor, tuple]:
    """Return ``(R_PG, shape)``: the rewards as a ``[P, G]`` float matrix and the caller's original shape.

    ``rewards`` is ``[P, G]`` (``group_size`` then must be ``None`` or ``G``) or ``[N]`` with ``group_size`` dividing
    ``N`` (rows of a prompt contiguous). NaN is kept (missing reward); +-inf raises ``ValueError``.
    """
    r = float_tensor(name, rewards)
    if group_size is not None and (isinstance(group_size, bool) or int(group_size) != group_size):
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if r.dim() == 2:
        g = r.shape[1]
        if group_size is not None and int(group_size) != g:
            raise ValueError(f"{name} is [P, G] = {tuple(r.shape)} but group_size = {group_size}")
        if g < 1:
            raise ValueError(f"{name} is [P, G] = {tuple(r.shape)}: the group size G must be >= 1")
    elif r.dim() == 1:
        if group_size is None:
            raise ValueError(f"group_size is required when {name} is 1-D [N]")
        g = int(group_size)
        if g < 1 or r.numel() % g:
            raise ValueError(f"the number of {name} ({r.numel()}) must be a multiple of group_size ({g})")
    else:
        raise ValueError(f"{name} must be [N] (with group_size) or [P, G], got shape {tuple(r.shape)}")
    n_inf = int(torch.isinf(r).sum())
    if n_inf:
        raise ValueError(f"{name} has {n_inf} infinite value(s); use NaN to mark a missing (unscorable) reward")
    return r.reshape(-1, g), tuple(r.shape)


def shift_groups(R: torch.Tensor) -> torch.Tensor:
    """``R - max_g R`` per row (NaN ignored; an all-NaN row is left NaN): shift-invariant estimators then give
    exactly 0 for a constant group (``R - mean`` of unshifted values keeps the mean's rounding, e.g. 1e-16)."""
    ok = ~torch.isnan(R)
    top = torch.where(ok, R, torch.full_like(R, -math.inf)).max(dim=1, keepdim=True).values if R.shape[0] else R[:, :1]
    return R - torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def sequence_rewards(rewards, name: str = "rewards") -> torch.Tensor:
    """Flatten ``[N]`` or ``[P, G]`` rewards to ``[N]`` (float); +-inf raises, NaN is kept (missing)."""
    r = float_tensor(name, rewards)
    if r.dim() not in (1, 2):
        raise ValueError(f"{name} must be [N] or [P, G], got shape {tuple(r.shape)}")
    n_inf = int(torch.isinf(r).sum())
    if n_inf:
        raise ValueError(f"{name} has {n_inf} infinite value(s); use NaN to mark a missing (unscorable) reward")
    return r.reshape(-1)


def token_mask(mask_NT, n: int) -> torch.Tensor:
    """Boolean ``[N, T]`` validity (``mask > 0``); ``ValueError`` if it is not ``[n, T]``."""
    m = torch.as_tensor(mask_NT)
    if m.dim() != 2 or m.shape[0] != n:
        raise ValueError(f"mask_NT must be [N, T] with N = {n} (one row per reward), got shape {tuple(m.shape)}")
    return m > 0 if m.dtype != torch.bool else m


def token_kl(kl_NT, valid: torch.Tensor, beta: float, dtype: torch.dtype) -> torch.Tensor | None:
    """The in-reward KL term, validated: ``None`` when unused, else ``[N, T]`` zeroed outside ``valid``."""
    b = check_real("beta", beta, low=0.0)
    if kl_NT is None:
        if b != 0.0:
            raise ValueError("beta != 0 needs kl_NT (the per-token KL of the rollout policy to the reference)")
        return None
    kl = float_tensor("kl_NT", kl_NT).to(dtype)
    if tuple(kl.shape) != tuple(valid.shape):
        raise ValueError(f"shape mismatch: kl_NT={tuple(kl.shape)} but mask_NT={tuple(valid.shape)}")
    if not bool((torch.isfinite(kl) | ~valid).all()):
        raise ValueError("kl_NT has non-finite values at valid (mask > 0) positions")
    return kl.masked_fill(~valid, 0.0)


def _reduce(t: torch.Tensor, all_reduce: AllReduce | None) -> torch.Tensor:
    if all_reduce is None:
        return t
    out = all_reduce(t)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(t.shape):
        raise TypeError("all_reduce must return the summed tensor with the shape it was given "
                        f"({tuple(t.shape)}), got {type(out).__name__}; torch.distributed.all_reduce works in "
                        "place and returns None: wrap it")
    return out


def masked_mean_var(x: torch.Tensor, valid: torch.Tensor, *, unbiased: bool,
                    all_reduce: AllReduce | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, var, count)`` of ``x[valid]`` in float64, over all processes when ``all_reduce`` is given.

    Two-pass: one all-reduce of ``[sum, count]``, then one of ``sum (x - mean)^2`` (no ``E[x^2] - E[x]^2``
    cancellation), so every rank gets bit-identical statistics. ``var`` divides by ``count - 1`` (``unbiased``) or
    ``count``; with ``count <= 1`` it is 0 (the sum of squares is 0 too), and ``mean`` is 0 with ``count == 0``.
    """
    xd = x.detach().to(STATS_DTYPE)
    zero = torch.zeros((), dtype=STATS_DTYPE, device=xd.device)
    s = _reduce(torch.stack([torch.where(valid, xd, zero).sum(), valid.sum().to(STATS_DTYPE)]), all_reduce)
    total, count = s[0], s[1]
    mean = total / count.clamp(min=1.0)
    ssd = _reduce(torch.where(valid, (xd - mean) ** 2, zero).sum().reshape(1), all_reduce)[0]
    var = ssd / ((count - 1.0) if unbiased else count).clamp(min=1.0)
    return mean, var, count


def whiten(x: torch.Tensor, valid: torch.Tensor, *, unbiased: bool, eps: float,
           all_reduce: AllReduce | None = None) -> torch.Tensor:
    """``(x - mean) * rsqrt(var + eps)`` at ``valid`` positions, 0 elsewhere (verl ``masked_whiten``), in x's dtype."""
    mean, var, _ = masked_mean_var(x, valid, unbiased=unbiased, all_reduce=all_reduce)
    out = (x.to(STATS_DTYPE) - mean) * torch.rsqrt(var + eps)
    return torch.where(valid, out, torch.zeros_like(out)).to(x.dtype)
