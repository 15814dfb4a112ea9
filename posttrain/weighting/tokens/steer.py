"""STEER token weights: "STEER: Stabilizing Token-level Entropy-changE via Reweighting", arXiv 2510.10150.

Official code: ``zz-haooo/STEER`` @ b31df71, ``verl/trainer/ppo/core_algos.py::compute_token_weights`` (around
l.579); defaults from ``run_linear.sh`` / ``run_exp.sh``. Pure function :func:`steer_weights`, its config
:class:`SteerConfig` and the token strategy ``steer`` (a weight; protocol class :class:`Steer`).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, FiniteFloat, model_validator

from ._common import broadcast_advantages, check_finite, check_real, check_same_shape, clean, valid_of, work_dtype
from .registry import TokenBatch, TokenStrategyConfig, token_strategy

_MODES = ("linear", "exponential")
_CODE = "code zz-haooo/STEER verl/trainer/ppo/core_algos.py::compute_token_weights"


def steer_weights(
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    old_logps: torch.Tensor,
    logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    w_min: float = 0.8,
    w_max: float = 1.2,
    mode: str = "linear",
) -> torch.Tensor:
    """STEER per-token weights: down-weight tokens whose update would change the entropy most.

    Paper: "STEER: Stabilizing Token-level Entropy-changE via Reweighting", arXiv 2510.10150.
    Implements the official code ``zz-haooo/STEER`` @ b31df71, ``verl/trainer/ppo/core_algos.py::
    compute_token_weights`` (around l.579):

    1. ``p = clamp(exp(logps), 1e-8, 1 - 1e-8)`` (current policy; value only, no gradient).
    2. ``p_old = clamp(exp(old_logps), 1e-8, 1)``.
    3. ``Omega = (A / p_old) * p * (1 - p) * (log p + H)``; non-finite entries of Omega -> 0; ``metric = |Omega|``.
    4. ``m_min, m_max`` = min / max of ``metric`` over the valid tokens of the tensors passed in.
    5. ``mode="linear"``: ``w = w_max - (metric - m_min) / (m_max - m_min) * (w_max - w_min)``, clamped to
       ``[w_min, w_max]``; if ``m_max == m_min`` every valid weight is ``(w_min + w_max) / 2``.
       ``mode="exponential"``: ``k = -ln(w_min) / max(m_max, 0.02)``, ``w = exp(-k * metric)`` clamped to
       ``[w_min, 1]`` (``w_max`` is ignored, as in the official code).
    6. ``w = w * mask``.

    Args:
        advantages: [B] (one per sequence, broadcast over T) or [B, T].
        entropies: [B, T] full-vocabulary entropies of **pi_old** (the old-log-prob pass), as the official
            code (``batch["entropys"]``); not recomputed from the current policy.
        old_logps: [B, T] log-probs of the sampled tokens under pi_old.
        logps: [B, T] log-probs under the current policy (only the value is used).
        mask: [B, T], nonzero = valid completion token.
        w_min, w_max: weight range. Defaults 0.8 / 1.2 (function defaults and ``run_linear.sh``;
            ``run_exp.sh`` uses exponential with 0.8 / 1.0). Linear: ``0 <= w_min <= w_max``;
            exponential: ``0 < w_min <= 1``.
        mode: ``"linear"`` (official ``linear=True``, default) or ``"exponential"``.

    Returns:
        float32 [B, T] detached weights (computed in float32, or float64 if an input is float64), in
        ``[w_min, w_max]`` (linear) or ``[w_min, 1]`` (exponential) on valid tokens and 0 on padding.
        All zeros if the mask is empty.

    Edge cases: tokens with ``A = 0`` have Omega = 0 and get the maximum weight. NaN/inf **inputs** at valid
    positions raise ``ValueError`` (house rule), whereas an Omega that overflows from finite inputs (e.g.
    ``A / 1e-8``) is set to 0 exactly as the official code does (without its print). The min/max are per call:
    the trainer decides the scope (micro-batch in the official code). The linear map divides
    ``(metric - m_min)`` by the range before multiplying, which keeps it finite even for a subnormal range
    (the official ``scale_factor`` form can give ``0 * inf``); otherwise it is the same arithmetic. Inputs in
    bf16/fp16 are upcast to float32 (the official code computes in the input dtype).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "linear":
        w_min = check_real("w_min", w_min, 0.0)
        w_max = check_real("w_max", w_max, w_min)
    else:
        w_min = check_real("w_min", w_min, 0.0, 1.0, low_open=True)
        w_max = check_real("w_max", w_max)
    valid = valid_of(mask)
    check_same_shape(entropies=entropies, old_logps=old_logps, logps=logps, mask=mask)
    adv = broadcast_advantages(advantages, mask)
    for name, x in (("advantages", adv), ("entropies", entropies), ("old_logps", old_logps), ("logps", logps)):
        check_finite(name, x.detach(), valid)
    dt = work_dtype(adv, entropies, old_logps, logps)

    with torch.no_grad():
        out = torch.zeros(mask.shape, dtype=dt, device=mask.device)
        if not valid.any():
            return out.float()
        a, h = clean(adv, valid, dt), clean(entropies, valid, dt)
        lp, olp = clean(logps, valid, dt), clean(old_logps, valid, dt)
        p = torch.exp(lp).clamp(min=1e-8, max=1.0 - 1e-8)
        p_old = torch.exp(olp).clamp(min=1e-8, max=1.0)
        omega = (a / p_old) * (p * (1 - p) * (torch.log(p) + h))
        omega = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))
        metric = omega.abs()[valid]
        m_min, m_max = metric.min(), metric.max()
        if mode == "linear":
            if m_max > m_min:
                w = w_max - (metric - m_min) / (m_max - m_min) * (w_max - w_min)
            else:
                w = torch.full_like(metric, (w_min + w_max) / 2)
            w = w.clamp(min=w_min, max=w_max)
        else:
            k = -math.log(w_min) / torch.clamp(m_max, min=0.02)
            w = torch.exp(-k * metric).clamp(min=w_min, max=1.0)
        out[valid] = w
    return out.float()


class SteerConfig(TokenStrategyConfig):
    """Arguments of the ``steer`` token strategy (:func:`steer_weights`)."""

    w_min: FiniteFloat = Field(0.8, ge=0.0, description=(
        "Smallest token weight, given to the token whose update changes the entropy most (STEER, arXiv "
        f"2510.10150; {_CODE}, run_linear.sh: 0.8). Linear: 0 <= w_min <= w_max; exponential: 0 < w_min <= 1."))
    w_max: FiniteFloat = Field(1.2, description=(
        "Largest token weight in linear mode, given to the token whose update changes the entropy least (STEER, "
        f"arXiv 2510.10150; {_CODE}, run_linear.sh: 1.2); ignored in exponential mode, whose weights lie in "
        "[w_min, 1], as in the official code."))
    mode: Literal["linear", "exponential"] = Field("linear", description=(
        "Map from |Omega| (the estimated entropy change) to the weight: 'linear' (official linear=True, min-max "
        "over the batch) or 'exponential' (exp(-k |Omega|), k = -ln(w_min) / max(max |Omega|, 0.02)) (STEER, "
        f"arXiv 2510.10150; {_CODE})."))

    @model_validator(mode="after")
    def _range(self) -> "SteerConfig":
        if self.mode == "linear" and self.w_max < self.w_min:
            raise ValueError(f"w_max must be >= w_min ({self.w_min}) in mode 'linear', got {self.w_max}")
        if self.mode == "exponential" and not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"w_min must be in (0, 1] in mode 'exponential', got {self.w_min}")
        return self


def _steer_warnings(config: SteerConfig, env) -> list:
    if config.mode == "exponential" and config.w_min == 1.0:
        return ["w_min 1 in mode 'exponential' gives every token weight 1: the strategy does nothing"]
    if config.mode == "linear" and config.w_min == config.w_max == 1.0:
        return ["w_min = w_max = 1 gives every token weight 1: the strategy does nothing"]
    return []


@token_strategy("steer", needs={"logps", "old_logps", "old_entropies"}, config=SteerConfig,
                cite=f"STEER, arXiv 2510.10150; {_CODE}", warnings=_steer_warnings)
def steer(batch: TokenBatch, *, w_min: float = 0.8, w_max: float = 1.2, mode: str = "linear"):
    """STEER (arXiv 2510.10150) token weights with pi_old entropies, as the official code."""
    return steer_weights(batch.advantages, batch.old_entropies, batch.old_logps, batch.logps, batch.mask,
                         w_min=w_min, w_max=w_max, mode=mode)


#: The protocol ``Strategy`` class of kind "token" registered as ``steer`` (hook ``token_weights``).
Steer = steer.strategy_class
