"""Entropy-aware per-token weights for GRPO-family losses (torch only; never imports TRL or transformers).

Functions (all take [B, T] tensors + a [B, T] mask and return [B, T] detached tensors, 0 on padding):

- :func:`steer_weights` — STEER, arXiv 2510.10150 (weights in [w_min, w_max]).
- :func:`high_entropy_mask` — "Beyond the 80/20 Rule", arXiv 2506.01939, TRL 1.16 semantics ({0,1}).
- :func:`clip_cov_mask`, :func:`kl_cov_mask`, :func:`kl_cov_penalty`, :func:`kl_cov_loss` — Clip-Cov / KL-Cov,
  arXiv 2505.22617 (masks {0,1}; the KL-Cov penalty is a loss term with gradient through ``logps``).
- :func:`tw_grpo_weights`, :func:`tw_grpo_weights_chunked` — TW-GRPO, arXiv 2505.24718 (weights in [1, alpha]).
- :func:`entropy_advantage` — Cheng et al., arXiv 2506.14758 Eq. 5-6 (shaped advantages, not weights).
- :func:`token_weight_stats` — logging diagnostics.

Composition from a recipe: :data:`TOKEN_STRATEGIES`, :class:`TokenBatch`, :func:`compose_token_weights`,
:func:`apply_token_strategies`, :func:`required_inputs`, :func:`clipping_disabled`. See docs/weighting_tokens.md.
Statistics over "the batch" are computed over the tensors passed in; the trainer decides the scope.
"""
from .compose import (
    TokenStrategyResult,
    apply_token_strategies,
    clipping_disabled,
    compose_token_weights,
    parse_token_specs,
    required_inputs,
)
from .cov import clip_cov_mask, kl_cov_loss, kl_cov_mask, kl_cov_penalty
from .entropy_advantage import entropy_advantage
from .high_entropy import high_entropy_mask, high_entropy_threshold
from .registry import INPUTS, KINDS, TOKEN_STRATEGIES, TokenBatch, TokenStrategy, token_strategy
from .stats import token_weight_stats
from .steer import steer_weights
from .tw_grpo import tw_grpo_weights, tw_grpo_weights_chunked

__all__ = [
    "steer_weights", "high_entropy_mask", "high_entropy_threshold", "clip_cov_mask", "kl_cov_mask",
    "kl_cov_penalty", "kl_cov_loss", "tw_grpo_weights", "tw_grpo_weights_chunked", "entropy_advantage",
    "token_weight_stats", "TOKEN_STRATEGIES", "TokenBatch", "TokenStrategy", "TokenStrategyResult",
    "token_strategy", "compose_token_weights", "apply_token_strategies", "required_inputs",
    "clipping_disabled", "parse_token_specs", "INPUTS", "KINDS",
]
