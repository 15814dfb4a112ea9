"""MADPO: Margin-Adaptive Direct Preference Optimization (H. G. Rho, arXiv 2510.05342).

Official code: ``sirano1004/Margin-Apative-Direct-Preference-Optimization`` ("Apative" is the repository's own
spelling), ``utils/loss_functions.py::MADPOLoss`` (``coef`` and ``forward``); the experiments' hyper-parameters are
in ``notebooks/MADPO.ipynb``.

The paper's objective is ``L(theta) = E[-w(h) log sigma(beta * Delta_theta)]`` with ``h = r(y_w) - r(y_l)`` the
margin of a frozen Bradley-Terry reward model toward the labelled winner, ``w(h) = sigma(c(|h|) h) / sigma(h)`` for
``h > -tau`` and 1 below (the margin-adaptive weight), and ``c(m)`` the logistic coefficient of
:func:`madpo_coefficient`. A plain mean: the weights are not renormalised.

* :func:`madpo_coefficient`, :func:`madpo_weights` -- the pure math (detached; finite for any finite margin; a
  non-finite margin raises ``ValueError`` naming the argument).
* :class:`MADPOStrategy` -- the ``pair`` strategy ``madpo``: hook ``pair_weights(ctx)`` returns
  ``madpo_weights(ctx.columns["margin"], ...)``. It needs a ``margin`` column in the training data (``columns``);
  the ``reward_model+dpo`` algorithm computes it.

Defaults: the official class defaults (``c_max=2, c_min=0.5, lam=1, tau=2``). The paper's experiment notebook uses
``tau = ln(0.999/0.001) ~= 6.907`` (with ``c_min = 1/c_max = 0.5``); set ``tau: 6.907`` to follow it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Tuple

import torch
import torch.nn.functional as F
from pydantic import Field

from posttrain.checks import as_float_tensor as _as_float_tensor
from posttrain.checks import check_real as _check_real
from posttrain.weighting.protocol import PairContext, Strategy, StrategyConfig, register_strategy

__all__ = ["madpo_coefficient", "madpo_weights", "MADPOConfig", "MADPOStrategy"]

_CITE = ("MADPO, Rho, arXiv 2510.05342 (w(h) = sigma(c(|h|) h) / sigma(h) for h > -tau, else 1; "
         "c(m) = c_min + (c_max - c_min) / (1 + (c_max - 1)/(1 - c_min) exp(lam (m - tau)))); "
         "sirano1004/Margin-Apative-Direct-Preference-Optimization utils/loss_functions.py::MADPOLoss")


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(x) = -softplus(-x)``; same values as ``F.logsigmoid`` (the linear branch above |x| = 50 is exact
    to float64 precision) but much faster on CPU."""
    return -F.softplus(-x, threshold=50.0)


def _validate_madpo(c_max: float, c_min: float, lam: float, tau: float) -> Tuple[float, float, float, float]:
    c_max = _check_real("c_max", c_max)
    c_min = _check_real("c_min", c_min)
    lam = _check_real("lam", lam)
    tau = _check_real("tau", tau)
    if not (c_min < 1.0 < c_max):
        raise ValueError(
            f"MADPO needs c_min < 1 < c_max (got c_min={c_min}, c_max={c_max}); otherwise the factor "
            f"(c_max - 1)/(1 - c_min) in c(m) is not positive and c(tau) = 1 no longer holds"
        )
    if lam <= 0:
        raise ValueError(f"MADPO needs lam > 0 (got lam={lam})")
    if tau <= 0:
        raise ValueError(f"MADPO needs tau > 0 (got tau={tau})")
    return c_max, c_min, lam, tau



def madpo_coefficient(
    m: Any, *, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = 2.0
) -> torch.Tensor:
    """MADPO margin coefficient ``c(m)``.

    Paper: "Margin-Adaptive Direct Preference Optimization" (MADPO), arXiv 2510.05342. Official code:
    ``sirano1004/Margin-Apative-Direct-Preference-Optimization``, ``utils/loss_functions.py::MADPOLoss.coef``::

        c(m) = c_min + (c_max - c_min) / (1 + ((c_max - 1)/(1 - c_min)) * exp(lam * (m - tau)))

    with ``m = |h|`` the absolute reward-model margin. Properties: ``c(tau) = 1`` (exactly 1.0 for the defaults,
    to within one rounding otherwise); ``c -> c_min`` as ``m -> inf``; ``c(0)`` is below ``c_max``; decreasing in m.

    Defaults are the official class defaults (c_max=2, c_min=0.5, lam=1, tau=2); the paper's notebook uses
    ``tau = ln(0.999/0.001) ~= 6.907``. Requires ``c_min < 1 < c_max``, ``lam > 0``, ``tau > 0`` (``ValueError``
    otherwise). Numerics: the formula is evaluated as in the official code, in float64; for huge ``m`` the exp
    overflows to ``inf`` in the *denominator only*, which gives exactly ``c_min`` (never NaN); for very negative
    arguments it underflows to 0, giving ``c_max``. Returns a detached tensor of ``m``'s shape and float dtype.
    """
    c_max, c_min, lam, tau = _validate_madpo(c_max, c_min, lam, tau)
    m_t = _as_float_tensor("m", m)
    k = (c_max - 1.0) / (1.0 - c_min)
    x = m_t.to(torch.float64)
    c = c_min + (c_max - c_min) / (1.0 + k * torch.exp(lam * (x - tau)))
    return c.to(m_t.dtype)


def madpo_weights(
    margins: Any, *, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = 2.0
) -> torch.Tensor:
    """MADPO per-pair weights (Margin-Adaptive DPO, arXiv 2510.05342).

    ``margins`` is ``h = r(y_w) - r(y_l)``: the frozen Bradley-Terry reward model's margin *toward the labelled
    winner* (the official code computes ``h1 = r1 - r2`` and ``h2 = -h1`` and picks the one of the labelled choice).
    Official code ``utils/loss_functions.py::MADPOLoss.forward``::

        w = sigmoid(c(|h|) * h) / sigmoid(h)   if h > -tau
        w = 1                                  if h <= -tau   (cap for strongly "mislabelled" pairs)

    The loss is then ``mean_i w_i * (-log sigmoid(beta * (Delta_w - Delta_l)))`` -- a plain mean, weights are NOT
    renormalised (pass them as ``weights=`` to ``dpo_loss``).

    Behaviour: hard positive pairs (small ``h > 0``, ``c > 1``) get ``w > 1``; easy pairs (``h > tau``, ``c < 1``)
    get ``w < 1`` (-> 1 as h -> inf); mildly negative ``h in (-tau, 0)`` gets ``w < 1``; ``w = 1`` at ``h = 0`` and
    the cap is continuous at ``h = -tau`` because ``c(tau) = 1``. For ``h > 0`` the weight is bounded by 2.

    Numerics: the sigmoid ratio is computed as ``exp(logsigmoid(c*h) - logsigmoid(h))`` in float64 (stable for any
    finite margin, e.g. +-1e4). With a very large ``tau`` and ``h`` close to ``-tau`` the weight is genuinely tiny
    (about ``exp(-(c-1)|h|)``) and can underflow to 0 -- still finite.

    Args: ``margins`` any-shape finite tensor (or list); hyper-parameters as in :func:`madpo_coefficient`.
    Returns: detached weights, same shape as ``margins``, float dtype of ``margins`` (float32 for integer input).
    Raises ``ValueError`` for non-finite margins or invalid hyper-parameters.
    """
    c_max, c_min, lam, tau = _validate_madpo(c_max, c_min, lam, tau)
    h_in = _as_float_tensor("margins", margins)
    h = h_in.to(torch.float64)
    c = madpo_coefficient(h.abs(), c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    ratio = torch.exp(_logsigmoid(c * h) - _logsigmoid(h))
    w = torch.where(h > -tau, ratio, torch.ones_like(ratio))
    return w.to(h_in.dtype).detach()


# ----------------------------------------------------------------------------------------------------------- strategy
class MADPOConfig(StrategyConfig):
    """Arguments of the ``madpo`` pair strategy (the hyper-parameters of :func:`madpo_weights`)."""

    c_max: float = Field(2.0, gt=1.0, allow_inf_nan=False, description=(
        "Upper asymptote of the coefficient c(m); must exceed 1 (c(tau) = 1 needs c_min < 1 < c_max). "
        "Default 2, the official class default and the paper's notebook value (MADPO, arXiv 2510.05342, c(m); "
        "sirano1004/Margin-Apative-Direct-Preference-Optimization utils/loss_functions.py::MADPOLoss.coef)"))
    c_min: float = Field(0.5, lt=1.0, allow_inf_nan=False, description=(
        "Lower asymptote of c(m), reached for large |h| (easy pairs are down-weighted toward it); must be below 1. "
        "Default 0.5 = 1/c_max, the official default and the paper's notebook value (MADPO, arXiv 2510.05342, "
        "c(m); utils/loss_functions.py::MADPOLoss.coef)"))
    lam: float = Field(1.0, gt=0.0, allow_inf_nan=False, description=(
        "Slope lambda of the logistic c(m) around m = tau (> 0). Default 1, official and notebook value "
        "(MADPO, arXiv 2510.05342, c(m); utils/loss_functions.py::MADPOLoss.coef)"))
    tau: float = Field(2.0, gt=0.0, allow_inf_nan=False, description=(
        "Margin where c(tau) = 1 and below whose negative (h <= -tau) the weight is capped at 1 (> 0). Default 2, "
        "the official class default; the paper's experiments use tau = ln(0.999/0.001) ~= 6.907 "
        "(MADPO, arXiv 2510.05342, w(h); utils/loss_functions.py::MADPOLoss.forward, notebooks/MADPO.ipynb)"))


@register_strategy("pair", "madpo")
class MADPOStrategy(Strategy):
    """MADPO: weight each pair by sigma(c(|h|) h) / sigma(h) of its reward-model margin h (arXiv 2510.05342).

    Hook ``pair_weights(ctx)``: ``madpo_weights(ctx.columns["margin"], c_max, c_min, lam, tau)`` -- ``[B]``
    detached weights the trainer multiplies into the per-pair losses (with a ``weight`` column and the other
    strategies' weights). The ``margin`` column (``r(chosen) - r(rejected)``) must be in the training data
    (:attr:`columns`); algorithm ``reward_model+dpo`` computes it. Stateless.
    """

    Config = MADPOConfig
    cite = _CITE
    #: data columns this strategy reads from ``ctx.columns`` (the trainer checks the dataset has them)
    columns: ClassVar[Tuple[str, ...]] = ("margin",)

    def pair_weights(self, ctx: PairContext) -> torch.Tensor:
        c = self.config
        return madpo_weights(ctx.columns["margin"], c_max=c.c_max, c_min=c.c_min, lam=c.lam, tau=c.tau)
