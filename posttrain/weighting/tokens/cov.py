"""Clip-Cov and KL-Cov of "The Entropy Mechanism of RL for Reasoning LMs" (Cui et al., arXiv 2505.22617).

Official code: ``PRIME-RL/Entropy-Mechanism-of-RL`` @ 8850579, ``verl/trainer/ppo/core_algos.py``:
``compute_policy_loss_clip_cov`` (l.469) and ``compute_policy_loss_kl_cov`` (l.426).
Both use the per-token covariance statistic over the valid tokens of the tensors passed in
(micro-batch in the official code; the trainer decides the scope)::

    Cov_t = (A_t - mean_valid(A)) * (log pi_theta(o_t) - mean_valid(log pi_theta))

computed from the **current** log-probs, detached (only an index selection depends on it).

One paper, two methods, one file: pure functions (:func:`clip_cov_mask`, :func:`kl_cov_mask`,
:func:`kl_cov_penalty`, :func:`kl_cov_loss`), configs :class:`ClipCovConfig` / :class:`KlCovConfig` and the token
strategies ``clip_cov`` (a weight; protocol class :class:`ClipCov`) and ``kl_cov`` (a loss term without ratio
clipping; :class:`KlCov`).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import torch
from pydantic import Field, FiniteFloat, field_validator, model_validator

from ._common import broadcast_advantages, check_finite, check_real, check_same_shape, clean, valid_of, work_dtype
from .registry import TokenBatch, TokenStrategyConfig, token_strategy

_PAPER = "The Entropy Mechanism of RL for Reasoning LMs, arXiv 2505.22617"
_CLIP_CODE = "code PRIME-RL/Entropy-Mechanism-of-RL verl/trainer/ppo/core_algos.py::compute_policy_loss_clip_cov"
_KL_CODE = "code PRIME-RL/Entropy-Mechanism-of-RL verl/trainer/ppo/core_algos.py::compute_policy_loss_kl_cov"
#: default of clip_cov's clip range: the policy loss's (``batch.clip_low`` / ``batch.clip_high``), else 0.2
_FROM_BATCH = "from_batch"


def _centred_cov(adv: torch.Tensor, logps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, T] Cov_t (0 on padding); means over valid tokens. Caller guarantees at least one valid token."""
    dt = work_dtype(adv, logps)
    a, lp = clean(adv, valid, dt), clean(logps, valid, dt)
    n = valid.sum()
    a_c = a - a.sum() / n
    lp_c = lp - lp.sum() / n
    return torch.where(valid, a_c * lp_c, torch.zeros((), dtype=dt, device=a.device))


def clip_cov_mask(
    advantages: torch.Tensor,
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio: float = 2e-4,
    cov_lb: float = 1.0,
    cov_ub: float = 5.0,
    clip_low: float | None = 0.2,
    clip_high: float | None = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip-Cov: {0,1} weights that detach a few random tokens with a large covariance (0 = no gradient).

    Paper: arXiv 2505.22617, Clip-Cov; code ``compute_policy_loss_clip_cov`` (see module docstring):

    1. ``r = exp(logps - old_logps)``; ``L1 = -A r``, ``L2 = -A clip(r, 1 - clip_low, 1 + clip_high)``;
       tokens already clipped by PPO (``L2 > L1``) and padding get ``Cov = -inf``.
    2. Candidates: valid tokens with ``cov_lb < Cov < cov_ub`` (strict).
    3. ``n_clip = max(int(clip_ratio * N_valid), 1)`` (so at least one token, even for ``clip_ratio=0``).
    4. ``min(n_clip, #candidates)`` candidates chosen uniformly at random:
       ``torch.randperm(#candidates, generator=generator)`` over the candidates in row-major order, first
       ``n_clip`` kept. ``generator=None`` uses torch's global CPU RNG like the official code; pass a seeded
       ``torch.Generator`` (the same seed on every rank for ``scope: global``) for reproducible masks.
    5. Weight 0 for the chosen tokens, 1 for the other valid tokens, 0 on padding.

    The loss is then ``token_mean(max(L1, L2) * w)`` (``policy_loss(..., token_weights=w)``): chosen tokens
    get no gradient but stay in the denominator. Pass the **same** ``clip_low``/``clip_high`` as the policy
    loss (defaults 0.2/0.2 here; the official 7B/32B scripts use 1/1, i.e. ratio clamp [0, 2]).
    ``clip_low=None`` / ``clip_high=None`` mean no clamp on that side (no token counts as already clipped).

    Args:
        advantages: [B] or [B, T]. logps: current log-probs [B, T]. old_logps: pi_old log-probs [B, T].
        mask: [B, T], nonzero = valid. clip_ratio in [0, 1] (default 2e-4). cov_lb / cov_ub: the band
        (defaults 1.0 / 5.0, ``clip_cov_lb`` / ``clip_cov_ub``).

    Returns:
        float32 [B, T] detached weights in {0, 1}; all zeros for an empty mask. Non-finite inputs at valid
        positions raise ``ValueError``; a ratio that overflows from finite inputs behaves as in the official
        code (comparisons with inf/NaN are False).
    """
    clip_ratio = check_real("clip_ratio", clip_ratio, 0.0, 1.0)
    cov_lb, cov_ub = check_real("cov_lb", cov_lb), check_real("cov_ub", cov_ub)
    clip_low = None if clip_low is None else check_real("clip_low", clip_low, 0.0)
    clip_high = None if clip_high is None else check_real("clip_high", clip_high, 0.0)
    valid = valid_of(mask)
    check_same_shape(logps=logps, old_logps=old_logps, mask=mask)
    adv = broadcast_advantages(advantages, mask)
    for name, x in (("advantages", adv), ("logps", logps), ("old_logps", old_logps)):
        check_finite(name, x.detach(), valid)
    with torch.no_grad():
        out = valid.float()
        n_valid = int(valid.sum().item())
        if n_valid == 0:
            return out
        dt = work_dtype(adv, logps, old_logps)
        a, lp, olp = clean(adv, valid, dt), clean(logps, valid, dt), clean(old_logps, valid, dt)
        ratio = torch.exp(lp - olp)
        pg1 = -a * ratio
        lo = None if clip_low is None else 1 - clip_low
        hi = None if clip_high is None else 1 + clip_high
        pg2 = -a * (ratio.clamp(min=lo, max=hi) if (lo is not None or hi is not None) else ratio)
        clipped = (pg2 > pg1) & valid
        cov = _centred_cov(adv, logps, valid)
        cand = (cov > cov_lb) & (cov < cov_ub) & valid & ~clipped
        idx = torch.nonzero(cand)
        if len(idx) > 0:
            n_clip = max(int(clip_ratio * n_valid), 1)
            gen_device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(len(idx), generator=generator, device=gen_device).to(idx.device)
            idx = idx[perm[: min(n_clip, len(idx))]]
            out[idx[:, 0], idx[:, 1]] = 0.0
    return out


def kl_cov_mask(
    advantages: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor, *, k_percent: float = 0.2
) -> torch.Tensor:
    """KL-Cov selection: {0,1} indicator of the top-k valid tokens by Cov (1 = gets the KL penalty).

    Paper: arXiv 2505.22617, KL-Cov; code ``compute_policy_loss_kl_cov`` (see module docstring):
    ``k = min(k_percent, N_valid)``; if ``k == 0`` nothing is selected; otherwise
    ``k_num = max(1, int(N_valid * k / 100))`` and the ``k_num`` largest Cov (``torch.topk``) are selected.

    ``k_percent`` is a **percentage**, as in the official config: the default 0.2 (7B; 32B uses 0.02) selects
    0.2 % of the valid tokens. The official ``min(k_percent, N_valid)`` quirk is reproduced: it only matters
    when ``k_percent > N_valid`` (e.g. ``k_percent=50`` with 4 tokens gives ``k = 4``, ``k_num = 1``).
    Ties in Cov are broken by ``torch.topk``. Scope: the tensors passed in (micro-batch officially).

    Returns:
        float32 [B, T] detached {0, 1} tensor, 0 on padding; all zeros for an empty mask.
    """
    k_percent = check_real("k_percent", k_percent, 0.0, 100.0)
    valid = valid_of(mask)
    check_same_shape(logps=logps, mask=mask)
    adv = broadcast_advantages(advantages, mask)
    check_finite("advantages", adv.detach(), valid)
    check_finite("logps", logps.detach(), valid)
    with torch.no_grad():
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        n_valid = int(valid.sum().item())
        k = min(k_percent, n_valid)
        if k == 0:
            return out
        cov = _centred_cov(adv, logps, valid)[valid]
        k_num = max(1, int(n_valid * k / 100))
        top = torch.topk(cov, k_num, largest=True).indices
        flat_valid = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
        out.view(-1)[flat_valid[top]] = 1.0
    return out


def kl_cov_penalty(
    logps: torch.Tensor, old_logps: torch.Tensor, selected: torch.Tensor, *, kl_coef: float = 1.0
) -> torch.Tensor:
    """KL-Cov per-token extra loss ``kl_coef * |logps - old_logps| * selected`` (a loss term, **not** a weight).

    Paper: arXiv 2505.22617, KL-Cov: for the selected tokens the official loss is ``-A r + beta |log r|``
    (``pg_losses_kl``, ``ppo_kl_coef`` beta default 1), every other token ``-A r``, **no ratio clipping**, then
    token-mean. The gradient flows through ``logps`` (``old_logps`` and ``selected`` are detached), so use::

        sel = kl_cov_mask(adv, logps, mask, k_percent=0.2)
        policy_loss(logps, old_logps, adv, mask, clip_low=None, clip_high=None,
                    extra_token_loss=kl_cov_penalty(logps, old_logps, sel, kl_coef=1.0))

    Returns [B, T] in the dtype of ``logps``, >= 0, exactly 0 where ``selected == 0``. Non-finite log-probs at
    selected positions raise ``ValueError``.
    """
    kl_coef = check_real("kl_coef", kl_coef, 0.0)
    check_same_shape(logps=logps, old_logps=old_logps, selected=selected)
    sel = selected.detach()
    on = sel != 0
    check_finite("logps", logps.detach(), on)
    check_finite("old_logps", old_logps.detach(), on)
    pen = kl_coef * (logps - old_logps.detach().to(logps.dtype)).abs() * sel.to(logps.dtype)
    return torch.where(on, pen, torch.zeros((), dtype=pen.dtype, device=pen.device))


def kl_cov_loss(
    advantages: torch.Tensor,
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    k_percent: float = 0.2,
    kl_coef: float = 1.0,
) -> torch.Tensor:
    """KL-Cov extra per-token loss in one call: ``kl_cov_penalty(logps, old_logps, kl_cov_mask(...))``.

    arXiv 2505.22617, ``compute_policy_loss_kl_cov``. Defaults ``k_percent=0.2`` (a percentage) and
    ``kl_coef=1`` (``ppo_kl_coef``). Returns [B, T] with gradient through ``logps``; combine with
    ``policy_loss(..., clip_low=None, clip_high=None, extra_token_loss=...)`` (KL-Cov has no clipping).
    """
    sel = kl_cov_mask(advantages, logps, mask, k_percent=k_percent)
    return kl_cov_penalty(logps, old_logps, sel, kl_coef=kl_coef)


# ----------------------------------------------------------------------------------------- Clip-Cov strategy
_ClipBound = Optional[Union[Annotated[FiniteFloat, Field(ge=0.0)], Literal["from_batch"]]]


class ClipCovConfig(TokenStrategyConfig):
    """Arguments of the ``clip_cov`` token strategy (:func:`clip_cov_mask`)."""

    clip_ratio: FiniteFloat = Field(2e-4, ge=0.0, le=1.0, description=(
        f"r: fraction of the valid tokens detached, at least one ({_PAPER}, Clip-Cov; {_CLIP_CODE}, "
        "clip_cov_ratio default 2e-4)."))
    cov_lb: FiniteFloat = Field(1.0, description=(
        f"Lower bound (strict) of the covariance band of candidate tokens ({_PAPER}, Clip-Cov; "
        f"{_CLIP_CODE}, clip_cov_lb default 1.0)."))
    cov_ub: FiniteFloat = Field(5.0, description=(
        f"Upper bound (strict) of the covariance band of candidate tokens ({_PAPER}, Clip-Cov; "
        f"{_CLIP_CODE}, clip_cov_ub default 5.0). Must exceed cov_lb."))
    clip_low: _ClipBound = Field(_FROM_BATCH, description=(
        "Lower PPO clip epsilon that decides which tokens are already clipped (not candidates): 'from_batch' "
        "(default) = the policy loss's own, else 0.2; null = no clamp on that side "
        f"({_PAPER}, Clip-Cov; {_CLIP_CODE})."))
    clip_high: _ClipBound = Field(_FROM_BATCH, description=(
        "Upper PPO clip epsilon that decides which tokens are already clipped: 'from_batch' (default) = the "
        f"policy loss's own, else 0.2; null = no clamp on that side ({_PAPER}, Clip-Cov; {_CLIP_CODE}; "
        "the official 7B/32B scripts use 1 on both sides)."))

    @field_validator("clip_low", "clip_high", mode="before")
    @classmethod
    def _bound(cls, value):
        if value is None or value == _FROM_BATCH:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not (number >= 0.0 and number != float("inf")):
            raise ValueError(f"must be a finite number >= 0, null (no clamp) or '{_FROM_BATCH}'")
        return value

    @model_validator(mode="after")
    def _band(self) -> "ClipCovConfig":
        if self.cov_lb >= self.cov_ub:
            raise ValueError(f"cov_lb ({self.cov_lb}) must be < cov_ub ({self.cov_ub}): the band would hold no token")
        return self


@token_strategy("clip_cov", needs={"logps", "old_logps"}, config=ClipCovConfig,
                cite=f"Clip-Cov, {_PAPER}; {_CLIP_CODE}")
def clip_cov(batch: TokenBatch, *, clip_ratio: float = 2e-4, cov_lb: float = 1.0, cov_ub: float = 5.0,
             clip_low=_FROM_BATCH, clip_high=_FROM_BATCH):
    """Clip-Cov (arXiv 2505.22617). The clip range defaults to the policy loss's (``batch.clip_low/high``),
    falling back to 0.2; an explicit ``null`` means no clamp on that side."""
    if clip_low == _FROM_BATCH:
        clip_low = batch.clip_low if batch.clip_low is not None else 0.2
    if clip_high == _FROM_BATCH:
        clip_high = batch.clip_high if batch.clip_high is not None else 0.2
    return clip_cov_mask(batch.advantages, batch.logps, batch.old_logps, batch.mask, clip_ratio=clip_ratio,
                         cov_lb=cov_lb, cov_ub=cov_ub, clip_low=clip_low, clip_high=clip_high,
                         generator=batch.generator)


#: The protocol ``Strategy`` class of kind "token" registered as ``clip_cov`` (hook ``token_weights``).
ClipCov = clip_cov.strategy_class


# ------------------------------------------------------------------------------------------- KL-Cov strategy
class KlCovConfig(TokenStrategyConfig):
    """Arguments of the ``kl_cov`` token strategy (:func:`kl_cov_mask` + :func:`kl_cov_penalty`)."""

    k_percent: FiniteFloat = Field(0.2, ge=0.0, le=100.0, description=(
        f"k: percentage (not fraction) of the valid tokens, largest Cov first, that get the KL penalty ({_PAPER}, "
        f"KL-Cov; {_KL_CODE}; 0.2 in the 7B scripts, 0.02 in the 32B ones)."))
    kl_coef: FiniteFloat = Field(1.0, ge=0.0, description=(
        f"beta: coefficient of the penalty beta |log r| on the selected tokens ({_PAPER}, KL-Cov; {_KL_CODE}, "
        "ppo_kl_coef default 1)."))


def _kl_cov_warnings(config: KlCovConfig, env) -> list:
    if config.k_percent == 0.0 or config.kl_coef == 0.0:
        key = "k_percent" if config.k_percent == 0.0 else "kl_coef"
        return [f"{key} 0 adds no penalty, yet kl_cov still turns ratio clipping off"]
    return []


@token_strategy("kl_cov", needs={"logps", "old_logps"}, kind="loss_term", disables_clipping=True,
                config=KlCovConfig, cite=f"KL-Cov, {_PAPER}; {_KL_CODE}", warnings=_kl_cov_warnings)
def kl_cov(batch: TokenBatch, *, k_percent: float = 0.2, kl_coef: float = 1.0):
    """KL-Cov (arXiv 2505.22617): extra per-token loss ``kl_coef |log r|`` on the top-k Cov tokens."""
    sel = kl_cov_mask(batch.advantages, batch.logps, batch.mask, k_percent=k_percent)
    pen = kl_cov_penalty(batch.logps, batch.old_logps, sel, kl_coef=kl_coef)
    valid = batch.mask.bool()
    n = max(int(valid.sum()), 1)
    with torch.no_grad():
        diag = {"selected_frac": float(sel[valid].sum()) / n, "penalty_mean": float(pen.detach()[valid].sum()) / n}
    return pen, diag


#: The protocol ``Strategy`` class of kind "token" registered as ``kl_cov`` (hook ``token_loss``).
KlCov = kl_cov.strategy_class
