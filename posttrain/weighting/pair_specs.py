"""Recipe specs ``weighting.pairs: [{name: ..., <args>}]`` -> one :class:`PairWeighting` (torch only).

Two kinds of pair strategy live in :data:`~posttrain.weighting.pairs.PAIR_STRATEGIES`:

* **margin strategies** -- functions ``f(margins, **args) -> weights [B]`` of a per-pair score margin
  ``h = r(y_w) - r(y_l)`` (a ``margin`` column of the data), e.g. ``madpo`` (MADPO, arXiv 2510.05342, D12). Several
  multiply.
* **gap strategies** -- classes with ``.step(gaps, generator) -> (keep [N] bool, beta 0-d)`` that see the
  policy's implicit-reward gaps each batch and keep state, e.g. ``beta_dpo`` (beta-DPO, arXiv 2407.08639, D13).
  At most one (two dynamic betas cannot both set the batch beta).

The trainer decides the scope (it all-gathers the gaps across processes, as beta-DPO's official code does) and
multiplies the margin weights with a user ``weight`` column; this module only builds and runs the strategies.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .pairs import PAIR_STRATEGIES

__all__ = ["PairWeighting", "build_pair_weighting", "dry_run_pair_specs"]


@dataclass
class PairWeighting:
    """The pair strategies of one run: margin functions (with their arguments bound) and an optional gap strategy."""

    margin_fns: List[Tuple[str, Callable[..., torch.Tensor]]] = field(default_factory=list)
    gap_strategy: Optional[Any] = None
    gap_name: Optional[str] = None

    @property
    def needs_margins(self) -> bool:
        return bool(self.margin_fns)

    @property
    def active(self) -> bool:
        return bool(self.margin_fns) or self.gap_strategy is not None

    def margin_weights(self, margins: torch.Tensor) -> torch.Tensor:
        """Product of the margin strategies' weights (detached, shape of ``margins``); ones if there are none."""
        w = torch.ones_like(margins, dtype=margins.dtype if margins.is_floating_point() else torch.float32)
        for name, fn in self.margin_fns:
            try:
                w = w * fn(margins).to(w.dtype)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return w.detach()


def _is_gap_strategy(obj: Any) -> bool:
    return inspect.isclass(obj) and callable(getattr(obj, "step", None))


def build_pair_weighting(specs: Sequence[Dict[str, Any]]) -> PairWeighting:
    """Build from ``[{"name": ..., **args}, ...]``. Raises ``ValueError`` / ``KeyError`` (``RegistryError``) /
    ``TypeError`` with a message naming the entry index and strategy; argument *values* of classes are checked here
    (their constructors validate), those of functions by :func:`dry_run_pair_specs`."""
    out = PairWeighting()
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name")
        obj = PAIR_STRATEGIES.get(name)
        if _is_gap_strategy(obj):
            if out.gap_strategy is not None:
                raise ValueError(f"{i}: {name}: only one batch-beta strategy is allowed (already have {out.gap_name})")
            try:
                out.gap_strategy, out.gap_name = obj(**spec), name
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{i}: {name}: {exc}") from None
        elif callable(obj):
            out.margin_fns.append((name, _bind(obj, spec)))
        else:
            raise TypeError(f"{i}: {name}: a pair strategy must be a function of margins or a class with .step()")
    return out


def _bind(fn: Callable[..., torch.Tensor], args: Dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    def weights(margins: torch.Tensor) -> torch.Tensor:
        return fn(margins, **args)

    weights.__name__ = getattr(fn, "__name__", "pair_strategy")
    return weights


def dry_run_pair_specs(specs: Sequence[Dict[str, Any]]) -> None:
    """Build the strategies and run them once on a tiny synthetic batch, so that a bad argument value
    (``c_min: 1.5``) is reported at ``posttrain validate`` time, in one line, not in the middle of training."""
    pw = build_pair_weighting(specs)
    g = torch.Generator().manual_seed(0)
    margins = torch.randn(6, generator=g) * 3
    for name, fn in pw.margin_fns:
        try:
            w = fn(margins)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
        if not isinstance(w, torch.Tensor) or w.shape != margins.shape or not torch.isfinite(w).all():
            raise ValueError(f"{name}: must return finite weights of the margins' shape [B]")
    if pw.gap_strategy is not None:
        # a copy: dry runs must not leave state behind in an object the caller might keep
        fresh = build_pair_weighting(specs).gap_strategy
        fresh.step(torch.randn(6, generator=g), generator=g)
