"""Temperature sampling over domains, with the optional cooldown of "Upsample or Upweight?" (Li, Xu, Tan, Murray,
Khashabi; arXiv 2410.04579, NAACL 2025); ``methods.md`` H2.2.

* :func:`temperature_weights` -- ``p_d(T) = n_d^(1/T) / sum_j n_j^(1/T)`` (T = 1 proportional, T -> inf uniform);
* :func:`cooldown_temperature` -- the temperature at a step under the cooldown schedule;
* :class:`TemperatureScheduleConfig` -- the temperature / cooldown fields (shared with ``upweight``);
* :class:`TemperatureSampling` -- the domain strategy ``temperature`` (hook ``domain_weights``; stateless: the
  temperature is a function of ``ctx.step``).

Completeness: the paper's official code and its exact cooldown values are **[NOT FOUND]** (methods.md H2.2: only
the abstract and summaries). The cooldown implemented here is methods.md's [inferred] default: ``T_high`` for the
first fraction ``f`` of training, then a step or a linear decay to ``T_low``.
"""
from __future__ import annotations

from typing import List, Literal, Optional

import torch
from pydantic import Field, model_validator

from posttrain.checks import check_choice, check_real
from posttrain.weighting.protocol import DomainContext, Strategy, StrategyConfig, StrategyEnv, register_strategy

from ._common import check_sizes, context_arrays, to_list

__all__ = ["temperature_weights", "cooldown_temperature", "TemperatureScheduleConfig", "TemperatureSampling",
           "TemperatureSchedule"]

_PAPER = "Li et al., Upsample or Upweight?, arXiv 2410.04579 (NAACL 2025)"


def temperature_weights(sizes, temperature: float) -> torch.Tensor:
    """``[D]`` float64 temperature-sampling distribution ``p_d(T) = n_d^(1/T) / sum_j n_j^(1/T)`` (computed as a
    softmax of ``log(n_d) / T``, so huge sizes or small T cannot overflow). ``sizes``: rows per domain, whole
    numbers >= 1 (a size 0 is a ``ValueError`` naming the domain); ``temperature`` > 0."""
    n = check_sizes(sizes)
    t = check_real("temperature", temperature, 0.0, low_open=True)
    return torch.softmax(torch.log(n) / t, dim=0)


def cooldown_temperature(step: int, *, temperature: float, final_temperature: Optional[float] = None,
                         cooldown_start: float = 0.5, total_steps: Optional[int] = None,
                         shape: str = "linear") -> float:
    """The temperature at optimizer step ``step`` (completed steps) under the cooldown schedule.

    ``final_temperature is None``: constant ``temperature``. Otherwise, with ``s0 = cooldown_start * total_steps``:
    ``T = temperature`` for ``step < s0``; then ``shape="step"``: ``T = final_temperature``; ``shape="linear"``:
    ``T = temperature + (final_temperature - temperature) * min(1, (step - s0) / (total_steps - s0))`` (linear in T,
    reaching ``final_temperature`` at ``total_steps`` and staying there)."""
    t_high = check_real("temperature", temperature, 0.0, low_open=True)
    if final_temperature is None:
        return t_high
    t_low = check_real("final_temperature", final_temperature, 0.0, low_open=True)
    f = check_real("cooldown_start", cooldown_start, 0.0, 1.0)
    check_choice("shape", shape, ("step", "linear"))
    if total_steps is None or int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer for a cooldown, got {total_steps!r}")
    step = int(step)
    s0 = f * total_steps
    if step < s0:
        return t_high
    if shape == "step" or total_steps <= s0:
        return t_low
    frac = min(1.0, (step - s0) / (total_steps - s0))
    return t_high + (t_low - t_high) * frac


class TemperatureScheduleConfig(StrategyConfig):
    """The temperature and the optional cooldown (shared by ``temperature`` and ``upweight``)."""

    temperature: float = Field(5.0, gt=0, allow_inf_nan=False, description=(
        "Sampling temperature T of p_d ∝ n_d^(1/T) (T = 1 proportional to size, larger T flattens toward uniform; "
        f"{_PAPER}, temperature sampling). With a cooldown, the starting (high) temperature. Default 5: "
        "methods.md H2.2's [inferred] T_high (the paper's values are [NOT FOUND])"))
    final_temperature: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description=(
        "Cooldown: the temperature training ends at (<= temperature; 1 = proportional), reached from "
        "cooldown_start on ('starts by heavily upsampling low-resource languages ... and gradually reduces the "
        f"upsampling', {_PAPER}, abstract). Null: constant temperature. methods.md H2.2 [inferred] T_low = 1"))
    cooldown_start: float = Field(0.5, ge=0, lt=1, allow_inf_nan=False, description=(
        "Cooldown: fraction f of total_steps spent at the starting temperature before it decays "
        f"(methods.md H2.2 [inferred]; the paper's switch point is [NOT FOUND], {_PAPER}). Default 0.5 (a choice)"))
    cooldown_shape: Literal["step", "linear"] = Field("linear", description=(
        "Cooldown: 'step' switches to final_temperature at f * total_steps; 'linear' decays T linearly from "
        "f * total_steps to total_steps (methods.md H2.2 [inferred] 'step or linear'; "
        f"{_PAPER})"))
    total_steps: Optional[int] = Field(None, ge=1, strict=True, description=(
        "Cooldown: the step count the schedule spans. Default: the run's max_steps (required when a cooldown "
        f"is set and the run's length is unknown; {_PAPER}, cooldown)"))

    @model_validator(mode="after")
    def _cooldown_lowers(self):
        if self.final_temperature is not None and self.final_temperature > self.temperature:
            raise ValueError(f"final_temperature must be <= temperature ({self.temperature}): a cooldown lowers the "
                             f"temperature")
        return self


class TemperatureSchedule(Strategy):
    """Base of the temperature-family strategies: the schedule's ``total_steps`` and :meth:`temperature_at`."""

    Config = TemperatureScheduleConfig

    def __init__(self, config: Optional[TemperatureScheduleConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        self.total_steps = c.total_steps if c.total_steps is not None else self.env.max_steps
        if c.final_temperature is not None and self.total_steps is None:
            raise ValueError("total_steps is required for a cooldown (final_temperature) when the run's max_steps "
                             "is unknown")

    @classmethod
    def warnings(cls, config: TemperatureScheduleConfig, env: StrategyEnv) -> List[str]:
        out = []
        total = config.total_steps if config.total_steps is not None else env.max_steps
        if config.final_temperature is not None and total is not None and env.max_steps is not None \
                and config.cooldown_start * total >= env.max_steps:
            out.append(f"the cooldown starts at step {config.cooldown_start * total:g} >= max_steps={env.max_steps}: "
                       f"the temperature stays {config.temperature} for the whole run")
        if config.temperature == 1.0 and config.final_temperature in (None, 1.0):
            out.append("temperature 1 throughout is plain proportional (natural) sampling"
                       + (" with all loss factors 1" if cls.name == "upweight" else ""))
        return out

    def temperature_at(self, step: int) -> float:
        c = self.config
        return cooldown_temperature(step, temperature=c.temperature, final_temperature=c.final_temperature,
                                    cooldown_start=c.cooldown_start, total_steps=self.total_steps,
                                    shape=c.cooldown_shape)


@register_strategy("domain", "temperature")
class TemperatureSampling(TemperatureSchedule):
    """Temperature sampling over domains, p_d ∝ n_d^(1/T), with the optional cooldown of T (arXiv 2410.04579).

    Hook ``domain_weights``: ``T = cooldown_temperature(ctx.step, ...)`` then :func:`temperature_weights` of
    ``ctx.sizes_D``; logs ``domain_weighting/temperature/T``. Stateless (the temperature depends on ``ctx.step``
    only, so a resumed run continues the schedule)."""

    cite = f"{_PAPER}: temperature sampling p_d ∝ n_d^(1/T) and the cooldown (abstract; values [NOT FOUND])"

    def domain_weights(self, ctx: DomainContext) -> List[float]:
        _, sizes = context_arrays(ctx, need_sizes=True)
        t = self.temperature_at(ctx.step)
        ctx.log("domain_weighting/temperature/T", t)
        return to_list(temperature_weights(sizes, t))
