"""REINFORCE++ and REINFORCE++-baseline: global-batch whitening of token advantages (pure torch; never imports TRL).

Hu et al., "REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Normalization" (arXiv 2501.03262,
v9). The paper's claim: prompt-level (local) normalisation as in GRPO is biased; normalising over the *global* batch
is "effectively unbiased". Its advantage (as restated by the verl and RLinf documentation; equation numbers not checked here)::

    A[i, t] = r_i - beta * sum_{t' >= t} KL[i, t']          KL = log pi_old / pi_ref per token (in the reward)
    A_norm  = (A - mean_batch A) / std_batch A                over every valid token of the global batch

Token-level whitening follows verl's ``verl_F.masked_whiten`` (used by both verl estimators) and OpenRLHF's
global normalisation: the statistics are over *valid tokens*, so a sequence weighs by its length.

Variance: **unbiased** (``/ (n - 1)``) by default, as verl's ``masked_var(unbiased=True)`` (the reference code of our parity
tests) and as ``torch.std`` / TRL's ``nanstd`` elsewhere in this package.
OpenRLHF divides by ``n`` (``unbiased=False``). Over the thousands of tokens of a batch the two differ by a factor
``sqrt(n / (n - 1))``, i.e. nothing; they only matter for tiny batches. The epsilon is added to the variance,
``rsqrt(var + eps)`` with ``eps = 1e-8``, as verl (OpenRLHF: ``rsqrt(var.clamp(min=1e-8))``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import (AllReduce, check_choice, check_real, reward_matrix, sequence_rewards, shift_groups, token_kl,
                      token_mask, whiten)

__all__ = ["STATS", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages", "kl_penalized_rewards"]

STATS = ("token", "sequence")
_SINGLETONS = ("zero", "raw")


def _last_valid_onehot(valid: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` bool, True at the last valid position of each row (nowhere for an empty row)."""
    if valid.shape[1] == 0:
        return valid
    pos = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    last = torch.where(valid, pos, torch.full_like(pos, -1)).max(dim=1, keepdim=True).values
    return (pos == last) & valid


def _returns(rtok: torch.Tensor, valid: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reverse (discounted) cumulative sum of per-token rewards over valid tokens.

    ``ret[t] = sum_{t' >= t, valid} gamma^(#valid tokens in (t, t']) * rtok[t']``. Masked positions add nothing and
    carry the running return through undiscounted (for a prefix mask, i.e. single-turn, this is verl's loop).
    """
    if gamma == 1.0:
        return rtok.flip(-1).cumsum(-1).flip(-1)
    out = torch.zeros_like(rtok)
    run = rtok.new_zeros(rtok.shape[0])
    for t in reversed(range(rtok.shape[1])):
        run = torch.where(valid[:, t], rtok[:, t] + gamma * run, run)
        out[:, t] = run
    return out


def kl_penalized_rewards(rewards: torch.Tensor, kl_NT: torch.Tensor, mask_NT: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """``R_i = r_i - beta * sum_t kl[i, t] * m[i, t]``: the sequence-level in-reward KL penalty, same shape as rewards.

    The reward of RLOO (TRL 1.16 ``RLOOTrainer``: k1 ``old_logp - ref_logp`` summed over completion tokens, before
    the leave-one-out baseline) and of every verl outcome estimator with ``use_kl_in_reward`` (``scores =
    token_level_rewards.sum(-1)``, verl ``ray_trainer.py::apply_kl_penalty``). NaN rewards stay NaN (missing).
    ``kl_NT`` is computed by the caller (e.g. ``posttrain.losses.kl_divergence(old_logps, ref_logps, "k1")``).
    """
    r = sequence_rewards(rewards)
    valid = token_mask(mask_NT, r.shape[0])
    kl = token_kl(kl_NT, valid, beta, r.dtype)
    out = r if kl is None else r - float(beta) * kl.sum(dim=1)
    return out.reshape(torch.as_tensor(rewards).shape)


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    mask_NT: torch.Tensor,
    *,
    kl_NT: Optional[torch.Tensor] = None,
    beta: float = 0.0,
    gamma: float = 1.0,
    unbiased: bool = True,
    eps: float = 1e-8,
    all_reduce: AllReduce | None = None,
) -> torch.Tensor:
    """REINFORCE++ token advantages: (discounted) return-to-go of the token rewards, whitened over the global batch.

    Token rewards: the outcome reward ``r_i`` on the last valid token of row i, minus ``beta * kl[i, t]`` on every
    valid token (verl ``apply_kl_penalty``); return-to-go ``G[i, t] = sum_{t' >= t} gamma^(t' - t) rtok[i, t']``
    (with ``gamma = 1``: ``r_i - beta * sum_{t' >= t} kl[i, t']``); then ``A = (G - mean) * rsqrt(var + eps)`` with
    mean/var over all valid tokens of all processes. verl:
    ``verl/trainer/ppo/core_algos.py::compute_reinforce_plus_plus_outcome_advantage`` (+ ``apply_kl_penalty``);
    OpenRLHF ``advantage_estimator="reinforce"``.

    Args:
        rewards: ``[N]`` (or ``[P, G]``, flattened; prompts play no role) outcome rewards. NaN marks an unscorable
            row: its tokens are left out of the statistics and get advantage 0.
        mask_NT: ``[N, T]`` completion mask (``> 0`` = valid token; used as 0/1).
        kl_NT: optional ``[N, T]`` per-token KL of the rollout policy to the reference (the caller's estimator,
            e.g. k1 = ``old_logp - ref_logp``); non-finite values at valid tokens raise ``ValueError``.
        beta: the in-reward KL coefficient (``>= 0``; ``beta != 0`` needs ``kl_NT``).
        gamma: discount in ``[0, 1]`` (verl ``algorithm.gamma``, default 1; OpenRLHF forces 1).
        unbiased: unbiased (``n - 1``, verl, default) or biased (``n``, OpenRLHF) token variance (module docstring).
        eps: added to the variance under the square root (verl: 1e-8).
        all_reduce: optional sum all-reduce (``lambda t: accelerator.reduce(t, "sum")``): mean and variance are then
            computed from the all-reduced sums and counts, identical on every rank.

    Returns:
        Detached ``[N, T]`` advantages, 0 at invalid tokens, never NaN.

    Edge cases (choices):
        * fewer than 2 valid tokens in the (global) batch, including a batch of one single-token sequence: the
          variance is taken as 0 and the output is 0 (each token equals the mean). verl's ``masked_var`` raises
          ``ValueError`` there; we return the finite limit so a degenerate batch never stops a run.
        * a single sequence (several tokens) is fine: without KL every token has the same return, so ``A ~ 0``.
        * all returns equal (e.g. all rewards equal, no KL): ``A ~ 0``, finite: the global mean keeps its rounding
          (about 1e-16), scaled by ``rsqrt(eps)`` to about 1e-12 (exact 0 would need one more all-reduce).
        * a mask with holes (multi-turn observation tokens): masked positions carry the return through
          undiscounted. verl at b178a3c resets the return at every masked position ("Reset after EOS"), which only
          differs for non-prefix masks.
        * +-inf reward: ``ValueError``.
    """
    gamma = check_real("gamma", gamma, low=0.0, high=1.0)
    eps = check_real("eps", eps, low=0.0)
    r = sequence_rewards(rewards)
    valid = token_mask(mask_NT, r.shape[0]) & ~torch.isnan(r).unsqueeze(1)
    kl = token_kl(kl_NT, valid, beta, r.dtype)
    rtok = torch.where(_last_valid_onehot(valid), torch.nan_to_num(r, nan=0.0).unsqueeze(1), 0.0).to(r.dtype)
    if kl is not None:
        rtok = rtok - float(beta) * kl
    returns = _returns(rtok, valid, gamma)
    return whiten(returns, valid, unbiased=unbiased, eps=eps, all_reduce=all_reduce)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor,
    group_size: Optional[int],
    mask_NT: torch.Tensor,
    *,
    kl_NT: Optional[torch.Tensor] = None,
    beta: float = 0.0,
    stats: str = "token",
    singleton: str = "zero",
    unbiased: bool = True,
    eps: float = 1e-8,
    all_reduce: AllReduce | None = None,
) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean (no group std), broadcast to tokens, whiten over the global batch.

    ``C[p, g] = R[p, g] - mean_g R[p, :]``; ``A[i, t] = (C_i - mean) * rsqrt(var + eps) * m[i, t]``, mean/var over
    the valid tokens of all processes (``stats="token"``). Hu et al. 2025 (arXiv 2501.03262), "REINFORCE++ w/
    Baseline" (k > 1 samples per prompt). verl:
    ``verl/trainer/ppo/core_algos.py::compute_reinforce_plus_plus_baseline_outcome_advantage`` (group mean, then
    ``masked_whiten``); OpenRLHF ``advantage_estimator="reinforce_baseline"``. TRL 1.16 has no equivalent
    (``scale_rewards="batch"`` divides by the std of the *raw* rewards and does not re-centre).

    Args:
        rewards: ``[P, G]`` matrix ``rewards_PG`` or flat ``[N]`` with ``group_size``. NaN marks an unscorable row:
            excluded from its group's mean and from the statistics, advantage 0.
        group_size: ``G``; required for ``[N]``, ``None`` or ``G`` for ``[P, G]``.
        mask_NT: ``[N, T]`` completion mask (``> 0`` = valid).
        kl_NT, beta: optional in-reward KL, verl semantics: ``R_i = r_i - beta * sum_t kl[i, t] m[i, t]`` *before*
            the group mean (see :func:`kl_penalized_rewards`). OpenRLHF instead adds ``-beta * kl`` per token after
            the baseline and accumulates it (not reproduced).
        stats: ``"token"`` (default, verl/OpenRLHF: every valid token counts, so longer sequences weigh more) or
            ``"sequence"`` (mean/var over the ``C_i`` of the scorable rows that have at least one valid token).
            With ``"token"`` an all-equal group is **not** 0 after whitening when lengths differ (it gets ``-mean_tok / std_tok``); with ``"sequence"`` and no NaN it is 0, as the ``C`` of every group
            sum to 0.
        singleton: centred value of a row with no scorable sibling (``G = 1`` or all siblings NaN), before
            whitening. ``"zero"`` (default): ``C = 0`` (the mean of one value is itself; OpenRLHF's
            ``r - r.mean(-1)``; same rule as :func:`rloo_advantages`). ``"raw"``: ``C = R`` (verl: group mean 0 for a
            singleton uid), which makes ``G = 1`` equal to REINFORCE++ without KL.
        unbiased, eps, all_reduce: as :func:`reinforce_pp_advantages`.

    Returns:
        Detached ``[N, T]`` advantages, 0 at invalid tokens and unscorable rows, never NaN.

    Edge cases: every group constant in the whole batch: ``C = 0`` everywhere, output 0; fewer than 2 valid tokens
    (or rows, for ``"sequence"``): output 0 (verl raises); +-inf raises ``ValueError``.
    """
    check_choice("stats", stats, STATS)
    check_choice("singleton", singleton, _SINGLETONS)
    eps = check_real("eps", eps, low=0.0)
    R, shape = reward_matrix(rewards, group_size)
    n, g = R.numel(), R.shape[1]
    valid = token_mask(mask_NT, n)
    kl = token_kl(kl_NT, valid, beta, R.dtype)
    if kl is not None:
        R = R - float(beta) * kl.sum(dim=1).view(-1, g)
    ok = ~torch.isnan(R)
    k = ok.sum(dim=1, keepdim=True)
    S = shift_groups(R)  # exact C = 0 for a constant group
    mean = torch.nansum(S, dim=1, keepdim=True) / k.clamp(min=1).to(R.dtype)
    centred = torch.where(k > 1, S - mean, R if singleton == "raw" else torch.zeros_like(R))
    c = torch.where(ok, centred, torch.zeros_like(centred)).reshape(-1)
    valid = valid & ok.reshape(-1, 1)
    x = c.unsqueeze(1).expand_as(valid)
    if stats == "token":
        return whiten(x, valid, unbiased=unbiased, eps=eps, all_reduce=all_reduce)
    rows = valid.any(dim=1)
    a = whiten(c, rows, unbiased=unbiased, eps=eps, all_reduce=all_reduce)
    return torch.where(valid, a.unsqueeze(1), torch.zeros_like(x))
