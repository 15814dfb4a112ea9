"""Entropy-aware per-token weights for GRPO-family losses (torch only; never imports TRL or transformers).

One method, one file: each holds the pure functions, the pydantic Config and the token strategy (a protocol
``Strategy`` of kind ``"token"``, registered by :func:`token_strategy`). Functions (all take [B, T] tensors + a
[B, T] mask and return [B, T] detached tensors, 0 on padding):

- :func:`steer_weights` — STEER, arXiv 2510.10150 (weights in [w_min, w_max]); ``steer.py``.
- :func:`high_entropy_mask` — "Beyond the 80/20 Rule", arXiv 2506.01939, TRL 1.16 semantics ({0,1});
  ``high_entropy.py``.
- :func:`clip_cov_mask`, :func:`kl_cov_mask`, :func:`kl_cov_penalty`, :func:`kl_cov_loss` — Clip-Cov / KL-Cov,
  arXiv 2505.22617 (masks {0,1}; the KL-Cov penalty is a loss term with gradient through ``logps``); ``cov.py``.
- :func:`tw_grpo_weights`, :func:`tw_grpo_weights_chunked` — TW-GRPO, arXiv 2505.24718 (weights in [1, alpha]);
  ``tw_grpo.py``.
- :func:`entropy_advantage` — Cheng et al., arXiv 2506.14758 Eq. 5-6 (shaped advantages, not weights);
  ``entropy_advantage.py``.
- :func:`em_ft_token_loss` — EM-FT, arXiv 2505.15134 (a loss term with gradient through the entropies, advantages
  set to 0); ``em_ft.py``.
- :func:`token_weight_stats` — logging diagnostics.

Composition from a recipe: :data:`TOKEN_STRATEGIES`, :class:`TokenBatch`, :func:`compose_token_weights`,
:func:`apply_token_strategies`, :func:`required_inputs`, :func:`clipping_disabled` (each takes spec dicts or built
strategies), :func:`build_token_strategies`, :func:`dry_run_token_strategies`. See docs/weighting_tokens.md.
Statistics over "the batch" are computed over the tensors passed in; the trainer decides the scope.
"""
from .compose import (
    TokenStrategyResult,
    apply_token_strategies,
    build_token_strategies,
    clipping_disabled,
    compose_token_weights,
    dry_run_token_strategies,
    parse_token_specs,
    required_inputs,
)
from .cov import ClipCov, ClipCovConfig, KlCov, KlCovConfig, clip_cov_mask, kl_cov_loss, kl_cov_mask, kl_cov_penalty
from .em_ft import EmFt, EmFtConfig, em_ft_token_loss
from .entropy_advantage import EntropyAdvantage, EntropyAdvantageConfig, entropy_advantage
from .high_entropy import HighEntropy, HighEntropyConfig, high_entropy_mask, high_entropy_threshold
from .registry import (
    HOOK_OF_KIND,
    INPUTS,
    KIND_OF_HOOK,
    KINDS,
    TOKEN_STRATEGIES,
    FunctionTokenStrategy,
    TokenBatch,
    TokenStrategy,
    TokenStrategyConfig,
    token_kinds,
    token_strategy,
)
from .stats import token_weight_stats
from .steer import Steer, SteerConfig, steer_weights
from .tw_grpo import TwGrpo, TwGrpoConfig, tw_grpo_weights, tw_grpo_weights_chunked

__all__ = [
    "steer_weights", "high_entropy_mask", "high_entropy_threshold", "clip_cov_mask", "kl_cov_mask",
    "kl_cov_penalty", "kl_cov_loss", "tw_grpo_weights", "tw_grpo_weights_chunked", "entropy_advantage",
    "token_weight_stats", "TOKEN_STRATEGIES", "TokenBatch", "TokenStrategy", "TokenStrategyResult",
    "token_strategy", "compose_token_weights", "apply_token_strategies", "required_inputs",
    "clipping_disabled", "parse_token_specs", "INPUTS", "KINDS", "HOOK_OF_KIND", "KIND_OF_HOOK",
    "build_token_strategies", "dry_run_token_strategies", "token_kinds", "FunctionTokenStrategy",
    "TokenStrategyConfig", "Steer", "SteerConfig", "HighEntropy", "HighEntropyConfig", "ClipCov", "ClipCovConfig",
    "KlCov", "KlCovConfig", "TwGrpo", "TwGrpoConfig", "EntropyAdvantage", "EntropyAdvantageConfig",
    "EmFt", "EmFtConfig", "em_ft_token_loss",
]
