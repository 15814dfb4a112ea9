"""Clipped policy-gradient loss of the GRPO family, with per-token weights and an explicit aggregation (torch only).

Per token (Shao et al. 2024, DeepSeekMath, Eq. 3, the PPO surrogate of Schulman et al. 2017 with group advantages)::

    r_t    = exp(logp_t - old_logp_t)
    l_t    = -w_t * min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t)  + extra_t  + beta * KL_t

then the masked per-token losses are aggregated (see :data:`AGGREGATIONS`). This is exactly TRL 1.16's
``GRPOTrainer._compute_loss`` when ``w = 1`` (tests/test_losses_trl_parity.py drives TRL's own code):

====================  ================================================  =====================================
``aggregation``       formula                                           TRL ``loss_type`` / paper
====================  ================================================  =====================================
token_mean            sum_{i,t} l m / sum_{i,t} m                       ``bnpo``; ``dapo`` with one process
                                                                        (DAPO, Yu et al. 2025, Eq. 8)
seq_mean_token_mean   mean_i ( sum_t l m / sum_t m )                    ``grpo`` (DeepSeekMath Eq. 3)
seq_mean_token_sum    mean_i ( sum_t l m )                              verl's ``seq-mean-token-sum``
dr_grpo               sum_{i,t} l m / (B * max_len)                     ``dr_grpo`` (Liu et al. 2025,
                                                                        arXiv 2503.20783, "Understanding
                                                                        R1-Zero-Like Training")
====================  ================================================  =====================================

Decoupled clip ranges (``clip_low`` != ``clip_high``) are DAPO's "clip-higher" (Yu et al. 2025, Sec. 3.1).
"""
from __future__ import annotations

import math

import torch

from .kl import KL_ESTIMATORS, kl_divergence

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "dr_grpo")
IMPORTANCE_LEVELS = ("token", "sequence")
NORMALIZATIONS = ("count", "weights")


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    clip_low: float | None = 0.2,
    clip_high: float | None = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    max_len: int | None = None,
    normalize: str = "count",
    importance_level: str = "token",
    extra_token_loss: torch.Tensor | None = None,
    delta: float | None = None,
    kl_bias_correction: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss (GRPO / DAPO / Dr. GRPO / GSPO) with token weights and a KL penalty.

    Args:
        logps: ``[B, T]`` log pi_theta(y_t) of the sampled tokens (carries the gradient).
        old_logps: ``[B, T]`` log-probs under the policy that sampled the batch. ``None`` means on-policy
            (``logps.detach()``, ratio 1), as TRL does when ``num_iterations == 1``.
        advantages: ``[B]`` (one per sequence, broadcast over tokens) or ``[B, T]``.
        mask: ``[B, T]`` 1/True for completion tokens that count; anything else is ignored entirely.
        token_weights: optional ``[B, T]`` weights w_t (detached here) multiplying the clipped policy term of each
            token; the KL term and ``extra_token_loss`` are *not* multiplied, as TRL treats its entropy mask.
        ref_logps: ``[B, T]`` reference-policy log-probs; required when ``kl_coef != 0``. When given with
            ``kl_coef == 0`` the KL is only reported in the metrics.
        clip_low, clip_high: eps_low / eps_high of ``clip(r, 1 - eps_low, 1 + eps_high)``. ``None`` or ``inf``
            removes that side of the clip (both removed: the plain ``-A * r`` surrogate, as KL-Cov needs).
        kl_coef: beta of ``+ beta * KL_t`` (Shao et al. 2024, Eq. 3).
        kl_estimator: ``"k1" | "k2" | "k3"`` (see :func:`posttrain.losses.kl_divergence`); TRL uses k3.
        aggregation: one of :data:`AGGREGATIONS` (module docstring).
        max_len: ``dr_grpo``'s constant ``max_len`` (TRL: ``max_completion_length``). ``None`` uses ``T``, the
            padded length of this batch, which equals TRL's only if completions are padded to the maximum.
        normalize: ``"count"`` (default) divides by valid-token counts; ``"weights"`` divides by sum(w * m) instead
            (per sequence for ``seq_mean_token_mean``), so the weights act as a weighted average. Only meaningful
            for ``token_mean`` and ``seq_mean_token_mean``. A zero denominator is replaced by 1.
        importance_level: ``"token"`` (PPO/GRPO ratio per token) or ``"sequence"`` (GSPO, Zheng et al. 2025,
            arXiv 2507.18071, objective Eq. 5 with s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t log r_t)
            over the sequence's valid tokens). Implemented as the paper's GSPO-token variant,
            s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]: equal to s_i in value, equal to GSPO in gradient when
            advantages are per sequence, and defined for ``[B, T]`` advantages too. This reproduces TRL's
            ``importance_sampling_level="sequence"`` in value and gradient (tested).
        extra_token_loss: optional ``[B, T]`` term added to each token's loss before aggregation (after the
            weights), e.g. KL-Cov's ``k * |log r|`` penalty (Cui et al. 2025). Masked like everything else.
        delta: optional upper cap ``r <= delta`` on the unclipped branch (two-sided clipping of TRL's ``delta``,
            from INTELLECT-2); ``None`` disables it.
        kl_bias_correction: multiply the per-token KL by the (differentiable) importance ratio pi / pi_old, the
            unbiased reverse-KL gradient of DeepSeek-V3.2 (arXiv 2512.02556). **TRL 1.16 defaults to this**
            (``GRPOConfig.use_bias_correction_kl=True``); the default here (False) is DeepSeekMath's plain
            ``beta * k3``. Pass True to reproduce TRL's default loss when ``kl_coef > 0``. With
            ``importance_level="sequence"`` the factor is TRL's sequence ratio exp(mean_t log r_t).

    Returns:
        ``(loss, metrics)``: a 0-d loss connected to ``logps`` (0 with an empty mask, backward still works), and a
        dict of 0-d detached float tensors: ``clip_frac_low`` / ``clip_frac_high`` / ``clip_frac`` (valid tokens
        whose ratio is clipped, TRL's definition: ``r < 1 - eps_low`` with ``A < 0`` / ``r > 1 + eps_high`` with
        ``A > 0`` / either), ``ratio_mean``, ``kl`` (only when ``ref_logps`` is given), ``weighted_token_frac``
        (valid tokens with w != 0), ``token_weight_mean``, ``num_tokens``. Means are over valid tokens; all are 0
        for an empty mask.
    """
    adv, m, w = _check_inputs(
        logps, old_logps, advantages, mask, token_weights, ref_logps, extra_token_loss,
        clip_low, clip_high, kl_coef, kl_estimator, aggregation, max_len, normalize, importance_level, delta,
    )
    valid = m > 0
    # Zero every input at ignored positions first: a -inf log-prob in padding must not turn into NaN
    # (0 * inf) in the sums or in the gradient.
    logps = logps.masked_fill(~valid, 0.0)
    old = logps.detach() if old_logps is None else old_logps.detach().masked_fill(~valid, 0.0)

    log_ratio = _importance_log_ratio(logps, old, m, importance_level)
    ratio = torch.exp(log_ratio)
    lo = -math.inf if clip_low is None else 1.0 - clip_low
    hi = math.inf if clip_high is None else 1.0 + clip_high
    clipped = ratio.clamp(min=lo, max=hi)
    capped = ratio if delta is None else ratio.clamp(max=delta)  # TRL caps only the unclipped branch
    per_token = -torch.min(capped * adv, clipped * adv)
    if w is not None:
        per_token = per_token * w
    if extra_token_loss is not None:
        per_token = per_token + extra_token_loss.masked_fill(~valid, 0.0)
    kl = None
    if ref_logps is not None:
        kl = kl_divergence(logps, ref_logps.detach().masked_fill(~valid, 0.0), kl_estimator)
        if kl_coef != 0.0:
            kl_term = kl * _kl_correction(logps, old, m, log_ratio, importance_level) if kl_bias_correction else kl
            per_token = per_token + kl_coef * kl_term  # after the weights: the KL anchor applies to every token

    loss = _aggregate(per_token, m, w, aggregation, max_len, normalize)
    return loss, _metrics(ratio.detach(), adv, m, w, kl, lo, hi)


def _importance_log_ratio(logps, old, m, level):
    log_ratio = logps - old
    if level == "token":
        return log_ratio
    # GSPO: length-normalised sequence log-ratio, with GSPO-token's stop-gradient form so each token
    # receives its own gradient: value = seq ratio, d/dlogp_t = seq ratio.
    seq = (log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return seq.detach().unsqueeze(-1) + logps - logps.detach()


def _kl_correction(logps, old, m, log_ratio, level):
    if level == "token":
        return torch.exp(log_ratio)
    # TRL's sequence-level factor: the full-gradient sequence ratio (not GSPO-token's stop-gradient form)
    seq = ((logps - old) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return torch.exp(seq).unsqueeze(-1)


def _aggregate(per_token, m, w, aggregation, max_len, normalize):
    per_token = per_token * m  # m is 0/1 (or fractional, then it scales the token)
    if aggregation == "token_mean":
        denom = (m * w).sum() if normalize == "weights" else m.sum()
        return per_token.sum() / _nonzero(denom)
    if aggregation == "seq_mean_token_mean":
        denom = (m * w).sum(-1) if normalize == "weights" else m.sum(-1)
        return (per_token.sum(-1) / _nonzero(denom)).mean()
    if aggregation == "seq_mean_token_sum":
        return per_token.sum(-1).mean()
    # dr_grpo: a constant normaliser, so every token's gradient has the same scale whatever the lengths.
    return per_token.sum() / (per_token.size(0) * (per_token.size(1) if max_len is None else max_len))


def _nonzero(denom: torch.Tensor) -> torch.Tensor:
    # Empty mask (or all-zero weights): numerator is 0 there too, so any nonzero denominator keeps the loss finite.
    return torch.where(denom > 0, denom, torch.ones_like(denom))


@torch.no_grad()
def _metrics(ratio, adv, m, w, kl, lo, hi):
    valid = m > 0
    n = valid.sum()
    denom = n.clamp(min=1).to(ratio.dtype)

    def mean(x):
        return (x.to(ratio.dtype) * valid).sum() / denom

    low = (ratio < lo) & (adv < 0)
    high = (ratio > hi) & (adv > 0)
    ratio = ratio.expand_as(m)
    out = {
        "clip_frac_low": mean(low.expand_as(m)),
        "clip_frac_high": mean(high.expand_as(m)),
        "clip_frac": mean((low | high).expand_as(m)),
        "ratio_mean": mean(ratio),
    }
    if kl is not None:
        out["kl"] = mean(kl.detach())
    out["weighted_token_frac"] = mean(torch.ones_like(ratio) if w is None else (w != 0))
    out["token_weight_mean"] = mean(torch.ones_like(ratio) if w is None else w)
    out["num_tokens"] = n.to(ratio.dtype)
    return out


def _check_inputs(logps, old_logps, advantages, mask, token_weights, ref_logps, extra_token_loss,
                  clip_low, clip_high, kl_coef, kl_estimator, aggregation, max_len, normalize, importance_level,
                  delta):
    """Validate arguments (one-line ``ValueError``s); return (advantages [B,T|1], mask float, weights or None)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_level {importance_level!r}; expected 'token' or 'sequence'")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; expected 'count' or 'weights'")
    if normalize == "weights" and aggregation not in ("token_mean", "seq_mean_token_mean"):
        raise ValueError(
            f"normalize='weights' needs aggregation token_mean or seq_mean_token_mean, not {aggregation!r}")
    if logps.dim() != 2:
        raise ValueError(f"logps must be [B, T], got shape {tuple(logps.shape)}")
    shape = tuple(logps.shape)
    named = {"old_logps": old_logps, "mask": mask, "token_weights": token_weights, "ref_logps": ref_logps,
             "extra_token_loss": extra_token_loss}
    for name, t in named.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"shape mismatch: {name}={tuple(t.shape)} but logps={shape}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(f"advantages must be [B]={shape[:1]} or [B, T]={shape}, got {tuple(advantages.shape)}")
    for name, v in (("clip_low", clip_low), ("clip_high", clip_high)):
        if v is not None and not v >= 0:
            raise ValueError(f"{name} must be >= 0 (or None/inf to disable), got {v}")
    if not (math.isfinite(kl_coef) and kl_coef >= 0):
        raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef}")
    if kl_coef != 0.0 and ref_logps is None:
        raise ValueError("kl_coef != 0 needs ref_logps")
    if max_len is not None and not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if delta is not None and not delta > 0:
        raise ValueError(f"delta must be > 0 (or None), got {delta}")

    m = mask.to(logps.dtype)
    valid = m > 0
    adv = advantages.to(logps.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv.masked_fill(~valid, 0.0)
    w = None if token_weights is None else token_weights.detach().to(logps.dtype).masked_fill(~valid, 0.0)
    _check_finite(valid, logps=logps, old_logps=old_logps, advantages=advantages, token_weights=token_weights,
                  ref_logps=ref_logps, extra_token_loss=extra_token_loss)
    return adv, m, w


def _check_finite(valid, **tensors):
    """Non-finite values at valid positions are errors (a silent NaN loss is worse); one sync for all tensors."""
    checks = {}
    for name, t in tensors.items():
        if t is None:
            continue
        t = t.detach()
        checks[name] = torch.isfinite(t).all() if t.dim() == 1 else (torch.isfinite(t) | ~valid).all()
    if checks and not bool(torch.stack(list(checks.values())).all()):
        bad = [k for k, ok in checks.items() if not ok]
        raise ValueError(f"non-finite values at valid positions in: {', '.join(bad)}")


def policy_gradient_surrogate(
    logps_NT: torch.Tensor, advantages_N: torch.Tensor, mask_NT: torch.Tensor, num_tokens
) -> torch.Tensor:
    """``-sum_{i,t} A_i m_it logp_it / T``: the on-policy GRPO/DAPO surrogate whose gradient is the policy gradient.

    At the rollout policy (importance ratio 1, clipping inactive) the gradient of the clipped surrogate of
    :func:`policy_loss` with ``aggregation="token_mean"`` (DAPO, Yu et al. 2025, arXiv 2503.14476, Eq. 8; TRL's
    ``loss_type="dapo"``) equals the gradient of this expression when ``T`` is the batch's completion-token count.
    Dynamic Reward Weighting (Lu et al., arXiv 2509.11452, method (b); official code
    ``yining610/dynamic-reward-weighting``, ``verl/workers/fsdp_workers.py::compute_gradients``) differentiates it
    once per objective, with that objective's advantages, to build its Gram matrix.

    Args:
        logps_NT: ``[N, T]`` per-token log-probs of the completions (carrying gradient).
        advantages_N: ``[N]`` advantages (treated as constants; cast to ``logps_NT``'s device and dtype).
        mask_NT: ``[N, T]`` completion mask (1 for completion tokens).
        num_tokens: ``T``: the normaliser, e.g. the completion tokens of the whole batch over all processes
            (a number or a scalar tensor).

    Returns:
        A scalar tensor.
    """
    seq_logps_N = (logps_NT * mask_NT).sum(dim=1)
    return -(advantages_N.to(seq_logps_N.device, seq_logps_N.dtype) * seq_logps_N).sum() / num_tokens


def trl_scaled_loss(loss: torch.Tensor, loss_type: str, *, local_tokens: torch.Tensor,
                    num_items_in_batch: torch.Tensor | None, num_processes: int,
                    gradient_accumulation_steps: float, steps_per_generation: int, training: bool) -> torch.Tensor:
    """:func:`policy_loss`'s micro-batch loss scaled to the value TRL 1.16's ``GRPOTrainer._compute_loss`` returns (its
    gradient-accumulation and DAPO normalisers).

    Every loss type is divided by the accumulation steps in training. ``dapo`` instead divides the micro-batch's
    token *sum* by the global token count of the generation batch (DAPO, Yu et al. 2025, Eq. 8: the token-level mean
    over the whole batch): ``num_items_in_batch / num_processes`` (times ``accumulation / steps_per_generation`` in
    training); ``token_mean`` already divided by ``local_tokens``, which is multiplied back.
    """
    accum = gradient_accumulation_steps if training else 1.0
    if loss_type != "dapo":
        return loss / accum
    normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
    if training:
        normalizer = normalizer * accum / steps_per_generation
    return loss * local_tokens.clamp(min=1.0) / normalizer
