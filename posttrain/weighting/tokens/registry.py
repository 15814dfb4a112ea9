"""``TokenBatch`` (what a trainer hands to token strategies), ``TokenStrategy`` and the ``TOKEN_STRATEGIES`` registry.

A token strategy is a callable ``(batch: TokenBatch, **args) -> Tensor[B, T]`` (or ``(Tensor, dict)`` with extra
diagnostics) with

- ``kind``: ``"weight"`` (multiplies the per-token policy loss; masks are {0,1} weights), ``"loss_term"`` (an
  extra per-token loss added to the policy loss, carries gradient, e.g. KL-Cov) or ``"advantage"`` (returns
  shaped [B, T] advantages, e.g. the entropy advantage of arXiv 2506.14758);
- ``needs``: the optional :class:`TokenBatch` inputs it reads (so the trainer computes an input only when a
  configured strategy needs it); ``needs_fn(args)`` may refine it from the arguments;
- ``disables_clipping``: the policy loss must run without ratio clipping (KL-Cov).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from ...registry import Registry

#: Optional inputs a strategy may declare in ``needs`` ("full_logprobs" = ``full_logprobs_fn`` or ``hidden`` +
#: ``lm_head_weight``). ``advantages`` and ``mask`` are always present.
INPUTS = frozenset({"logps", "old_logps", "entropies", "old_entropies", "group_size", "full_logprobs"})
KINDS = ("weight", "loss_term", "advantage")

TOKEN_STRATEGIES = Registry("token weighting strategy")


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """Everything a token strategy may read; all [B, T] tensors share the mask's shape.

    Fields: ``advantages`` [B] or [B, T]; ``mask`` [B, T] (nonzero = valid); ``logps`` current-policy log-probs of
    the sampled tokens (may carry grad; weights only read values, ``kl_cov`` differentiates through them);
    ``old_logps`` pi_old log-probs (with a single update per rollout, pi_old = pi_theta: pass
    ``logps.detach()``); ``entropies`` current-policy entropies (detached); ``old_entropies`` pi_old entropies
    (STEER; equal to ``entropies`` when pi_old = pi_theta); ``group_size`` G with contiguous groups
    (TW-GRPO); ``full_logprobs_fn`` a zero-argument callable returning [B, T, V] log-softmax, or ``hidden``
    [B, T, H] + ``lm_head_weight`` [V, H] (+ ``temperature``) for the chunked TW-GRPO path (preferred when both
    are given); ``clip_low`` / ``clip_high`` the policy loss's clip range (Clip-Cov uses it unless its spec sets
    one); ``generator`` a seeded CPU ``torch.Generator`` for Clip-Cov's random choice.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    logps: Optional[torch.Tensor] = None
    old_logps: Optional[torch.Tensor] = None
    entropies: Optional[torch.Tensor] = None
    old_entropies: Optional[torch.Tensor] = None
    group_size: Optional[int] = None
    full_logprobs_fn: Optional[Callable[[], torch.Tensor]] = None
    hidden: Optional[torch.Tensor] = None
    lm_head_weight: Optional[torch.Tensor] = None
    temperature: float = 1.0
    clip_low: Optional[float] = None
    clip_high: Optional[float] = None
    generator: Optional[torch.Generator] = None

    def has(self, need: str) -> bool:
        if need == "full_logprobs":
            return self.full_logprobs_fn is not None or (self.hidden is not None and self.lm_head_weight is not None)
        return getattr(self, need) is not None

    def replace(self, **changes: Any) -> "TokenBatch":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TokenStrategy:
    """A registered token strategy; call it as ``strategy(batch, **args)``."""

    name: str
    fn: Callable[..., Any]
    needs: frozenset = frozenset()
    kind: str = "weight"
    needs_fn: Optional[Callable[[Mapping[str, Any]], frozenset]] = None
    disables_clipping: bool = False
    params: tuple = field(default=(), compare=False)
    accepts_any: bool = field(default=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"token strategy '{self.name}': kind must be one of {KINDS}, got {self.kind!r}")
        unknown = set(self.needs) - INPUTS
        if unknown:
            raise ValueError(f"token strategy '{self.name}': unknown needs {sorted(unknown)}; known: {sorted(INPUTS)}")
        sig = inspect.signature(self.fn)
        ps = list(sig.parameters.values())[1:]  # first parameter is the batch
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        object.__setattr__(self, "params", tuple(p.name for p in ps if p.kind in named))
        object.__setattr__(self, "accepts_any", any(p.kind == p.VAR_KEYWORD for p in ps))
        # inspect.signature(strategy) shows the real arguments (batch, *, w_min=..., ...), for recipe checkers
        object.__setattr__(self, "__signature__", sig)
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    def check_args(self, args: Mapping[str, Any]) -> None:
        """One-line ``ValueError`` naming the strategy and the first unknown argument."""
        if self.accepts_any:
            return
        for k in args:
            if k not in self.params:
                raise ValueError(f"token strategy '{self.name}': unknown argument '{k}'; "
                                 f"accepted: {', '.join(self.params) or '(none)'}")

    def requirements(self, args: Mapping[str, Any] | None = None) -> frozenset:
        args = dict(args or {})
        self.check_args(args)
        return frozenset(self.needs_fn(args)) if self.needs_fn is not None else frozenset(self.needs)

    def __call__(self, batch: TokenBatch, **args: Any):
        self.check_args(args)
        for need in sorted(self.requirements(args)):
            if not batch.has(need):
                raise ValueError(f"token strategy '{self.name}' needs batch input '{need}', which was not provided")
        try:
            return self.fn(batch, **args)
        except ValueError as exc:
            raise ValueError(f"token strategy '{self.name}': {exc}") from None


def token_strategy(name: str, *, needs=(), kind: str = "weight", needs_fn=None, disables_clipping: bool = False):
    """Decorator: wrap ``fn(batch, **args)`` in a :class:`TokenStrategy` and register it under ``name``."""

    def _wrap(fn: Callable[..., Any]) -> TokenStrategy:
        strat = TokenStrategy(name=name, fn=fn, needs=frozenset(needs), kind=kind, needs_fn=needs_fn,
                              disables_clipping=disables_clipping)
        TOKEN_STRATEGIES.register(name, strat)
        return strat

    return _wrap


def as_strategy(obj: Any, name: str) -> TokenStrategy:
    """A registered :class:`TokenStrategy`, or a plain callable resolved from an import path, wrapped using its
    optional ``kind`` / ``needs`` / ``disables_clipping`` attributes (default: a weight needing nothing extra)."""
    if isinstance(obj, TokenStrategy):
        return obj
    if not callable(obj):
        raise ValueError(f"token strategy '{name}' is not callable")
    return TokenStrategy(name=name, fn=obj, needs=frozenset(getattr(obj, "needs", ())),
                         kind=getattr(obj, "kind", "weight"),
                         disables_clipping=bool(getattr(obj, "disables_clipping", False)))
