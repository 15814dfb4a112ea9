"""Composition of the token strategies listed in a recipe (``weighting.tokens``).

Rule: weights multiply (masks are {0,1} weights); advantage strategies run first, in list order, and every
later strategy sees the shaped advantages (the ones the policy loss will use); loss terms add up. The
aggregation normalizer is the policy loss's (``aggregation=``), not ``sum(w)``: a zero weight removes a token's
gradient but the token still counts in the denominator, as in STEER, 80/20, Clip-Cov and TW-GRPO's code.

Every function here takes either recipe specs (``{"name": ..., **args}`` dicts or bare names, checked against
the functions' signatures as before) or built protocol strategies of kind ``"token"``
(``protocol.build_strategies("token", specs, env, unique=False)`` or :func:`build_token_strategies`), or a mix:
both compose through the same code and give the same numbers.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional

import torch
from pydantic import ValidationError

from ...registry import RegistryError, import_path
from ..protocol import Strategy, StrategyEnv, StrategyError, build_strategy, format_validation_error
from . import strategies as _builtin  # noqa: F401  (the method files register the built-in strategies)
from .registry import TOKEN_STRATEGIES, TokenBatch, TokenStrategy, as_strategy, function_strategy_class, strategy_terms
from .stats import _summary


def _name_and_args(spec: Any) -> tuple[str, dict]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"token strategy spec must be a mapping with a 'name' key, got {spec!r}")
    args = dict(spec)
    name = args.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"token strategy spec needs a 'name' string, got {spec!r}")
    return name, args


def _parse(spec: Any) -> list[tuple[TokenStrategy, dict]]:
    name, args = _name_and_args(spec)
    obj = TOKEN_STRATEGIES.get(name)  # a registered function strategy, or whatever an import path names
    if inspect.isclass(obj):  # a Strategy subclass by import path: built (and checked) by the protocol
        return [(term, {}) for term in strategy_terms(build_strategy("token", {"name": name, **args}))]
    strat = as_strategy(obj, name)
    strat.check_args(args)
    return [(strat, args)]


def _entries(items: Optional[Iterable[Any]]) -> list[tuple[TokenStrategy, dict]]:
    out: list = []
    for item in items or []:
        if isinstance(item, Strategy):
            out.extend((term, {}) for term in strategy_terms(item))
        else:
            out.extend(_parse(item))
    return out


def parse_token_specs(specs: Optional[Iterable[Any]]) -> list[tuple[TokenStrategy, dict]]:
    """Validate a list of ``{"name": ..., **args}`` specs (unknown name -> ``RegistryError``, unknown argument
    -> ``ValueError``, both one line naming the strategy); returns ``[(strategy, args), ...]``.

    A built strategy (or a ``Strategy`` subclass given by import path) gives one ``(TokenStrategy, {})`` per token
    hook it implements, whose ``kind`` is that hook's token kind."""
    return _entries(specs)


def required_inputs(specs: Optional[Iterable[Any]]) -> frozenset:
    """Union of the optional :class:`TokenBatch` inputs the configured strategies need (see ``registry.INPUTS``)."""
    out: set = set()
    for strat, args in _entries(specs):
        out |= strat.requirements(args)
    return frozenset(out)


def clipping_disabled(specs: Optional[Iterable[Any]]) -> bool:
    """True if a configured strategy requires the policy loss without ratio clipping (KL-Cov)."""
    return any(strat.disables_clipping for strat, _ in _entries(specs))


def build_token_strategies(specs: Optional[Iterable[Any]], env: Optional[StrategyEnv] = None) -> List[Strategy]:
    """``protocol.build_strategies("token", specs, env, unique=False)`` that also accepts a plain function given
    by import path (``pkg.mod:fn``, as recipes always could): its protocol class has a Config derived from the
    function's keyword signature. Errors are one line, prefixed with the list index (``0: steer: ...``); a name
    may repeat (diagnostics then use ``name#2``)."""
    out: List[Strategy] = []
    for i, spec in enumerate(specs or []):
        try:
            out.append(_build_one(spec, env))
        except (StrategyError, RegistryError, ValueError) as exc:
            raise type(exc)(f"{i}: {exc}") from None
    return out


def _build_one(spec: Any, env: Optional[StrategyEnv]) -> Strategy:
    name, args = _name_and_args(spec)
    if ":" in name and name not in TOKEN_STRATEGIES:
        obj = import_path(name, "token weighting strategy")
        if not inspect.isclass(obj) and callable(obj):
            cls = function_strategy_class(obj, name)
            try:
                config = cls.Config(**args)
            except ValidationError as exc:
                raise StrategyError(f"{name}: {format_validation_error(exc)}") from None
            return cls(config, env or StrategyEnv())
    return build_strategy("token", {"name": name, **args}, env)


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
    """Run every configured strategy (specs or built strategies) on ``batch`` and combine them (module
    docstring for the rule)."""
    parsed = _entries(specs)
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

    ``specs`` is a list of ``{"name": ..., **args}`` (or bare names, or built strategies). Only ``kind ==
    "weight"`` strategies are accepted here (a loss term or advantage strategy raises ``ValueError``: use
    :func:`apply_token_strategies`). An empty list gives ``mask`` as float (all-ones weights). Diagnostics: per
    strategy, ``mean``, ``std``, ``min``, ``max``, ``frac_zero`` of its own weights over valid tokens.
    """
    specs = list(specs or [])
    for strat, _ in _entries(specs):
        if strat.kind != "weight":
            raise ValueError(f"token strategy '{strat.name}' is a {strat.kind}, not a weight; "
                             f"use apply_token_strategies for it")
    res = apply_token_strategies(specs, batch)
    w = res.weights if res.weights is not None else batch.mask.bool().float()
    return w, res.diagnostics


def dry_run_token_strategies(strategies: Optional[Iterable[Any]]) -> None:
    """Run the strategies (built, or specs) once on a tiny synthetic batch holding every optional input, so that
    argument values only a strategy's function rejects are reported at validate time, in one line, and not as a
    traceback in the middle of training. Raises what :func:`apply_token_strategies` raises."""
    g = torch.Generator().manual_seed(0)
    b, t, v = 4, 3, 5
    logps = -torch.rand(b, t, generator=g)
    full = torch.log_softmax(torch.randn(b, t, v, generator=g), dim=-1)
    batch = TokenBatch(advantages=torch.randn(b, generator=g), mask=torch.ones(b, t), logps=logps,
                       old_logps=logps, entropies=torch.rand(b, t, generator=g),
                       old_entropies=torch.rand(b, t, generator=g), entropies_grad=torch.rand(b, t, generator=g),
                       group_size=2, full_logprobs_fn=lambda: full,
                       clip_low=0.2, clip_high=0.2, generator=g)
    apply_token_strategies(list(strategies or []), batch)
