"""Fixed domain weights: a constant sampling mix, given or proportional to the domain sizes (the baseline).

Pure function :func:`fixed_domain_weights`, config :class:`FixedDomainConfig`, domain strategy ``fixed``
(:class:`FixedDomains`, hook ``domain_weights``; stateless).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from pydantic import Field, field_validator

from posttrain.weighting.protocol import DomainContext, Strategy, StrategyConfig, StrategyEnv, register_strategy

from ._common import check_sizes, check_weights, context_arrays, to_list

__all__ = ["fixed_domain_weights", "FixedDomainConfig", "FixedDomains"]

def fixed_domain_weights(weights: Optional[Any] = None, sizes: Optional[Any] = None,
                         domains: Optional[Sequence[str]] = None) -> torch.Tensor:
    """``[D]`` float64 distribution: ``weights / sum(weights)`` when given (a list in domain order, or a mapping
    ``{domain: weight}`` naming every domain of ``domains`` exactly), else proportional sampling
    ``p_d = n_d / sum_j n_j`` from ``sizes`` (the natural mix, temperature 1). ``ValueError`` (one line, naming the
    argument) for non-finite / negative / all-zero weights, a size 0, or a length that does not match."""
    if weights is None:
        if sizes is None:
            raise ValueError("fixed_domain_weights needs weights or sizes")
        n = check_sizes(sizes, domains)
        return n / n.sum()
    if isinstance(weights, dict):
        if domains is None:
            raise ValueError("weights given by domain name need the domain names")
        missing = [d for d in domains if d not in weights]
        unknown = [k for k in weights if k not in domains]
        if missing or unknown:
            raise ValueError("weights: " + "; ".join(
                part for part in (f"no weight for domain(s) {', '.join(map(repr, missing))}" if missing else "",
                                  f"unknown domain(s) {', '.join(map(repr, unknown))}" if unknown else "")
                if part) + f" (domains: {', '.join(domains)})")
        weights = [weights[d] for d in domains]
    w = check_weights("weights", list(weights))
    if domains is not None and w.numel() != len(domains):
        raise ValueError(f"weights has {w.numel()} values for {len(domains)} domains")
    return w


class FixedDomainConfig(StrategyConfig):
    """Arguments of the ``fixed`` domain strategy."""

    weights: Optional[Union[List[float], Dict[str, float]]] = Field(None, description=(
        "The sampling mix over the domains: a list in the data's domain order or a mapping {domain: weight} naming "
        "every domain; non-negative with a positive sum, normalised to sum to 1. Default (null): proportional to "
        "the domain sizes, p_d = n_d / sum_j n_j (natural sampling; temperature T = 1 of the temperature-sampling "
        "family, Li et al., Upsample or Upweight?, arXiv 2410.04579)"))

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, v):
        if v is None:
            return v
        if isinstance(v, dict):
            vals = list(v.values())
            if not all(isinstance(k, str) for k in v):
                raise ValueError("mapping keys must be domain names")
        elif isinstance(v, (list, tuple)):
            vals = list(v)
        else:
            raise ValueError("must be a list of weights or a mapping {domain: weight}")
        for x in vals:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise ValueError(f"must be non-negative finite numbers, got {x!r}")
        if not vals or sum(vals) <= 0:
            raise ValueError("must be non-empty with a positive sum")
        return v


@register_strategy("domain", "fixed")
class FixedDomains(Strategy):
    """A constant domain mix: the given weights, or proportional to the domain sizes (the baseline).

    Hook ``domain_weights``: :func:`fixed_domain_weights` of the config's ``weights`` (or of ``ctx.sizes_D``) for
    ``ctx.domains``, the same at every update. Stateless."""

    Config = FixedDomainConfig
    cite = "constant mixture weights (proportional to size: natural sampling, T = 1 in Li et al., arXiv 2410.04579)"

    def __init__(self, config: Optional[FixedDomainConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        context_arrays(ctx, need_sizes=self.config.weights is None)
        return to_list(fixed_domain_weights(self.config.weights, list(ctx.sizes_D) or None, ctx.domains))
