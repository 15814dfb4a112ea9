"""Checks and simplex helpers shared by the domain (data-mixture) strategies (torch only).

Everything is computed in float64 on the CPU; the pure functions return float64 tensors ``[D]`` and the hooks
return plain lists of floats (the sampler's distribution / the loss factors).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch

from posttrain.checks import check_finite, check_real
from posttrain.weighting.protocol import DomainContext

__all__ = ["as_f64", "check_weights", "check_sizes", "check_gradients", "context_arrays", "apply_floor", "to_list",
           "LOGIT_RANGE"]

#: Logits more than this below the largest are clamped: exp(-800) is 0 in float64, so no weight changes, and a
#: kept log-weight state stays finite.
LOGIT_RANGE = 800.0


def as_f64(name: str, x: Any) -> torch.Tensor:
    """``x`` as a detached float64 CPU tensor (lists are read as float64 directly, so large sizes keep every digit
    and never pass through float32); ``ValueError`` naming ``name`` for NaN / inf."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} must be numbers, got {x!r} ({exc})") from None
    check_finite(name, t)
    return t


def check_weights(name: str, weights: Any) -> torch.Tensor:
    """``weights`` as a float64 ``[D]`` distribution: finite, non-negative, positive sum (renormalised to sum 1)."""
    w = as_f64(name, weights)
    if w.dim() != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D [D] vector, got shape {tuple(w.shape)}")
    if (w < 0).any():
        raise ValueError(f"{name} must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum, got {w.tolist()}")
    return w / total


def check_sizes(sizes: Any, domains: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Domain sizes (rows per domain) as float64 ``[D]``: finite, whole numbers >= 1. A size 0 is an error naming
    the domain: an empty domain can be neither sampled nor upweighted."""
    n = as_f64("sizes_D", sizes)
    if n.dim() != 1 or n.numel() == 0:
        raise ValueError(f"sizes_D must be a non-empty 1-D [D] vector, got shape {tuple(n.shape)}")
    if (n != torch.round(n)).any() or (n < 0).any():
        raise ValueError(f"sizes_D must be non-negative whole numbers, got {n.tolist()}")
    empty = [i for i, v in enumerate(n.tolist()) if v == 0]
    if empty:
        names = [domains[i] if domains is not None and i < len(domains) else str(i) for i in empty]
        raise ValueError(f"sizes_D: domain {', '.join(repr(x) for x in names)} has size 0 (an empty domain cannot "
                         f"be sampled; drop it from the mixture)")
    return n


def check_gradients(domain_gradients: Any, heldout_gradient: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """``([D, P], [P])`` float64 gradients with matching ``P``; non-finite values are a ``ValueError`` naming
    the argument."""
    G = as_f64("domain_gradients", domain_gradients)
    g = as_f64("heldout_gradient", heldout_gradient)
    if G.dim() != 2:
        raise ValueError(f"domain_gradients must be [D, P], got shape {tuple(G.shape)}")
    if g.dim() != 1 or g.shape[0] != G.shape[1]:
        raise ValueError(f"heldout_gradient must be [P] with P = {G.shape[1]} (domain_gradients' columns), got "
                         f"shape {tuple(g.shape)}")
    return G, g


def alignment_scores(ctx: DomainContext, n_domains: int, *, sharded: bool, log_key: str) -> torch.Tensor:
    """``s_d = <g_heldout, g_d>`` from the context's gradient services (``[D]``, float64), all-reduced when each
    process holds a shard of the parameters (``sharded``); each score is logged as ``<log_key>/<domain>``."""
    G, g = check_gradients(ctx.domain_gradients(), ctx.heldout_gradient())
    if G.shape[0] != n_domains:
        raise ValueError(f"domain_gradients has {G.shape[0]} rows for {n_domains} domains")
    s = G @ g
    if sharded:
        s = as_f64("alignment scores", ctx.all_reduce_sum(s))
    for name, v in zip(ctx.domains, s.tolist()):
        ctx.log(f"{log_key}/{name}", float(v))
    return s


def context_arrays(ctx: DomainContext, *, need_sizes: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(weights_D, sizes_D or None)`` of a :class:`DomainContext`, checked against ``ctx.domains``."""
    d = len(ctx.domains)
    if d == 0:
        raise ValueError("domains is empty: a mixture needs at least one domain")
    w = check_weights("weights_D", list(ctx.weights_D))
    if w.numel() != d:
        raise ValueError(f"weights_D has {w.numel()} values for {d} domains")
    sizes = None
    if need_sizes or len(ctx.sizes_D):
        if not len(ctx.sizes_D):
            raise ValueError("sizes_D is empty: this strategy needs the rows per domain")
        sizes = check_sizes(list(ctx.sizes_D), ctx.domains)
        if sizes.numel() != d:
            raise ValueError(f"sizes_D has {sizes.numel()} values for {d} domains")
    return w, sizes


def apply_floor(weights: torch.Tensor, floor: float) -> torch.Tensor:
    """The KL (I-)projection of a distribution onto ``{w : w_d >= floor, sum w = 1}``: ``w_d = max(floor, c v_d)``
    with the constant ``c`` that restores the sum (found by fixing the domains below the floor, at most ``D``
    rounds). Idempotent: a distribution already above the floor is returned unchanged. ``0 <= floor <= 1/D``."""
    d = weights.numel()
    floor = check_real("floor", floor, 0.0)
    if floor * d > 1.0 + 1e-12:
        raise ValueError(f"floor {floor} is above 1/D = {1.0 / d} for {d} domains")
    v = weights / weights.sum()
    if floor == 0.0 or bool((v >= floor).all()):
        return v
    fixed = torch.zeros(d, dtype=torch.bool)
    out = v
    for _ in range(d):
        rest = v[~fixed].sum()
        if rest <= 0:
            out = torch.where(fixed, torch.full_like(v, floor), torch.zeros_like(v))
            out = out + (1.0 - out.sum()) / d  # all mass at the floor: uniform
            break
        c = (1.0 - floor * int(fixed.sum())) / rest
        out = torch.where(fixed, torch.full_like(v, floor), c * v)
        below = (~fixed) & (out < floor)
        if not below.any():
            break
        fixed = fixed | below
    return out / out.sum()


def to_list(t: torch.Tensor) -> List[float]:
    return [float(x) for x in t.tolist()]
