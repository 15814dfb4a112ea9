"""Clipped policy-gradient loss of the GRPO family, with per-token weights and an explicit aggregation (torch only).

Per token (Shao et al. 2024, DeepSeekMath, Eq. 3, the PPO surrogate of Schulman et al. 2017 with group advantages)::

    r_t    = exp(logp_t - old_logp_t)
    l_t    = -w_t * min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t)  + extra_t  + beta * KL_t

then the masked per-token losses are aggregated (see :data:`AGGREGATIONS`). This is exactly TRL 1.16's
``GRPOTrainer._compute_loss`` when ``w = 1`` (tests/test_losses_trl_parity.py drives TRL's own code):

======================  ==========================================================  ===================================
``surrogate``   per-token policy term                                       paper / TRL ``loss_type``
==============  ==========================================================  ===================================
ppo_clip        -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)             PPO / GRPO (grpo, bnpo, dr_grpo,
                                                                            dapo, luspo)
cispo           -sg(clip(r, 1 - eps_low, c_max)) A log pi(y_t)              CISPO, MiniMax-M1 (arXiv
                                                                            2506.13585); c_max: ScaleRL's
                                                                            eps_max (``cispo``)
sapo            -(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos if A > 0   SAPO (arXiv 2511.20347) (``sapo``)
                else tau_neg
vespo           -sg(phi(w_i)) A log pi(y_t), phi(w) = e^lam w^k e^(-lam w)  VESPO (arXiv 2602.10693)
                on the sequence ratio w_i = prod_t r_t (times the rollout   (``vespo``)
                IS ratios); (k, lam) by the sign of A
==============  ==========================================================  ===================================

Optional pieces, in TRL 1.16's order (``l_t`` the per-token loss)::

    l_t = g_t * M_i * w_t * rho_t  +  extra_t  +  beta * KL_t            then aggregation, then  - c * H_bar

with M_i the off-policy sequence mask (:func:`off_policy_sequence_mask`, DeepSeek-V3.2), w_t the token weights,
rho_t the rollout (vLLM) importance-sampling ratio (:func:`vllm_importance_sampling_ratio`; for ``vespo`` it enters
phi instead) and H_bar the mean entropy of the entropy bonus (:func:`entropy_bonus`; its coefficient can follow
Skywork-OR1's controller, :class:`AdaptiveEntropyCoef`). :func:`trl_scaled_loss` turns the result into exactly the
value TRL's ``_compute_loss`` returns for every ``loss_type``; ``TRL_LOSS_TYPES`` maps each to our arguments.
"""
from __future__ import annotations

import math

import torch

from .kl import KL_ESTIMATORS, kl_divergence

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "dr_grpo")
IMPORTANCE_LEVELS = ("token", "sequence", "sequence_shared")
NORMALIZATIONS = ("count", "weights")
SURROGATES = ("ppo_clip", "cispo", "sapo", "vespo")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

# TRL 1.16 GRPOConfig.loss_type -> the policy_loss arguments that reproduce it (plus trl_scaled_loss(loss_type)).
# Per-type parameters are passed through by name: cispo: clip_low=None, cispo_clip_max=epsilon_high;
# sapo: sapo_temperature_pos/neg; vespo: vespo_k_pos/lambda_pos/k_neg/lambda_neg; dr_grpo: max_len.
TRL_LOSS_TYPES = {
    "grpo": {"surrogate": "ppo_clip", "aggregation": "seq_mean_token_mean"},
    "bnpo": {"surrogate": "ppo_clip", "aggregation": "token_mean"},
    "dr_grpo": {"surrogate": "ppo_clip", "aggregation": "dr_grpo"},
    "dapo": {"surrogate": "ppo_clip", "aggregation": "token_mean"},
    "cispo": {"surrogate": "cispo", "aggregation": "token_mean"},
    "sapo": {"surrogate": "sapo", "aggregation": "seq_mean_token_mean"},
    "vespo": {"surrogate": "vespo", "aggregation": "token_mean"},
    "luspo": {"surrogate": "ppo_clip", "aggregation": "seq_mean_token_sum"},
}
# loss types whose micro-batch token sum TRL divides by the generation batch's global token count
_GLOBAL_TOKEN_NORMALISED = ("dapo", "cispo", "vespo")


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
    surrogate: str = "ppo_clip",
    cispo_clip_max: float | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    off_policy_mask_threshold: float | None = None,
    sampling_logps: torch.Tensor | None = None,
    importance_sampling_ratio: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    entropy_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy loss of the GRPO family (GRPO / DAPO / Dr. GRPO / GSPO / LUSPO; CISPO / SAPO / VESPO surrogates) with
    token weights, a KL penalty, the off-policy sequence mask, a rollout IS ratio and an entropy bonus.

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
            for ``token_mean`` and ``seq_mean_token_mean``. A zero denominator is replaced by 1. Without
            ``token_weights`` it is ``"count"``.
        importance_level: ``"token"`` (PPO/GRPO ratio per token), ``"sequence"`` (GSPO, Zheng et al. 2025,
            arXiv 2507.18071, objective Eq. 5 with s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t log r_t)
            over the sequence's valid tokens). Implemented as the paper's GSPO-token variant,
            s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]: equal to s_i in value, equal to GSPO in gradient when
            advantages are per sequence, and defined for ``[B, T]`` advantages too. This reproduces TRL's
            ``importance_sampling_level="sequence"`` in value and gradient (tested) whenever every per-token
            multiplier is constant within a sequence. ``"sequence_shared"`` is TRL's own form, one differentiable
            s_i per sequence broadcast over its tokens: the same value, and the same gradient in that case; it
            differs (and is TRL's) when ``token_weights``, a ``[B, T]`` ``importance_sampling_ratio`` or ``[B, T]``
            advantages vary within a sequence: then d/dlogp_t = (d s_i / d logp_t) * sum_u (multiplier_u m_u),
            spread evenly over the sequence's tokens, instead of each token's own multiplier.
        extra_token_loss: optional ``[B, T]`` term added to each token's loss before aggregation (after the
            weights), e.g. KL-Cov's ``k * |log r|`` penalty (Cui et al. 2025). Masked like everything else.
        delta: optional upper cap ``r <= delta`` on the unclipped branch (two-sided clipping of TRL's ``delta``,
            from INTELLECT-2); ``None`` disables it.
        kl_bias_correction: multiply the per-token KL by the (differentiable) importance ratio pi / pi_old, the
            unbiased reverse-KL gradient of DeepSeek-V3.2 (arXiv 2512.02556). **TRL 1.16 defaults to this**
            (``GRPOConfig.use_bias_correction_kl=True``); the default here (False) is DeepSeekMath's plain
            ``beta * k3``. Pass True to reproduce TRL's default loss when ``kl_coef > 0``. With
            ``importance_level="sequence"`` the factor is TRL's sequence ratio exp(mean_t log r_t).
        surrogate: the per-token policy term, one of :data:`SURROGATES` (module docstring). ``"ppo_clip"`` (default)
            is the clipped PPO/GRPO term above. ``"cispo"`` (MiniMax-M1, arXiv 2506.13585, the CISPO objective)
            clips the *stop-gradient* ratio instead, ``-sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi``, so
            every token keeps a gradient. ``"sapo"`` (Soft Adaptive Policy Optimization, arXiv 2511.20347) replaces
            the hard clip by the gate ``(4 / tau) * sigmoid(tau * (r - 1))`` (slope 1 at r = 1), ``tau`` by the sign
            of A. ``"vespo"`` (VESPO, arXiv 2602.10693) weights ``-A * log pi`` by the detached Gamma weight
            ``phi(w) = exp(lam + k log w - lam w)`` (phi(1) = 1) of the sequence ratio ``w_i = prod_t r_t`` (TRL's
            ``get_gamma_weights``: per-token log-ratios clamped to [-20, 20] and summed over valid tokens, times
            the rollout IS ratios when ``importance_sampling_ratio`` is given, log w clamped to [log 1e-8, 20]; a
            non-finite phi becomes 0). VESPO ignores ``importance_level`` (it is only used by the KL correction),
            the clip arguments and ``delta``; ``sapo`` ignores the clip arguments and ``delta``; ``cispo`` ignores
            ``delta``.
        cispo_clip_max: ``cispo`` only: the absolute upper bound of the stop-gradient ratio (ScaleRL's eps_max,
            arXiv 2510.13786; TRL's ``epsilon_high`` with ``loss_type="cispo"``, recommended 5.0). Overrides
            ``1 + clip_high``. TRL has no lower bound for CISPO: pass ``clip_low=None`` to reproduce it.
        sapo_temperature_pos, sapo_temperature_neg: ``sapo``'s tau for A > 0 / A <= 0 (TRL's defaults).
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: ``vespo``'s (k, lam) for A >= 0 / A < 0 (TRL's
            defaults); lam is clamped to >= 1e-4 as TRL does.
        off_policy_mask_threshold: DeepSeek-V3.2's off-policy sequence masking (arXiv 2512.02556, Eq. 9, its
            ``delta``; TRL's ``off_policy_mask_threshold``): drop the policy term of sequences with A < 0 whose mean
            per-token ``sampling_logps - logps`` exceeds the threshold (:func:`off_policy_sequence_mask`). ``None``
            disables it. The KL term, ``extra_token_loss`` and the entropy bonus are not masked, as in TRL.
        sampling_logps: ``[B, T]`` log-probs of the policy that *generated* the tokens (vLLM's), for the off-policy
            mask; ``None`` falls back to ``old_logps`` (then ``logps``), as TRL does. NaN marks a token the sampler
            could not score: it contributes 0 to the mean (still counted in its denominator), as in TRL.
        importance_sampling_ratio: ``[B, T]`` or ``[B, 1]`` rollout importance-sampling ratio rho (detached here),
            e.g. TRL's vLLM correction from :func:`vllm_importance_sampling_ratio` (Yao et al. 2025, "Your
            Efficient RL Framework Secretly Brings You Off-Policy RL Training"). It multiplies the per-token
            policy term (not the KL, ``extra_token_loss`` or the entropy bonus), as TRL; for ``vespo`` it enters
            the Gamma weight's sequence ratio instead (TRL's rule). Must be finite and >= 0 at valid positions.
        entropies: ``[B, T]`` per-token entropies H_t of the policy (with gradient) for the entropy bonus.
        entropy_coef: c of the entropy bonus ``- c * sum(H m_e) / sum(m_e)`` added to the aggregated loss
            (:func:`entropy_bonus`; TRL's ``entropy_coef``, the mean per-token entropy whatever the aggregation).
            Any finite value; ``!= 0`` needs ``entropies``. For TRL's adaptive control pass
            :attr:`AdaptiveEntropyCoef.applied_coef`. Gradient accumulation is the caller's: see
            :func:`trl_scaled_loss`'s ``entropy_bonus``.
        entropy_mask: optional ``[B, T]`` tokens the bonus averages over, m_e = ``mask * entropy_mask`` (TRL: its
            ``top_entropy_quantile`` mask, the same tokens as the policy term); ``None`` uses ``mask``.

    Where ``token_weights`` enter: they multiply the per-token policy term, together with the off-policy mask and
    the rollout IS ratio (``g_t * M_i * w_t * rho_t``, in TRL's order; the product commutes). Nothing else is
    weighted: the KL term, ``extra_token_loss`` and the entropy bonus are not, exactly as TRL treats its entropy
    mask. ``normalize="weights"`` divides by sum(w m) only (neither M nor rho enters the denominator).

    Returns:
        ``(loss, metrics)``: a 0-d loss connected to ``logps`` (0 with an empty mask, backward still works), and a
        dict of 0-d detached float tensors: ``clip_frac_low`` / ``clip_frac_high`` / ``clip_frac`` (valid tokens
        whose ratio is clipped, TRL's definition: ``r < 1 - eps_low`` with ``A < 0`` / ``r > 1 + eps_high`` with
        ``A > 0`` / either), ``ratio_mean``, ``kl`` (only when ``ref_logps`` is given), ``weighted_token_frac``
        (valid tokens with w != 0), ``token_weight_mean``, ``num_tokens``. Means are over valid tokens; all are 0
        for an empty mask. Present only when their feature is used: ``off_policy_masked_frac`` (valid tokens whose
        policy term the off-policy mask drops), ``is_ratio_mean`` (mean rho over valid tokens), ``vespo_phi_mean``
        (TRL's ``vespo/phi_seq_mean``), ``entropy`` (mean H over m_e) and ``entropy_bonus`` (the term added,
        ``-c * entropy``). For ``cispo`` the clip fractions use its bounds (``clip_frac_high`` is TRL's
        ``cispo_clip_ratio``); ``sapo`` and ``vespo`` never clip (0).
    """
    adv, m, w = _check_inputs(
        logps, old_logps, advantages, mask, token_weights, ref_logps, extra_token_loss,
        clip_low, clip_high, kl_coef, kl_estimator, aggregation, max_len, normalize, importance_level, delta,
    )
    rho, ent, ent_m = _check_new_inputs(
        logps, m, surrogate, cispo_clip_max, (sapo_temperature_pos, sapo_temperature_neg),
        (vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg), off_policy_mask_threshold, sampling_logps,
        importance_sampling_ratio, entropies, entropy_coef, entropy_mask)
    valid = m > 0
    # Zero every input at ignored positions first: a -inf log-prob in padding must not turn into NaN
    # (0 * inf) in the sums or in the gradient.
    logps = logps.masked_fill(~valid, 0.0)
    old = logps.detach() if old_logps is None else old_logps.detach().masked_fill(~valid, 0.0)

    log_ratio = _importance_log_ratio(logps, old, m, importance_level)
    ratio = torch.exp(log_ratio)
    lo = -math.inf if clip_low is None else 1.0 - clip_low
    hi = math.inf if clip_high is None else 1.0 + clip_high
    extra_metrics = {}
    if surrogate == "ppo_clip":
        clipped = ratio.clamp(min=lo, max=hi)
        capped = ratio if delta is None else ratio.clamp(max=delta)  # TRL caps only the unclipped branch
        per_token = -torch.min(capped * adv, clipped * adv)
    elif surrogate == "cispo":
        hi = hi if cispo_clip_max is None else cispo_clip_max
        per_token = -ratio.detach().clamp(min=lo, max=hi) * adv * logps
    elif surrogate == "sapo":
        lo, hi = -math.inf, math.inf
        # in adv's dtype (TRL's torch.where on Python floats gives float32 temperatures: < 1e-7 relative difference)
        tau = torch.where(adv > 0, adv.new_tensor(sapo_temperature_pos), adv.new_tensor(sapo_temperature_neg))
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    else:  # vespo
        lo, hi = -math.inf, math.inf
        phi = vespo_gamma_weights(adv, logps.detach() - old, m, rho, k_pos=vespo_k_pos, lambda_pos=vespo_lambda_pos,
                                  k_neg=vespo_k_neg, lambda_neg=vespo_lambda_neg)
        per_token = -phi * adv * logps
        extra_metrics["vespo_phi_mean"] = (phi.sum() / phi.size(0) if phi.size(1) == 1
                                           else (phi * m).sum() / m.sum().clamp(min=1.0)).detach()
    if off_policy_mask_threshold is not None:
        reference = old if sampling_logps is None else sampling_logps.detach().masked_fill(~valid, 0.0)
        keep = off_policy_sequence_mask(adv, logps, reference, m, off_policy_mask_threshold)
        per_token = per_token * keep
        extra_metrics["off_policy_masked_frac"] = ((1 - keep).expand_as(m) * m).sum() / m.sum().clamp(min=1.0)
    if w is not None:
        per_token = per_token * w
    if rho is not None and surrogate != "vespo":
        per_token = per_token * rho
    if rho is not None:
        extra_metrics["is_ratio_mean"] = (rho.expand_as(m) * m).sum() / m.sum().clamp(min=1.0)
    if extra_token_loss is not None:
        per_token = per_token + extra_token_loss.masked_fill(~valid, 0.0)
    kl = None
    if ref_logps is not None:
        kl = kl_divergence(logps, ref_logps.detach().masked_fill(~valid, 0.0), kl_estimator)
        if kl_coef != 0.0:
            kl_term = kl * _kl_correction(logps, old, m, log_ratio, importance_level) if kl_bias_correction else kl
            per_token = per_token + kl_coef * kl_term  # after the weights: the KL anchor applies to every token

    loss = _aggregate(per_token, m, w, aggregation, max_len, normalize)
    if ent is not None:
        ent = ent.masked_fill(~valid, 0.0)
        em = m if ent_m is None else m * ent_m
        bonus = entropy_bonus(ent, em, entropy_coef)
        loss = loss + bonus
        extra_metrics["entropy"] = (ent.detach() * em).sum() / em.sum().clamp(min=1.0)
        extra_metrics["entropy_bonus"] = bonus
    metrics = _metrics(ratio.detach(), adv, m, w, kl, lo, hi)
    metrics.update({k: v.detach().to(logps.dtype) for k, v in extra_metrics.items()})
    return loss, metrics


def _importance_log_ratio(logps, old, m, level):
    log_ratio = logps - old
    if level == "token":
        return log_ratio
    seq = (log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    if level == "sequence_shared":
        # TRL's form: one differentiable ratio per sequence [B, 1], shared (and differentiated) by all its tokens.
        return seq.unsqueeze(-1)
    # GSPO: length-normalised sequence log-ratio, with GSPO-token's stop-gradient form so each token
    # receives its own gradient: value = seq ratio, d/dlogp_t = seq ratio.
    return seq.detach().unsqueeze(-1) + logps - logps.detach()


def _kl_correction(logps, old, m, log_ratio, level):
    if level == "token":
        return torch.exp(log_ratio)
    # TRL's sequence-level factor: the full-gradient sequence ratio (not GSPO-token's stop-gradient form)
    seq = ((logps - old) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return torch.exp(seq).unsqueeze(-1)


def off_policy_sequence_mask(advantages: torch.Tensor, logps: torch.Tensor, sampling_logps: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Off-policy sequence mask of DeepSeek-V3.2 (arXiv 2512.02556, Eq. 9, ``threshold`` = its delta), TRL 1.16's
    ``GRPOTrainer.get_off_policy_mask``: keep a sequence iff ``A >= 0`` or its mean per-token
    ``sampling_logps - logps`` (a forward-KL estimate of the sampler against the current policy) is ``<= threshold``.

    ``advantages`` [B, 1] (or [B] ) gives a [B, 1] mask; [B, T] advantages give a [B, T] mask (TRL's broadcasting).
    NaN in ``sampling_logps`` (tokens the sampler could not score) counts as a zero difference; the mean is over
    ``mask`` with a zero count replaced by 1 (an empty sequence's mean is 0). Returns a detached 0/1 tensor in ``mask``'s
    floating dtype (``logps``'s if ``mask`` is not floating).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    m = mask if mask.is_floating_point() else mask.to(logps.dtype)
    with torch.no_grad():
        diff = torch.nan_to_num(sampling_logps - logps.detach(), nan=0.0)
        avg = (diff * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return ((advantages >= 0) | (avg <= threshold)).to(m.dtype)


@torch.no_grad()
def vespo_gamma_weights(advantages: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor,
                        importance_sampling_ratio: torch.Tensor | None = None, *, k_pos: float = 2.0,
                        lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0) -> torch.Tensor:
    """VESPO's detached Gamma weight (arXiv 2602.10693), exactly TRL 1.16's ``GRPOTrainer.get_gamma_weights``.

    ``phi(w) = exp(lam + k log w - lam w)`` (so phi(1) = 1) of the sequence ratio ``log w_i = sum_t clamp(log r_t,
    -20, 20) m_t (+ sum_t clamp(log rho_t, log 1e-8, 20) m_t)``, ``log w`` clamped to [log 1e-8, 20]; (k, lam) are
    ``(k_pos, lambda_pos)`` where A >= 0 and ``(k_neg, lambda_neg)`` otherwise, lam clamped to >= 1e-4; a
    non-finite phi is 0. ``advantages`` [B, 1] gives [B, 1]; [B, T] gives [B, T]. ``importance_sampling_ratio``
    ([B, T] or [B, 1]) is the rollout IS ratio. One difference from TRL: its log is summed over valid tokens only,
    where TRL sums it over every position; they agree whenever rho = 1 at padding, which is what
    :func:`vllm_importance_sampling_ratio` gives unless its bounds exclude 1.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    m = mask if mask.is_floating_point() else mask.to(log_ratio.dtype)
    lower = math.log(1e-8)
    seq_log = (log_ratio.clamp(-20.0, 20.0) * m).sum(dim=-1, keepdim=True)
    if importance_sampling_ratio is not None:
        log_rho = torch.log(importance_sampling_ratio).clamp(lower, 20.0)
        seq_log = seq_log + (log_rho * m if log_rho.size(-1) == m.size(-1) else log_rho).sum(dim=-1, keepdim=True)
    log_w = seq_log.clamp(lower, 20.0)
    nonneg = advantages >= 0
    # in log_w's dtype (TRL's torch.where on Python floats computes them in float32: a < 1e-7 relative difference)
    k = torch.where(nonneg, log_w.new_tensor(k_pos), log_w.new_tensor(k_neg))
    lam = torch.where(nonneg, log_w.new_tensor(lambda_pos), log_w.new_tensor(lambda_neg)).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def entropy_bonus(entropies: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """``-coef * sum(H m) / max(sum m, 1)``: the entropy bonus of TRL 1.16's ``GRPOTrainer`` (``entropy_coef``), the
    mean per-token entropy over ``mask`` (TRL's "effective mask": completion tokens, times its
    ``top_entropy_quantile`` mask when set), whatever the policy aggregation. Entropy regularisation of the policy
    gradient goes back to Williams & Peng (1991); TRL's help text cites no paper for the static bonus.

    0-d, differentiable w.r.t. ``entropies`` (masked positions get no gradient and may hold anything). TRL divides
    it by the accumulation steps in training, never by a loss-type normaliser (:func:`trl_scaled_loss`).
    """
    m = mask if mask.is_floating_point() else mask.to(entropies.dtype)
    h = entropies.masked_fill(~(m > 0), 0.0)
    return -coef * ((h * m).sum() / m.sum().clamp(min=1.0))


def vllm_importance_sampling_ratio(old_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor, *,
                                   mode: str = "sequence_mask", clip_min: float | None = None,
                                   clip_max: float | None = 3.0) -> torch.Tensor:
    """Rollout importance-sampling ratio pi_old / pi_sampler of TRL 1.16's vLLM correction (TRL computes it in
    ``GRPOTrainer._generate_and_score_completions``; truncated IS after Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training", fengyao.notion.site/off-policy-rl).

    ``old_logps`` are the trainer's log-probs of the sampled tokens (``old_per_token_logps``), ``sampling_logps``
    the sampler's (vLLM's). The per-token difference is ``(old - sampling) * mask`` with NaN (an unscored token)
    set to 0, so padding and unscored tokens have ratio exp(0) = 1 before the bounds. ``mode`` (one of
    :data:`IS_MODES`, TRL's ``vllm_importance_sampling_mode``; TRL's default ``"sequence_mask"``):

    * ``token_*``: rho_t = exp(diff_t), ``[B, T]``; ``sequence_*``: rho_i = exp(sum_t diff_t), ``[B, 1]``;
    * ``*_truncate``: ``clamp(rho, clip_min, clip_max)`` (at least one bound needed);
      ``*_mask``: rho outside [clip_min, clip_max] (a ``None`` bound is open) is set to 0.

    ``clip_max`` is TRL's ``vllm_importance_sampling_clip_max`` (C_max, default 3.0; the deprecated
    ``vllm_importance_sampling_cap``), ``clip_min`` its ``vllm_importance_sampling_clip_min``. Detached; pass
    the result as :func:`policy_loss`'s ``importance_sampling_ratio``.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; expected one of {', '.join(IS_MODES)}")
    if mode.endswith("_truncate") and clip_min is None and clip_max is None:
        raise ValueError(f"mode {mode!r} needs clip_min or clip_max")
    if clip_min is not None and clip_max is not None and not clip_min < clip_max:
        raise ValueError(f"clip_min ({clip_min}) must be less than clip_max ({clip_max})")
    if tuple(old_logps.shape) != tuple(sampling_logps.shape) or tuple(mask.shape) != tuple(old_logps.shape):
        raise ValueError(f"old_logps {tuple(old_logps.shape)}, sampling_logps {tuple(sampling_logps.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same [B, T] shape")
    with torch.no_grad():
        diff = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
        if mode.startswith("sequence"):
            diff = diff.sum(dim=-1, keepdim=True)
        rho = torch.exp(diff)
        if mode.endswith("_truncate"):
            return torch.clamp(rho, min=clip_min, max=clip_max)
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        return rho.masked_fill((rho < lo) | (rho > hi), 0.0)


class AdaptiveEntropyCoef:
    """Adaptive entropy coefficient of Skywork-OR1 (arXiv 2505.22312), exactly TRL 1.16's controller
    (``use_adaptive_entropy``): pure and stateful, no TRL.

    After every optimizer step, with the step's global mean entropy H (over the bonus's effective mask, all
    micro-batches and processes): ``coef <- min(coef + delta, coef_max)`` if ``H <= target`` else
    ``max(coef - delta, coef_min)``. The coefficient *applied* during a step is the one from the end of the
    previous step, and only while the last measured entropy is at or below the target (:attr:`applied_coef`:
    ``coef if last_world_entropy <= target else 0``); before the first measurement (``last_world_entropy = inf``)
    no bonus is applied. Defaults are TRL's (``entropy_coef=0``, ``entropy_target=0.2``, ``entropy_coef_delta=
    0.005``, ``entropy_coef_min=0``, ``entropy_coef_max=1``).

    Use: every micro-batch ``policy_loss(..., entropy_coef=ctrl.applied_coef, entropies=H)`` and
    ``ctrl.observe(H, effective_mask)``; at each optimizer-step boundary ``ctrl.end_window(reduce)`` with
    ``reduce`` summing a tensor over processes (``None`` for one process). Or call :meth:`update` with an entropy
    you reduced yourself. Training only: TRL never updates it in evaluation.
    """

    def __init__(self, coef: float = 0.0, *, target: float = 0.2, delta: float = 0.005, coef_min: float = 0.0,
                 coef_max: float = 1.0):
        for name, v in (("coef", coef), ("target", target), ("delta", delta), ("coef_min", coef_min),
                        ("coef_max", coef_max)):
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if delta < 0 or coef_min > coef_max:
            raise ValueError(f"need delta >= 0 and coef_min <= coef_max, got delta={delta}, coef_min={coef_min}, "
                             f"coef_max={coef_max}")
        self.coef = float(coef)
        self.target, self.delta, self.coef_min, self.coef_max = float(target), float(delta), coef_min, coef_max
        self.last_world_entropy = math.inf
        self._window = None

    @property
    def applied_coef(self) -> float:
        """The coefficient to apply in the current step (0 while the last entropy is above the target)."""
        return self.coef if self.last_world_entropy <= self.target else 0.0

    def update(self, world_entropy: float) -> float:
        """One optimizer-step update with the step's global mean entropy; returns the new ``coef``."""
        world_entropy = float(world_entropy)
        if math.isnan(world_entropy):
            raise ValueError("world_entropy is NaN")
        if world_entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_world_entropy = world_entropy
        return self.coef

    def observe(self, entropies: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one micro-batch's ``[sum(H m), sum(m)]`` to the current window (detached)."""
        m = mask if mask.is_floating_point() else mask.to(entropies.dtype)
        h = entropies.detach().masked_fill(~(m > 0), 0.0)
        stats = torch.stack([(h * m).sum(), m.sum()]).detach()
        self._window = stats if self._window is None else self._window + stats

    def end_window(self, reduce=None) -> float:
        """Close the optimizer step: reduce the window's sums (``reduce``: sum over processes, or ``None``), update with
        their token-weighted mean ``sum / max(count, 1)`` and reset the window. Returns the new ``coef``."""
        if self._window is None:
            raise ValueError("end_window() without any observe() in this window")
        stats = self._window if reduce is None else reduce(self._window)
        self._window = None
        return self.update((stats[0] / stats[1].clamp(min=1.0)).item())

    def state_dict(self) -> dict:
        """TRL's checkpoint fields (``entropy_ctrl_state.json``); the open window is not saved (checkpoints fall on step
        boundaries)."""
        return {"entropy_coef": self.coef, "last_world_entropy": self.last_world_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["entropy_coef"])
        self.last_world_entropy = float(state["last_world_entropy"])
        self._window = None


def _aggregate(per_token, m, w, aggregation, max_len, normalize):
    per_token = per_token * m  # m is 0/1 (or fractional, then it scales the token)
    if w is None:  # no weights: every weight is 1, so "weights" normalisation is the count
        normalize = "count"
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
        raise ValueError(f"unknown importance_level {importance_level!r}; expected one of "
                         f"{', '.join(IMPORTANCE_LEVELS)}")
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


def _check_new_inputs(logps, m, surrogate, cispo_clip_max, sapo_taus, vespo_params, off_policy_mask_threshold,
                      sampling_logps, importance_sampling_ratio, entropies, entropy_coef, entropy_mask):
    """Validate the surrogate / off-policy / IS / entropy arguments; return (rho or None, entropies, entropy_mask)."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {', '.join(SURROGATES)}")
    if cispo_clip_max is not None and not cispo_clip_max > 0:
        raise ValueError(f"cispo_clip_max must be > 0 (or None), got {cispo_clip_max}")
    if not all(math.isfinite(t) and t > 0 for t in sapo_taus):
        raise ValueError(f"sapo temperatures must be finite and > 0, got {sapo_taus}")
    if not all(math.isfinite(v) for v in vespo_params):
        raise ValueError(f"vespo k / lambda must be finite, got {vespo_params}")
    if off_policy_mask_threshold is not None and not math.isfinite(off_policy_mask_threshold):
        raise ValueError(f"off_policy_mask_threshold must be finite (or None), got {off_policy_mask_threshold}")
    if not math.isfinite(entropy_coef):
        raise ValueError(f"entropy_coef must be finite, got {entropy_coef}")
    if entropy_coef != 0.0 and entropies is None:
        raise ValueError("entropy_coef != 0 needs entropies")
    shape = tuple(logps.shape)
    for name, t in (("sampling_logps", sampling_logps), ("entropies", entropies), ("entropy_mask", entropy_mask)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"shape mismatch: {name}={tuple(t.shape)} but logps={shape}")
    rho = importance_sampling_ratio
    if rho is not None and tuple(rho.shape) not in (shape, (shape[0], 1)):
        raise ValueError(f"importance_sampling_ratio must be [B, T]={shape} or [B, 1]={(shape[0], 1)}, got "
                         f"{tuple(rho.shape)}")
    valid = m > 0
    if rho is not None:
        rho = rho.detach().to(logps.dtype)
        row_valid = valid.any(-1, keepdim=True)
        rho = rho.masked_fill(~(valid if rho.size(-1) == shape[-1] else row_valid), 1.0)
        if not bool((torch.isfinite(rho) & (rho >= 0)).all()):
            raise ValueError("importance_sampling_ratio must be finite and >= 0 at valid positions")
    checks = {"entropies": entropies, "entropy_mask": entropy_mask}
    if sampling_logps is not None:  # NaN marks an unscored token (as TRL); +-inf is an error
        checks["sampling_logps"] = torch.nan_to_num(sampling_logps.detach(), nan=0.0, posinf=math.inf,
                                                    neginf=-math.inf)
    _check_finite(valid, **checks)
    ent_m = None if entropy_mask is None else entropy_mask.detach().to(logps.dtype).masked_fill(~valid, 0.0)
    return rho, entropies, ent_m


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
                    gradient_accumulation_steps: float, steps_per_generation: int, training: bool,
                    entropy_bonus: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`policy_loss`'s micro-batch loss scaled to the value TRL 1.16's ``GRPOTrainer._compute_loss`` returns (its
    gradient-accumulation and DAPO normalisers), for every TRL ``loss_type`` (:data:`TRL_LOSS_TYPES`).

    Every loss type is divided by the accumulation steps in training. ``dapo``, ``cispo`` and ``vespo`` instead
    divide the micro-batch's token *sum* by the global token count of the generation batch (DAPO, Yu et al. 2025,
    Eq. 8: the token-level mean over the whole batch): ``num_items_in_batch / num_processes`` (times ``accumulation
    / steps_per_generation`` in training); ``token_mean`` (with ``normalize="count"``) already divided by
    ``local_tokens``, which is multiplied back.

    ``entropy_bonus``: when ``loss`` includes :func:`policy_loss`'s entropy bonus, pass the same term (the 0-d
    differentiable :func:`entropy_bonus` of the same entropies, effective mask and coefficient;
    ``metrics["entropy_bonus"]`` is its value). TRL divides the bonus by the accumulation steps only, never by a
    loss-type normaliser, so for ``dapo``/``cispo``/``vespo`` it is taken out before the rescaling and added back
    divided by the accumulation steps. For the other loss types it changes nothing (both are divided by the
    accumulation steps) and may be omitted.
    """
    if loss_type not in TRL_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(TRL_LOSS_TYPES)}")
    accum = gradient_accumulation_steps if training else 1.0
    if loss_type not in _GLOBAL_TOKEN_NORMALISED:
        return loss / accum
    policy = loss if entropy_bonus is None else loss - entropy_bonus
    normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
    if training:
        normalizer = normalizer * accum / steps_per_generation
    scaled = policy * local_tokens.clamp(min=1.0) / normalizer
    return scaled if entropy_bonus is None else scaled + entropy_bonus / accum
