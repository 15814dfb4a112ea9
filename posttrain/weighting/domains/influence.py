"""TiKMiX-style group influence over domains (Wang et al., "TiKMiX: Take Data Influence into Dynamic Mixture",
arXiv 2508.17677; ``methods.md`` H1.4).

Completeness (methods.md H1.4): official code **[NOT FOUND]**; the Group Influence formula is known from a
third-party restatement, the TiKMiX-D objective ("Eq. 10") only qualitatively, the Hessian approximation
**[NOT FOUND]**. What is implemented, with every choice explicit:

1. Group influence with an identity Hessian ([inferred] in methods.md H1.4): the paper's
   ``I_f(S) = -grad f(theta)^T H^-1 sum_{j in S} grad L(z_j)`` with ``H = I`` and ``f`` the held-out loss is
   ``-<g_val, g_d>``; the *score* used here is its negative, ``s_d = <g_val, g_d>`` (:func:`influence_scores`):
   the first-order decrease of the held-out loss from upweighting domain ``d`` (up to the learning rate).
   ``g_d`` = ``ctx.domain_gradients()[d]``, ``g_val`` = ``ctx.heldout_gradient()``. Adam's diagonal
   preconditioner (methods.md's alternative) is not available from the context and not implemented.
2. Standardise across domains, ``s~ = (s - mean s) / std s`` (population std; all zero when the std is 0) --
   methods.md's "Ĩ standardised across k"; ``standardize: false`` keeps the raw scores.
3. TiKMiX-D-like target, methods.md's recipe: ``w* = argmax_{w in simplex} sum_d w_d s~_d - tau KL(w || pi)``
   = ``pi * exp(s~ / tau) / Z``. ``prior="uniform"``: ``KL(w || uniform) = -H(w) + const``, i.e. methods.md's
   entropy term (``w* = softmax(s~ / tau)``). ``prior="previous"``: ``pi = w_prev``, the exponentiated-gradient
   (multiplicative-weights) step with step size ``1 / tau``.
4. Mix with the distribution in use: ``w = (1 - eta) w_prev + eta w*`` (methods.md: eta = 0.5, tau = 1).
5. Floor: the KL projection onto ``{w_d >= floor / D}`` (``floor`` as a fraction of the uniform weight; a choice --
   the paper's diversity constraint is [NOT FOUND]).
6. No measurement, no change: when every score is exactly 0 (zero domain or held-out gradients), ``w_prev`` is
   returned unchanged (a choice: the entropy prior alone would otherwise drift the mix toward uniform).

Frequency: the trainer calls the hook every ``update_every`` steps (TiKMiX: "periodically"). Stateless: ``w_prev``
is ``ctx.weights_D``, the mix in use. Scope: the rule uses the services' all-process gradients; with
``sharded_gradients: true`` (each process holds a disjoint slice of the parameters, e.g. ZeRO-3 / FSDP shards) the
partial dot products are summed over processes with ``ctx.all_reduce_sum``.
"""
from __future__ import annotations

from typing import Any, List, Literal, Optional

import torch
from pydantic import Field

from posttrain.checks import check_choice, check_real
from posttrain.weighting.protocol import DomainContext, Strategy, StrategyConfig, StrategyEnv, register_strategy

from ._common import LOGIT_RANGE, alignment_scores, as_f64, apply_floor, check_gradients, check_weights, context_arrays, to_list

__all__ = ["influence_scores", "standardize_scores", "influence_weights", "InfluenceConfig", "InfluenceMixing"]

_PAPER = "TiKMiX, Wang et al., arXiv 2508.17677"


def influence_scores(domain_gradients: Any, heldout_gradient: Any) -> torch.Tensor:
    """``[D]`` float64 scores ``s_d = <g_val, g_d>`` (group influence on the held-out loss with an identity
    Hessian, sign flipped so that larger = more useful). ``domain_gradients`` ``[D, P]``, ``heldout_gradient``
    ``[P]``; non-finite input is a ``ValueError`` naming the argument. (A product of huge finite gradients can
    overflow to inf; that is a ``ValueError`` naming ``scores`` in :func:`influence_weights`.)"""
    G, g = check_gradients(domain_gradients, heldout_gradient)
    return G @ g


def standardize_scores(scores: torch.Tensor) -> torch.Tensor:
    """``(s - mean s) / std s`` over the domains (population std), all zeros when the std is 0 (or ``D = 1``).
    Scaled by the largest magnitude first, so huge finite scores cannot overflow."""
    s = scores.to(torch.float64)
    scale = float(s.abs().max()) if s.numel() else 0.0
    if scale == 0.0:
        return torch.zeros_like(s)
    s = s / scale
    sd = s.std(unbiased=False)
    if not bool(sd > 0):
        return torch.zeros_like(s)
    return (s - s.mean()) / sd


def influence_weights(weights: Any, scores: Any, *, temperature: float = 1.0, mixing: float = 0.5,
                      prior: str = "uniform", standardize: bool = True, floor: float = 0.1) -> torch.Tensor:
    """The next ``[D]`` float64 mix from the mix in use ``weights`` and the influence ``scores`` (steps 2-6 of the
    module docstring)::

        s~ = standardize(s)                      (or s when standardize is False)
        w* = pi * exp(s~ / tau) / Z              pi = uniform (entropy term) or weights (exponentiated gradient)
        w  = (1 - eta) * weights + eta * w*
        w  = KL projection onto {w_d >= floor / D}

    Every score exactly 0 -> ``weights`` unchanged (normalised). ``tau = temperature > 0``,
    ``eta = mixing in (0, 1]``, ``floor in [0, 1]`` (fraction of the uniform weight 1/D)."""
    w = check_weights("weights", weights)
    s = as_f64("scores", scores)
    if s.shape != w.shape:
        raise ValueError(f"scores must be [D] = {tuple(w.shape)} like weights, got shape {tuple(s.shape)}")
    tau = check_real("temperature", temperature, 0.0, low_open=True)
    eta = check_real("mixing", mixing, 0.0, 1.0, low_open=True)
    floor = check_real("floor", floor, 0.0, 1.0)
    check_choice("prior", prior, ("uniform", "previous"))
    d = w.numel()
    if d == 1 or bool((s == 0).all()):
        return w
    z = standardize_scores(s) if standardize else s
    # (z - max z) / tau <= 0; clamped at -LOGIT_RANGE (exp of that is 0 in float64) so no inf - inf can occur.
    logits = ((z - z.max()) / tau).clamp(min=-LOGIT_RANGE)
    if prior == "previous":
        logits = logits + torch.log(w)  # -inf where the previous weight is 0 (stays 0, as multiplicative weights do)
    target = torch.softmax(logits, dim=0)
    new = (1.0 - eta) * w + eta * target
    return apply_floor(new, floor / d)


class InfluenceConfig(StrategyConfig):
    """Arguments of the ``influence`` domain strategy."""

    temperature: float = Field(1.0, gt=0, allow_inf_nan=False, description=(
        "tau of the target w* ∝ pi exp(s~ / tau) = argmax sum_d w_d s~_d - tau KL(w || pi): the weight of the "
        "diversity (entropy) term; smaller = greedier. methods.md H1.4 [inferred] start tau = 1 (TiKMiX-D's "
        f"objective, Eq. 10, is [NOT FOUND]; {_PAPER})"))
    mixing: float = Field(0.5, gt=0, le=1, allow_inf_nan=False, description=(
        "eta: the new mix is (1 - eta) w_prev + eta w* (a step size toward the influence-maximising target; "
        f"1 = jump). methods.md H1.4 [inferred] eta = 0.5 ({_PAPER})"))
    prior: Literal["uniform", "previous"] = Field("uniform", description=(
        "pi of the KL term: 'uniform' is methods.md H1.4's entropy term (w* = softmax(s~ / tau)); 'previous' "
        "regularises toward the mix in use (exponentiated gradient, w* ∝ w_prev exp(s~ / tau)). A choice: the "
        f"paper's diversity term is [NOT FOUND] ({_PAPER})"))
    standardize: bool = Field(True, description=(
        "Standardise the scores across domains, (s - mean) / std, before the softmax (methods.md H1.4 [inferred] "
        "'Ĩ standardised across k'), so tau does not depend on the gradients' scale; false uses the raw dot "
        f"products ({_PAPER})"))
    floor: float = Field(0.1, ge=0, le=1, allow_inf_nan=False, description=(
        "Every domain keeps at least floor / D (a fraction of the uniform weight 1/D; KL projection onto that "
        "box). A choice standing in for TiKMiX's 'preserving data diversity' constraint, which is [NOT FOUND] "
        f"({_PAPER}; methods.md H1.4)"))
    sharded_gradients: bool = Field(False, description=(
        "True when each process's domain_gradients() / heldout_gradient() hold a disjoint slice of the "
        "parameters (ZeRO-3 / FSDP shards): the partial dot products <g_val, g_d> are summed over processes with "
        "all_reduce_sum. False: the services return the full (all-process) gradients, identical on every rank "
        f"(group influence I_f(S), {_PAPER})"))


@register_strategy("domain", "influence")
class InfluenceMixing(Strategy):
    """TiKMiX-style: shift the mix toward domains whose gradient aligns with the held-out gradient (arXiv 2508.17677).

    Hook ``domain_weights``: ``s = ctx.domain_gradients() @ ctx.heldout_gradient()`` (:func:`influence_scores`;
    all-reduced over processes when ``sharded_gradients``), then :func:`influence_weights` from ``ctx.weights_D``.
    Logs ``domain_weighting/influence/score/<domain>``. Stateless (the previous mix is ``ctx.weights_D``)."""

    Config = InfluenceConfig
    cite = (f"{_PAPER}: Group Influence (identity Hessian, [inferred]) and an influence-maximising mix with an "
            f"entropy term (TiKMiX-D, Eq. 10 [NOT FOUND]); methods.md H1.4 recipe")

    needs_heldout = True

    def __init__(self, config: Optional[InfluenceConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        w, _ = context_arrays(ctx)
        if w.numel() == 1:
            return [1.0]
        s = alignment_scores(ctx, w.numel(), sharded=self.config.sharded_gradients, log_key="domain_weighting/influence/score")
        c = self.config
        return to_list(influence_weights(w, s, temperature=c.temperature, mixing=c.mixing, prior=c.prior,
                                         standardize=c.standardize, floor=c.floor))
