"""TW-GRPO token weights of "Reinforcing Video Reasoning with Focused Thinking" (arXiv 2505.24718).

Official code: ``longmalongma/TW-GRPO`` @ aa529ff, ``src/open_r1/trainer/grpo_trainer.py::
compute_token_importance_kl_logs_uniform`` (l.640), used in ``compute_loss`` (l.602-609). Pure functions
:func:`tw_grpo_weights` / :func:`tw_grpo_weights_chunked`, the config :class:`TwGrpoConfig` and the token strategy
``tw_grpo`` (a weight; protocol class :class:`TwGrpo`).
"""
from __future__ import annotations

import math
import warnings

import torch
from pydantic import Field, FiniteFloat

from ._common import check_finite, check_real, valid_of
from .registry import TokenBatch, TokenStrategyConfig, token_strategy

_PAPER = "TW-GRPO, Reinforcing Video Reasoning with Focused Thinking, arXiv 2505.24718"
_CODE = "code longmalongma/TW-GRPO src/open_r1/trainer/grpo_trainer.py::compute_token_importance_kl_logs_uniform"

_CLAMP = 11.0
_EPS = 1e-8


def _group_divergence(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """K_t for one group: ``logp`` [G, c, V] log-softmax, ``valid`` [G, c] bool -> [c] (float32/64)."""
    V = logp.shape[-1]
    uniform = torch.full((), -math.log(V), dtype=logp.dtype, device=logp.device)
    lt = torch.where(valid.unsqueeze(-1), logp, uniform)  # masked positions -> uniform distribution
    mu = lt.mean(dim=0, keepdim=True)  # geometric-mean distribution (mean of log-probs), not renormalised
    d = (mu - lt).clamp_(min=-_CLAMP, max=_CLAMP)
    D = (torch.exp(d) - d - 1).sum(dim=-1)  # [G, c], k3-style divergence summed over the vocabulary
    return D.mean(dim=0)


def _weights_from_divergence(K: torch.Tensor, mask: torch.Tensor, group_size: int, alpha: float) -> torch.Tensor:
    """K [n_groups, T] -> [B, T] weights ``(1 + (alpha - 1) * minmax(K)) * mask``."""
    k_min = K.min(dim=1, keepdim=True).values
    k_max = K.max(dim=1, keepdim=True).values
    K_hat = (K - k_min) / (k_max - k_min + _EPS)  # min-max over ALL positions of the group, padded included
    w = 1.0 + (alpha - 1.0) * K_hat
    w = w.repeat_interleave(group_size, dim=0)
    return (w * valid_of(mask).to(w.dtype)).float()


def _fallback(mask: torch.Tensor, why: str) -> torch.Tensor:
    warnings.warn(f"tw_grpo_weights: {why}; returning uniform weights (mask), as the official code", stacklevel=3)
    return valid_of(mask).float()


def tw_grpo_weights(
    full_logprobs: torch.Tensor, mask: torch.Tensor, group_size: int, *, alpha: float = 1.7
) -> torch.Tensor:
    """TW-GRPO per-token weights from full-vocabulary log-probs: up-weight positions where the group disagrees.

    Paper: "Reinforcing Video Reasoning with Focused Thinking" (TW-GRPO), arXiv 2505.24718; code
    ``compute_token_importance_kl_logs_uniform`` (module docstring). Per group of ``group_size`` contiguous rows
    (rows ``g*G .. g*G+G-1``, TRL's layout):

    1. ``l~ = l`` on valid positions, ``-log V`` (uniform) on masked ones;
    2. ``mu_{t,v} = mean_i l~_{i,t,v}`` (geometric mean over the group, not renormalised);
    3. ``d = clamp(mu - l~, -11, 11)``; ``D_{i,t} = sum_v (e^d - d - 1)``; ``K_t = mean_i D_{i,t}``;
    4. ``K^_t = (K_t - min_t K) / (max_t K - min_t K + 1e-8)`` over **all** T positions incl. padded ones;
    5. ``w_{i,t} = (1 + (alpha - 1) K^_t) * m_{i,t}``, the same weight for every member of the group.

    Default ``alpha = 1.7`` (released script ``tw-grpo.sh``; the trainer's own default is 1.4). Weights lie in
    ``[1, alpha]`` (``[alpha, 1]`` if ``alpha < 1``) on valid tokens, 0 on padding; all equal K gives all ones.
    The official code differentiates through the weights; here they are computed under ``no_grad``
    (detached; the loss value is unchanged). The mask is read as ``mask != 0`` (official: ``== 1``).
    Computed in float32 (float64 for float64 input), one group at a time. Statistics are per group, so the
    result does not depend on the batch scope as long as groups are not split.

    Fallbacks (official behaviour, with a warning): ``full_logprobs`` not 3-D, or ``B`` not divisible by
    ``group_size`` -> ``mask`` as float (all-ones weights times the mask). ``group_size < 1`` or ``alpha <= 0`` ->
    ``ValueError``; NaN/inf log-probs at valid positions -> ``ValueError`` (``-inf`` included: the official code
    would produce NaN there).

    Args:
        full_logprobs: [B, T, V] log-softmax over the vocabulary at the completion positions.
        mask: [B, T], nonzero = valid. group_size: G. alpha: maximum weight.
    """
    alpha = check_real("alpha", alpha, 0.0, low_open=True)
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    valid = valid_of(mask)
    if not isinstance(full_logprobs, torch.Tensor) or full_logprobs.dim() != 3:
        return _fallback(mask, "full_logprobs is not 3-D [B, T, V]")
    if tuple(full_logprobs.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"shape mismatch: full_logprobs={tuple(full_logprobs.shape)}, mask={tuple(mask.shape)}")
    B, T, _ = full_logprobs.shape
    if B % group_size != 0:
        return _fallback(mask, f"batch size {B} is not divisible by group_size {group_size}")
    dt = torch.float64 if full_logprobs.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        check_finite("full_logprobs", full_logprobs.detach(), valid)
        K = torch.empty(B // group_size, T, dtype=dt, device=full_logprobs.device)
        for g in range(B // group_size):
            rows = slice(g * group_size, (g + 1) * group_size)
            K[g] = _group_divergence(full_logprobs[rows].detach().to(dt), valid[rows])
        return _weights_from_divergence(K, mask, group_size, alpha)


def tw_grpo_weights_chunked(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    alpha: float = 1.7,
    chunk_size: int = 64,
    temperature: float = 1.0,
) -> torch.Tensor:
    """:func:`tw_grpo_weights` computed from hidden states, never holding ``B x T x V`` at once.

    ``full_logprobs = log_softmax(hidden @ lm_head_weight.T / temperature)`` is built for one group and
    ``chunk_size`` positions at a time (``G x chunk_size x V`` floats, a few temporaries of that size), under
    ``no_grad``; only the per-position ``K_t`` [B/G, T] is kept. The matmul runs in the LM head's dtype (as the
    model's own forward; no float32 copy of the head), the logits are upcast to float32 before the temperature
    and the softmax. Same paper, formula, defaults,
    edge cases and fallbacks as :func:`tw_grpo_weights` (equal to it within float32 rounding).
    ``temperature`` must match the one the policy's log-probs use (TRL divides logits by it).

    Args:
        hidden: [B, T, H] final hidden states at the completion positions (the rows that produce the logits).
        lm_head_weight: [V, H] output embedding. mask: [B, T]. group_size: G.
        chunk_size: positions per chunk (default 64). temperature: > 0.
    """
    alpha = check_real("alpha", alpha, 0.0, low_open=True)
    temperature = check_real("temperature", temperature, 0.0, low_open=True)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    group_size, chunk_size = int(group_size), int(chunk_size)
    valid = valid_of(mask)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        return _fallback(mask, "hidden is not 3-D [B, T, H]")
    if tuple(hidden.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"shape mismatch: hidden={tuple(hidden.shape)}, mask={tuple(mask.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"lm_head_weight must be [V, H={hidden.shape[2]}], got {tuple(lm_head_weight.shape)}")
    B, T, _ = hidden.shape
    if B % group_size != 0:
        return _fallback(mask, f"batch size {B} is not divisible by group_size {group_size}")
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        check_finite("hidden", hidden.detach(), valid)
        check_finite("lm_head_weight", lm_head_weight.detach())
        W = lm_head_weight.detach()  # no float32 copy of a [V, H] head: the matmul runs in its dtype, like the model
        K = torch.empty(B // group_size, T, dtype=dt, device=hidden.device)
        for g in range(B // group_size):
            rows = slice(g * group_size, (g + 1) * group_size)
            for t0 in range(0, T, chunk_size):
                h = hidden[rows, t0 : t0 + chunk_size].detach().to(W.dtype)
                logp = torch.log_softmax((h @ W.T).to(dt) / temperature, dim=-1)
                K[g, t0 : t0 + chunk_size] = _group_divergence(logp, valid[rows, t0 : t0 + chunk_size])
        return _weights_from_divergence(K, mask, group_size, alpha)


class TwGrpoConfig(TokenStrategyConfig):
    """Arguments of the ``tw_grpo`` token strategy (:func:`tw_grpo_weights` / :func:`tw_grpo_weights_chunked`)."""

    alpha: FiniteFloat = Field(1.7, gt=0.0, description=(
        "Largest token weight: w = 1 + (alpha - 1) * minmax(K_t), K_t the group's divergence from its "
        f"geometric-mean distribution at position t ({_PAPER}; {_CODE}; 1.7 in the released tw-grpo.sh, the "
        "trainer's own default is 1.4)."))
    chunk_size: int = Field(64, ge=1, description=(
        "Positions per chunk when the full-vocabulary log-probs are built from hidden states and the LM head "
        "(memory only: G x chunk_size x V floats at a time; the weights do not depend on it; not in the paper)."))


def _tw_grpo_warnings(config: TwGrpoConfig, env) -> list:
    if config.alpha == 1.0:
        return ["alpha 1 gives every token weight 1: the strategy does nothing"]
    return []


@token_strategy("tw_grpo", needs={"full_logprobs", "group_size"}, config=TwGrpoConfig,
                cite=f"{_PAPER}; {_CODE}", warnings=_tw_grpo_warnings)
def tw_grpo(batch: TokenBatch, *, alpha: float = 1.7, chunk_size: int = 64):
    """TW-GRPO (arXiv 2505.24718): chunked from ``hidden`` + ``lm_head_weight`` if given, else ``full_logprobs_fn``."""
    if batch.hidden is not None and batch.lm_head_weight is not None:
        return tw_grpo_weights_chunked(batch.hidden, batch.lm_head_weight, batch.mask, batch.group_size,
                                       alpha=alpha, chunk_size=chunk_size, temperature=batch.temperature)
    return tw_grpo_weights(batch.full_logprobs_fn(), batch.mask, batch.group_size, alpha=alpha)


#: The protocol ``Strategy`` class of kind "token" registered as ``tw_grpo`` (hook ``token_weights``).
TwGrpo = tw_grpo.strategy_class
