"""A first-order bilevel domain-weight rule in the spirit of ScaleBiO (Pan et al., arXiv 2406.19976, ACL 2025) and
DreamPRM (arXiv 2505.20241): mirror descent on the simplex with the first-order hypergradient of the held-out loss
(``methods.md`` H1.1 / H1.2).

The bilevel problem: the model ``theta*(alpha)`` is trained on the alpha-weighted mixture ``sum_d alpha_d L_d``; the
weights minimise the held-out (meta) loss ``L_val(theta*(alpha))``. Approximations, stated:

1. One-step lookahead: ``theta'(alpha) = theta - lr sum_d alpha_d g_d`` (DreamPRM's one-step unrolled lower problem;
   ScaleBiO instead keeps a second model copy ``u``, which a strategy cannot hold -- not implemented).
2. First order: ``dL_val(theta')/dalpha_d = -lr <grad L_val(theta'), g_d> ~= -lr <g_val, g_d>``, evaluated at
   ``theta`` (the Hessian-vector term and ``theta' != theta`` dropped) -- methods.md H1.1's "cheap first-order
   variant ... gradient alignment". ``g_d`` = ``ctx.domain_gradients()[d]``, ``g_val`` = ``ctx.heldout_gradient()``.
   The learning rate ``lr`` is folded into the step size.
3. Mirror descent with the entropy mirror map (exponentiated gradient) on the simplex instead of the papers'
   AdamW on softmax / softplus logits: ``log alpha <- log alpha - eta * h``, ``h = -s / ||s||`` (``s_d = <g_val,
   g_d>``; ``normalize: l2``, the default, makes ``eta`` the logit change per update independent of the
   gradients' scale -- a choice, ScaleBiO optionally clips its lambda-gradient instead) or ``h = -s``
   (``normalize: none``); then ``alpha = softmax(log alpha)`` and the optional floor (KL projection onto
   ``{alpha_d >= floor / D}``; that is projected mirror descent).

State: the log-weights (``log_weights``, recentred to max 0 and clamped at -800 so they stay finite; exp(-800) is 0 in
float64, so no weight changes) and ``num_updates``. They start from ``ctx.weights_D`` at the first call; later calls
continue from the state (``ctx.weights_D`` is not read again). Zero gradients leave the weights unchanged.
Scope: as ``influence`` -- all-process gradients from the services, or ``sharded_gradients`` partial dot products
summed with ``ctx.all_reduce_sum``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import torch
from pydantic import Field

from posttrain.checks import check_choice, check_real
from posttrain.weighting.protocol import DomainContext, Strategy, StrategyConfig, StrategyEnv, register_strategy

from ._common import LOGIT_RANGE, alignment_scores, as_f64, apply_floor, context_arrays, to_list

__all__ = ["mirror_descent_step", "BilevelConfig", "BilevelMixing"]

_PAPERS = "ScaleBiO, Pan et al., arXiv 2406.19976; DreamPRM, arXiv 2505.20241"


def _log_weights(weights: torch.Tensor) -> torch.Tensor:
    logits = torch.log(weights)
    logits = logits - logits.max()
    return logits.clamp(min=-LOGIT_RANGE)


def mirror_descent_step(log_weights: Any, alignment: Any, *, step_size: float = 0.1, normalize: str = "l2",
                        floor: float = 0.0) -> torch.Tensor:
    """One projected mirror-descent step on the simplex; returns the new float64 log-weights ``[D]`` (max 0,
    clamped at -800)::

        h  = -s / ||s||_2   (normalize="l2"; h = 0 when s = 0)   or   h = -s   (normalize="none")
        l' = log_weights - step_size * h                  (the first-order hypergradient is -lr * s)
        alpha = softmax(l');  alpha = KL projection onto {alpha_d >= floor / D};  return log(alpha) (recentred)

    ``alignment`` = ``s_d = <g_val, g_d>``; ``step_size`` > 0; ``floor`` in [0, 1] (fraction of 1/D). Zero
    alignment returns the (recentred) log-weights unchanged."""
    l0 = as_f64("log_weights", log_weights)
    s = as_f64("alignment", alignment)
    if l0.dim() != 1 or l0.numel() == 0 or s.shape != l0.shape:
        raise ValueError(f"log_weights and alignment must both be [D], got {tuple(l0.shape)} and {tuple(s.shape)}")
    eta = check_real("step_size", step_size, 0.0, low_open=True)
    check_choice("normalize", normalize, ("l2", "none"))
    floor = check_real("floor", floor, 0.0, 1.0)
    l0 = (l0 - l0.max()).clamp(min=-LOGIT_RANGE)
    if bool((s == 0).all()):
        return l0
    if normalize == "l2":
        scale = s.abs().max()
        s = s / scale
        s = s / torch.linalg.vector_norm(s)
    step = eta * s
    if not torch.isfinite(step).all():
        raise ValueError("step_size * alignment overflows float64; use normalize='l2' or a smaller step_size")
    # Only differences of the logits matter: shift the step by its max (<= 0 after; clamped, so a range beyond
    # float64 cannot become -inf).
    step = (step - step.max()).clamp(min=-2 * LOGIT_RANGE)
    logits = l0 + step
    alpha = torch.softmax(logits, dim=0)
    if floor > 0:
        alpha = apply_floor(alpha, floor / alpha.numel())
        return _log_weights(alpha)
    return (logits - logits.max()).clamp(min=-LOGIT_RANGE)


class BilevelConfig(StrategyConfig):
    """Arguments of the ``bilevel`` domain strategy."""

    step_size: float = Field(0.1, gt=0, allow_inf_nan=False, description=(
        "eta of the mirror-descent step log alpha <- log alpha + eta s / ||s|| on the first-order hypergradient "
        "-lr <g_val, g_d> (lr folded in). With normalize 'l2' the L2 norm of the logit change per update; a "
        "choice: ScaleBiO's lambda lr is 1e-2 and DreamPRM's meta_lr 0.01, both under AdamW on logits "
        f"({_PAPERS}; methods.md H1.1, H1.2)"))
    normalize: Literal["l2", "none"] = Field("l2", description=(
        "'l2' divides the alignment vector s by its L2 norm (scale-free steps; zero s -> no step); 'none' uses the "
        "raw dot products (step_size then carries the lower learning rate and the gradients' scale). A choice "
        f"standing in for ScaleBiO's optional lambda-gradient clipping ({_PAPERS})"))
    floor: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description=(
        "Every domain keeps at least floor / D (fraction of the uniform weight; KL projection = projected mirror "
        "descent). Default 0: as the papers' softmax (ScaleBiO) / softplus (DreamPRM) weights, none is ever "
        f"forced up ({_PAPERS})"))
    sharded_gradients: bool = Field(False, description=(
        "True when each process's domain_gradients() / heldout_gradient() are a disjoint parameter slice (ZeRO-3 "
        "/ FSDP): the partial dot products are summed over processes with all_reduce_sum (ScaleBiO mean-reduces "
        f"its lambda-gradient across ranks; {_PAPERS}). False: full gradients, identical on every rank"))


@register_strategy("domain", "bilevel")
class BilevelMixing(Strategy):
    """First-order bilevel weights: mirror descent on the held-out loss's hypergradient (ScaleBiO / DreamPRM spirit).

    Hook ``domain_weights``: ``s = ctx.domain_gradients() @ ctx.heldout_gradient()`` (summed over processes when
    ``sharded_gradients``), :func:`mirror_descent_step` on the kept log-weights, returns their softmax. Logs
    ``domain_weighting/bilevel/alignment/<domain>``. State ``{"log_weights": [D] floats or None, "num_updates":
    int}``."""

    Config = BilevelConfig
    cite = (f"{_PAPERS}: bilevel domain reweighting; here first-order one-step hypergradient -lr <g_val, g_d> "
            f"(methods.md H1.1 recipe) with entropic mirror descent on the simplex")

    needs_heldout = True

    def __init__(self, config: Optional[BilevelConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        self.log_weights: Optional[torch.Tensor] = None
        self.num_updates = 0

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        w, _ = context_arrays(ctx)
        if self.log_weights is None:
            self.log_weights = _log_weights(w)
        elif self.log_weights.numel() != w.numel():
            raise ValueError(f"bilevel: the kept state has {self.log_weights.numel()} domains, the context "
                             f"{w.numel()}")
        if w.numel() == 1:  # nothing to mix: no gradient is requested
            self.num_updates += 1
            return [1.0]
        s = alignment_scores(ctx, w.numel(), sharded=self.config.sharded_gradients, log_key="domain_weighting/bilevel/alignment")
        c = self.config
        self.log_weights = mirror_descent_step(self.log_weights, s, step_size=c.step_size, normalize=c.normalize,
                                               floor=c.floor)
        self.num_updates += 1
        return to_list(torch.softmax(self.log_weights, dim=0))

    def state_dict(self) -> Dict[str, Any]:
        return {"log_weights": None if self.log_weights is None else to_list(self.log_weights),
                "num_updates": int(self.num_updates)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = [k for k in ("log_weights", "num_updates") if k not in state]
        if missing:
            raise ValueError(f"bilevel state is missing {', '.join(missing)}")
        lw = state["log_weights"]
        self.log_weights = None if lw is None else \
            as_f64("state.log_weights", lw).reshape(-1)
        self.num_updates = int(state["num_updates"])
