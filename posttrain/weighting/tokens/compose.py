"""Composition of token strategies listed in a recipe (``weighting.tokens``).

Rule: weights multiply (masks are {0,1} weights); advantage strategies run first, in list order, and every
later strategy sees the shaped advantages (the ones the policy loss will use); loss terms add up. The
aggregation normalizer is the policy loss's (``aggregation=``), not ``sum(w)``: a zero weight removes a token's
gradient but the token still counts in the denominator, as in STEER, 80/20, Clip-Cov and TW-GRPO's code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch

from . import strategies as _builtin  # noqa: F401  (registers the built-in strategies)
from .registry import TOKEN_STRATEGIES, TokenBatch, TokenStrategy, as_strategy
from .stats import _summary


def _parse(spec: Any) -> tuple[TokenStrategy, dict]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"token strategy spec must be a mapping with a 'name' key, got {spec!r}")
    args = dict(spec)
    name = args.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"token strategy spec needs a 'name' string, got {spec!r}")
    strat = as_strategy(TOKEN_STRATEGIES.get(name), name)
    strat.check_args(args)
    return strat, args


def parse_token_specs(specs: Optional[Iterable[Any]]) -> list[tuple[TokenStrategy, dict]]:
    """Validate a list of ``{"name": ..., **args}`` specs (unknown name -> ``RegistryError``, unknown argument
    -> ``ValueError``, both one line naming the strategy); returns ``[(strategy, args), ...]``."""
    return [_parse(s) for s in (specs or [])]


def required_inputs(specs: Optional[Iterable[Any]]) -> frozenset:
    """Union of the optional :class:`TokenBatch` inputs the configured strategies need (see ``registry.INPUTS``)."""
    out: set = set()
    for strat, args in parse_token_specs(specs):
        out |= strat.requirements(args)
    return frozenset(out)


def clipping_disabled(specs: Optional[Iterable[Any]]) -> bool:
    """True if a configured strategy requires the policy loss without ratio clipping (KL-Cov)."""
    return any(strat.disables_clipping for strat, _ in parse_token_specs(specs))


@dataclass
class TokenStrategyResult:
    """Output of :func:`apply_token_strategies`.

    ``weights``: [B, T] float32 product of the weight strategies, or ``None`` if none is configured;
    ``advantages``: [B, T] shaped advantages, or the input advantages unchanged if no advantage strategy;
    ``extra_token_loss``: [B, T] sum of loss terms (with gradient) or ``None``;
    ``clip_disabled``: run the policy loss with ``clip_low=None, clip_high=None``;
    ``diagnostics``: ``{strategy key: {stat: float}}`` (keys are names, ``name#2`` for a repeated name).
    """

    weights: Optional[torch.Tensor]
    advantages: torch.Tensor
    extra_token_loss: Optional[torch.Tensor]
    clip_disabled: bool
    diagnostics: dict = field(default_factory=dict)


def _run(strat: TokenStrategy, args: dict, batch: TokenBatch) -> tuple[torch.Tensor, dict]:
    out = strat(batch, **args)
    extra = {}
    if isinstance(out, tuple):
        out, extra = out
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(batch.mask.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"token strategy '{strat.name}' returned {shape}, expected a tensor of shape "
                         f"{tuple(batch.mask.shape)}")
    return out, dict(extra)


def _key(diags: dict, name: str) -> str:
    if name not in diags:
        return name
    i = 2
    while f"{name}#{i}" in diags:
        i += 1
    return f"{name}#{i}"


def apply_token_strategies(specs: Optional[Iterable[Any]], batch: TokenBatch) -> TokenStrategyResult:
    """Run every configured strategy on ``batch`` and combine them (module docstring for the rule)."""
    parsed = parse_token_specs(specs)
    valid = batch.mask.bool()
    diags: dict = {}
    adv = batch.advantages
    for strat, args in parsed:
        if strat.kind != "advantage":
            continue
        shaped, extra = _run(strat, args, batch.replace(advantages=adv))
        base = adv if adv.dim() == 2 else adv.unsqueeze(1).expand_as(shaped)
        shift = (shaped.detach() - base.detach().to(shaped.dtype))[valid].double()
        mean_abs = float(base.detach()[valid].double().abs().mean()) if shift.numel() else 0.0
        diags[_key(diags, strat.name)] = {
            "shift_mean": float(shift.mean()) if shift.numel() else 0.0,
            "shift_over_abs_adv": float(shift.abs().mean()) / mean_abs if mean_abs > 0 else 0.0,
            **extra,
        }
        adv = shaped
    batch = batch.replace(advantages=adv)
    weights, extra_loss = None, None
    for strat, args in parsed:
        if strat.kind == "advantage":
            continue
        out, extra = _run(strat, args, batch)
        if strat.kind == "weight":
            w = out.detach().float()
            if not torch.isfinite(w[valid]).all():
                raise ValueError(f"token strategy '{strat.name}' returned non-finite weights")
            weights = w if weights is None else weights * w
            diags[_key(diags, strat.name)] = {**_summary(w[valid].double()), **extra}
        else:
            extra_loss = out if extra_loss is None else extra_loss + out
            diags[_key(diags, strat.name)] = extra
    if weights is not None:
        weights = weights * valid.float()
    return TokenStrategyResult(weights=weights, advantages=adv, extra_token_loss=extra_loss,
                               clip_disabled=any(s.disables_clipping for s, _ in parsed), diagnostics=diags)


def compose_token_weights(specs: Optional[Iterable[Any]], batch: TokenBatch) -> tuple[torch.Tensor, dict]:
    """Product of the weight strategies in ``specs`` -> ``(weights [B, T] float32 detached, diagnostics)``.

    ``specs`` is a list of ``{"name": ..., **args}`` (or bare names). Only ``kind == "weight"`` strategies are
    accepted here (a loss term or advantage strategy raises ``ValueError``: use :func:`apply_token_strategies`).
    An empty list gives ``mask`` as float (all-ones weights). Diagnostics: per strategy, ``mean``, ``std``,
    ``min``, ``max``, ``frac_zero`` of its own weights over valid tokens.
    """
    parsed = parse_token_specs(specs)
    for strat, _ in parsed:
        if strat.kind != "weight":
            raise ValueError(f"token strategy '{strat.name}' is a {strat.kind}, not a weight; "
                             f"use apply_token_strategies for it")
    res = apply_token_strategies(specs, batch)
    w = res.weights if res.weights is not None else batch.mask.bool().float()
    return w, res.diagnostics
