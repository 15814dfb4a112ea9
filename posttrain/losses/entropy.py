"""Entropy minimisation (Agarwal, Zhang, Yuan, Han, Peng, "The Unreasonable Effectiveness of Entropy Minimization in
LLM Reasoning", arXiv 2505.15134): the pure math of EM-FT, EM-RL and EM-INF.  Torch only.

* EM-FT (paper abstract: "minimizes token-level entropy similarly to instruction finetuning, but on unlabeled
  outputs drawn from the model"): :func:`entropy_loss` / :func:`token_mean_entropy`, the token-mean full-vocabulary
  entropy of sampled completions, differentiated through the entropy.
* EM-RL ("reinforcement learning with negative entropy as the only reward"): :func:`neg_entropy_reward`,
  trajectory-level ``Σ_t log π(y_t|·)`` or token-level ``-Σ_t H_t`` of the rollout policy (the two reward forms as a
  third-party note of the paper states them; the paper body was not available to us).
* EM-INF (inference-time logit optimisation; official code ``shivamag125/EM_PT``
  ``eval/utils/em_inf_utils.py::ent_sample``): :func:`em_inf_adjust_logits`, and the adaptive-temperature variant
  (the paper's Algorithm 1; code ``AdaptiveTemperatureProcessor``): :func:`adaptive_temperature_logits`.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

from .logprobs import DEFAULT_CHUNK_SIZE, selective_logprobs_and_entropy

PAPER = "Agarwal et al., arXiv 2505.15134"
EM_INF_CODE = "shivamag125/EM_PT eval/utils/em_inf_utils.py::ent_sample"
__all__ = ["entropy_loss", "token_mean_entropy", "neg_entropy_reward", "em_inf_adjust_logits",
           "adaptive_temperature_logits", "NEG_ENTROPY_KINDS"]

NEG_ENTROPY_KINDS = ("traj", "token")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")


def token_mean_entropy(entropies_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """``Σ_{i,t} m_{i,t} H_{i,t} / Σ m`` (0 for an empty mask); keeps the entropies' gradient."""
    m = mask_BT.to(entropies_BT.dtype)
    return (entropies_BT * m).sum() / m.sum().clamp(min=1.0)


def entropy_loss(hidden_or_logits: torch.Tensor, lm_head_weight_or_None: Optional[torch.Tensor],
                 mask_BT: torch.Tensor, *, temperature: float = 1.0, bias: Optional[torch.Tensor] = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """EM-FT's loss ``L = (1/Σm) Σ_{i,t} m_{i,t} H(π_θ(·|x_i, y_{i,<t}))`` (arXiv 2505.15134, EM-FT: token-level
    entropy on the model's own outputs, token-mean as in SFT), differentiated through the entropy.

    ``hidden_or_logits``: ``[B, T, H]`` hidden states with ``lm_head_weight_or_None`` ``[V, H]`` or ``[B, T, V]``
    logits with ``None``; position ``t`` is the distribution of the completion token ``t`` (shift before calling).
    Chunked (:func:`~posttrain.losses.selective_logprobs_and_entropy`): the ``[B, T, V]`` fp32 softmax never exists
    for the hidden-state input. An empty mask gives 0 (with a zero gradient)."""
    mask = mask_BT != 0
    labels = torch.zeros(mask.shape, dtype=torch.long, device=hidden_or_logits.device).masked_fill(~mask, -100)
    _, ent = selective_logprobs_and_entropy(hidden_or_logits, lm_head_weight_or_None, labels, bias=bias,
                                            chunk_size=chunk_size, entropy_grad=True, temperature=temperature)
    return token_mean_entropy(ent, mask)


def neg_entropy_reward(logps_BT: Optional[torch.Tensor], entropies_BT: Optional[torch.Tensor], mask_BT: torch.Tensor,
                       *, kind: Literal["traj", "token"] = "traj", normalize_by_length: bool = False) -> torch.Tensor:
    """EM-RL's reward ``[B]`` (arXiv 2505.15134, EM-RL; forms per a third-party note of the paper), detached:

    * ``kind="traj"`` (EM-RL-sequence): ``r = Σ_t m_t log π(y_t|x, y_<t)``, the one-sample estimate of the negative
      trajectory entropy ``-H(π(·|x))``; needs ``logps_BT``;
    * ``kind="token"`` (EM-RL-token): ``r = -Σ_t m_t H(π(·|x, y_<t))``; needs ``entropies_BT``.

    ``normalize_by_length`` [inferred, default off as the stated form]: divide by the valid tokens (a mean instead
    of a sum; both sums favour short outputs). A row with no valid token gets 0. Non-finite input -> ValueError."""
    if kind not in NEG_ENTROPY_KINDS:
        raise ValueError(f"kind must be one of {NEG_ENTROPY_KINDS}, got {kind!r}")
    src = logps_BT if kind == "traj" else entropies_BT
    if src is None:
        raise ValueError(f"kind {kind!r} needs {'logps' if kind == 'traj' else 'entropies'}")
    if src.shape != mask_BT.shape:
        raise ValueError(f"shape {tuple(src.shape)} differs from the mask's {tuple(mask_BT.shape)}")
    valid = mask_BT != 0
    src = src.detach().float().masked_fill(~valid, 0.0)  # padding may hold anything
    m = valid.float()
    _check_finite("logps" if kind == "traj" else "entropies", src)
    total = src.sum(dim=-1)
    reward = total if kind == "traj" else -total
    if normalize_by_length:
        reward = reward / m.sum(dim=-1).clamp(min=1.0)
    return reward


def _entropy_sum(z: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z, dim=-1)
    return -(p * torch.log(p + 1e-12)).sum()


def em_inf_adjust_logits(z_BV: torch.Tensor, *, learning_rate: float = 0.1, n_grad_steps: int = 5,
                         kl_weight: float = 0.001, threshold: float = 0.3,
                         parity: Literal["batch", "row"] = "batch") -> torch.Tensor:
    """EM-INF (arXiv 2505.15134; code ``shivamag125/EM_PT eval/utils/em_inf_utils.py::ent_sample``): optimise one
    decoding step's logits ``z_BV`` to lower the entropy, no model gradient. Returns new float32 logits (detached).

    As the official code: ``z`` in float32 becomes a leaf, ``p0 = softmax(z)`` is fixed, a fresh
    ``Adam([z], lr=learning_rate)``; then ``n_grad_steps`` times: ``H = -Σ p log(p + 1e-12)`` summed over the whole
    batch and vocabulary; stop if ``H < threshold`` (checked before the step); ``loss = kl_weight · KL(p0 ‖ p) + H``
    with the KL ``F.kl_div(log p, p0, reduction="batchmean")``; Adam step. Defaults are ``ent_sample``'s fallbacks
    (lr 0.1, 5 steps, kl_weight 0.001, threshold 0.3).

    ``parity="batch"`` is the official batch-summed entropy (the threshold and the update depend on the batch
    composition); ``parity="row"`` [our choice] optimises each row alone (batch of one each), which is what the
    official code does at batch size 1."""
    if z_BV.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(z_BV.shape)}")
    if parity not in ("batch", "row"):
        raise ValueError(f"parity must be 'batch' or 'row', got {parity!r}")
    if not learning_rate > 0 or n_grad_steps < 0 or kl_weight < 0 or threshold < 0:
        raise ValueError("need learning_rate > 0, n_grad_steps >= 0, kl_weight >= 0, threshold >= 0")
    z0 = z_BV.detach().float()
    _check_finite("logits", z0.masked_fill(torch.isneginf(z0), 0.0))
    if parity == "row" and z0.size(0) > 1:
        return torch.cat([em_inf_adjust_logits(z0[i:i + 1], learning_rate=learning_rate, n_grad_steps=n_grad_steps,
                                               kl_weight=kl_weight, threshold=threshold) for i in range(z0.size(0))])
    with torch.enable_grad():
        z = torch.nn.Parameter(z0.clone())
        p0 = torch.softmax(z0, dim=-1)
        opt = torch.optim.Adam([z], lr=learning_rate)
        for _ in range(int(n_grad_steps)):
            opt.zero_grad()
            h = _entropy_sum(z)
            if h.item() < threshold:
                break
            kl = torch.nn.functional.kl_div(torch.log_softmax(z, dim=-1), p0, reduction="batchmean")
            (kl_weight * kl + h).backward()
            opt.step()
    return z.detach()


def _row_entropy(z: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).nan_to_num(0.0).sum(dim=-1)


def adaptive_temperature_logits(z_BV: torch.Tensor, *, target_ratio: float = 0.85, threshold: float = 1e-5,
                                tau_min: float = 0.01, tau_max: float = 1.0, max_iter: int = 100,
                                tol: float = 0.1) -> torch.Tensor:
    """EM-INF's adaptive-temperature variant (arXiv 2505.15134, Algorithm 1; code ``AdaptiveTemperatureProcessor``),
    per row: ``H0 = H(softmax(z))``, ``H_target = max(threshold, target_ratio · H0)``; if ``H0 > threshold``, bisect
    ``τ`` in ``[tau_min, tau_max]`` for up to ``max_iter`` iterations until ``|H(softmax(z/τ)) - H_target| < tol``
    (entropy too low -> raise ``tau_min``, too high -> lower ``tau_max``); return ``z / τ`` (``τ = 1`` when
    ``H0 <= threshold``). Defaults: the official script's (τ_max 1, τ_min 0.01, 100 iterations, tol 0.1,
    target_ratio 0.85, threshold 1e-5). Temperature scaling keeps the order of the logits."""
    if z_BV.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(z_BV.shape)}")
    if not (0 < tau_min < tau_max) or max_iter < 1 or not tol > 0 or not 0 < target_ratio <= 1 or threshold < 0:
        raise ValueError("need 0 < tau_min < tau_max, max_iter >= 1, tol > 0, 0 < target_ratio <= 1, threshold >= 0")
    z = z_BV.detach().float()
    out = z.clone()
    h0 = _row_entropy(z)
    for i in range(z.size(0)):
        if not float(h0[i]) > threshold:
            continue
        target = max(threshold, target_ratio * float(h0[i]))
        lo, hi = tau_min, tau_max
        tau = (lo + hi) / 2
        for _ in range(int(max_iter)):
            tau = (lo + hi) / 2
            h = float(_row_entropy(z[i:i + 1] / tau)[0])
            if abs(h - target) < tol:
                break
            if h < target:
                lo = tau
            else:
                hi = tau
        out[i] = z[i] / tau
    return out
