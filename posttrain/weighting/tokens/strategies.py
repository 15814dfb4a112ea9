"""The built-in token strategies, registered in ``TOKEN_STRATEGIES`` (thin adapters: batch -> function call).

| name                | kind       | needs                                   | function                         |
|---------------------|------------|-----------------------------------------|----------------------------------|
| ``steer``           | weight     | logps, old_logps, old_entropies         | :func:`steer_weights`            |
| ``high_entropy``    | weight     | entropies (or old_entropies)            | :func:`high_entropy_mask`        |
| ``clip_cov``        | weight     | logps, old_logps                        | :func:`clip_cov_mask`            |
| ``tw_grpo``         | weight     | full_logprobs, group_size               | :func:`tw_grpo_weights[_chunked]`|
| ``kl_cov``          | loss_term  | logps, old_logps (no ratio clipping)    | :func:`kl_cov_mask` + penalty    |
| ``entropy_advantage``| advantage | entropies                               | :func:`entropy_advantage`        |
"""
from __future__ import annotations

import torch

from .cov import clip_cov_mask, kl_cov_mask, kl_cov_penalty
from .entropy_advantage import entropy_advantage
from .high_entropy import high_entropy_mask
from .registry import TokenBatch, token_strategy
from .steer import steer_weights
from .tw_grpo import tw_grpo_weights, tw_grpo_weights_chunked

_FROM_BATCH = "from_batch"  # default of clip_cov's clip range: the policy loss's (batch.clip_*), else 0.2
_ENTROPY_SOURCES = ("current", "old")


@token_strategy("steer", needs={"logps", "old_logps", "old_entropies"})
def steer(batch: TokenBatch, *, w_min: float = 0.8, w_max: float = 1.2, mode: str = "linear"):
    """STEER (arXiv 2510.10150) with pi_old entropies, as the official code."""
    return steer_weights(batch.advantages, batch.old_entropies, batch.old_logps, batch.logps, batch.mask,
                         w_min=w_min, w_max=w_max, mode=mode)


def _high_entropy_needs(args) -> frozenset:
    src = args.get("entropy_source", "current")
    return frozenset({"old_entropies" if src == "old" else "entropies"})


@token_strategy("high_entropy", needs={"entropies"}, needs_fn=_high_entropy_needs)
def high_entropy(batch: TokenBatch, *, top_fraction: float = 0.2, entropy_source: str = "current"):
    """80/20 mask (arXiv 2506.01939, TRL semantics). ``entropy_source``: "current" (TRL, default) or "old"."""
    if entropy_source not in _ENTROPY_SOURCES:
        raise ValueError(f"entropy_source must be one of {_ENTROPY_SOURCES}, got {entropy_source!r}")
    h = batch.entropies if entropy_source == "current" else batch.old_entropies
    return high_entropy_mask(h, batch.mask, top_fraction=top_fraction)


@token_strategy("clip_cov", needs={"logps", "old_logps"})
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


@token_strategy("tw_grpo", needs={"full_logprobs", "group_size"})
def tw_grpo(batch: TokenBatch, *, alpha: float = 1.7, chunk_size: int = 64):
    """TW-GRPO (arXiv 2505.24718): chunked from ``hidden`` + ``lm_head_weight`` if given, else ``full_logprobs_fn``."""
    if batch.hidden is not None and batch.lm_head_weight is not None:
        return tw_grpo_weights_chunked(batch.hidden, batch.lm_head_weight, batch.mask, batch.group_size,
                                       alpha=alpha, chunk_size=chunk_size, temperature=batch.temperature)
    return tw_grpo_weights(batch.full_logprobs_fn(), batch.mask, batch.group_size, alpha=alpha)


@token_strategy("kl_cov", needs={"logps", "old_logps"}, kind="loss_term", disables_clipping=True)
def kl_cov(batch: TokenBatch, *, k_percent: float = 0.2, kl_coef: float = 1.0):
    """KL-Cov (arXiv 2505.22617): extra per-token loss ``kl_coef |log r|`` on the top-k Cov tokens."""
    sel = kl_cov_mask(batch.advantages, batch.logps, batch.mask, k_percent=k_percent)
    pen = kl_cov_penalty(batch.logps, batch.old_logps, sel, kl_coef=kl_coef)
    valid = batch.mask.bool()
    n = max(int(valid.sum()), 1)
    with torch.no_grad():
        diag = {"selected_frac": float(sel[valid].sum()) / n, "penalty_mean": float(pen.detach()[valid].sum()) / n}
    return pen, diag


@token_strategy("entropy_advantage", needs={"entropies"}, kind="advantage")
def entropy_adv(batch: TokenBatch, *, alpha: float = 0.4, kappa: float = 2.0):
    """Entropy-shaped advantages (arXiv 2506.14758 Eq. 5-6), current-policy entropies."""
    return entropy_advantage(batch.advantages, batch.entropies, batch.mask, alpha=alpha, kappa=kappa)
