"""Upweighting ("scalarization"): natural sampling with per-domain loss factors that give the expected gradient of
temperature sampling (Li, Xu, Tan, Murray, Khashabi, "Upsample or Upweight?", arXiv 2410.04579, NAACL 2025;
``methods.md`` H2.2).

* :func:`upweight_factors` -- ``w_d = p_d(T) / q_d`` with ``q_d = n_d / sum_j n_j`` (natural sampling), so
  ``sum_d q_d w_d = 1`` and ``E_q[w_d grad l] = E_{p(T)}[grad l]``; the variance differs (the paper's point);
* :class:`Upweighting` -- the domain strategy ``upweight`` (hooks ``domain_weights`` -> ``q``, the natural mix,
  and ``domain_loss_weights`` -> ``w``; stateless), with the same temperature / cooldown fields as
  ``temperature`` (:class:`~.temperature.TemperatureScheduleConfig`).

Cooldown [inferred]: the paper's cooldown is a schedule of the *sampling* temperature. Here the same schedule
``T(step)`` sets the *target* mixture ``p(T(step))`` of the loss factors: the scalarised equivalent in expectation
(methods.md H2.2: the two are equivalent under full gradient descent). Exact T values / switch points [NOT FOUND].
"""
from __future__ import annotations

from typing import List

import torch

from posttrain.checks import check_real
from posttrain.weighting.protocol import DomainContext, register_strategy

from ._common import check_sizes, context_arrays, to_list
from .temperature import _PAPER, TemperatureSchedule

__all__ = ["upweight_factors", "Upweighting"]


def upweight_factors(sizes, temperature: float) -> torch.Tensor:
    """``[D]`` float64 loss factors ``w_d = p_d(T) / q_d``, ``p_d(T) = n_d^(1/T) / sum_j n_j^(1/T)``,
    ``q_d = n_d / sum_j n_j``; computed as ``exp(log p_d(T) - log q_d)``. Mean 1 under natural sampling
    (``sum_d q_d w_d = 1``); all ones at ``T = 1``; small domains get factors > 1 for ``T > 1``."""
    n = check_sizes(sizes)
    t = check_real("temperature", temperature, 0.0, low_open=True)
    log_n = torch.log(n)
    return torch.exp(torch.log_softmax(log_n / t, dim=0) - torch.log_softmax(log_n, dim=0))


@register_strategy("domain", "upweight")
class Upweighting(TemperatureSchedule):
    """Natural sampling with loss factors p_d(T)/q_d: temperature sampling's mix as loss weights (arXiv 2410.04579).

    Hooks: ``domain_weights`` -> ``q_d = n_d / sum_j n_j`` (the sampler draws the natural mix), and
    ``domain_loss_weights`` -> :func:`upweight_factors` at ``T = cooldown_temperature(ctx.step, ...)`` (relative to
    that natural mix, not to ``ctx.weights_D``); logs ``domain_weighting/upweight/T``. Stateless."""

    cite = (f"{_PAPER}: scalarization (upweighting) vs temperature sampling, and the cooldown (abstract; values "
            f"[NOT FOUND])")

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        _, sizes = context_arrays(ctx, need_sizes=True)
        return to_list(sizes / sizes.sum())

    def domain_loss_weights(self, ctx: DomainContext) -> List[float]:
        _, sizes = context_arrays(ctx, need_sizes=True)
        t = self.temperature_at(ctx.step)
        ctx.log("domain_weighting/upweight/T", t)
        return to_list(upweight_factors(sizes, t))
