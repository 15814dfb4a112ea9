"""Per-token KL estimators between the policy and a reference policy (torch only).

With tokens sampled from the policy pi, r = pi_ref(y_t) / pi(y_t) and log r = ref_logps - logps, Schulman (2020),
"Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html) gives three estimators of KL(pi || pi_ref):

* ``k1 = -log r``                 unbiased, high variance, can be negative;
* ``k2 = (log r)^2 / 2``          biased, low variance, always >= 0;
* ``k3 = (r - 1) - log r``        unbiased, low variance, always >= 0. This is the estimator of DeepSeekMath's GRPO
  (Shao et al. 2024, Eq. 4) and the one TRL's ``GRPOTrainer`` uses (``exp(ref - logp) - (ref - logp) - 1``).
"""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_divergence(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs; same shape as the inputs.

    Args:
        logps: log pi(y_t) under the current policy (carries the gradient), e.g. ``[B, T]``.
        ref_logps: log pi_ref(y_t) under the reference policy, same shape (treated as a constant).
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).

    Masking is the caller's job: the result is computed at every position.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    if logps.shape != ref_logps.shape:
        raise ValueError(f"shape mismatch: logps={tuple(logps.shape)}, ref_logps={tuple(ref_logps.shape)}")
    log_r = ref_logps.detach() - logps  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    # expm1 keeps k3 accurate when log_r is tiny (exp(x) - 1 - x would cancel catastrophically in fp32).
    return torch.expm1(log_r) - log_r
