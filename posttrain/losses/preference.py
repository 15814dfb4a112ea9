"""Pairwise preference losses of the DPO family (torch only).

All take *sequence* log-probs (summed over completion tokens) of the chosen (y_w) and rejected (y_l) completions
under the policy and the frozen reference, and work on the implicit-reward margin

    Delta = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).

``losses.mean()`` is TRL 1.16 ``DPOTrainer``'s loss for the same ``loss_type`` (tests/test_losses_trl_parity.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and implicit rewards.

    ``loss_type``:

    * ``"sigmoid"`` — DPO, Rafailov et al. 2023, Eq. 7: ``-log sigma(beta * Delta)``. With
      ``label_smoothing = eps > 0`` it is conservative DPO (cDPO, Mitchell 2023): the preference label is assumed
      flipped with probability eps, ``-(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta)``.
      (TRL 1.16's ``sigmoid`` has no label smoothing; with eps = 0 the two agree.)
    * ``"ipo"`` — IPO, Azar et al. 2023, Eq. 17: ``(Delta - 1 / (2 beta))^2`` with beta playing tau's role.
      Pass **length-normalised** log-probs (each sequence sum divided by its number of completion tokens, min 1):
      TRL divides the log-ratios by the token counts before this loss, and so must the caller here.
    * ``"hinge"`` — SLiC-HF's calibration hinge (Zhao et al. 2023) on the DPO margin: ``relu(1 - beta * Delta)``.
    * ``"robust"`` — robust DPO (rDPO, Chowdhury et al. 2024, "Provably Robust DPO"): the loss de-biased for a
      label-flip rate eps
      (``label_smoothing``, must be < 0.5): ``((1 - eps) l(Delta) - eps l(-Delta)) / (1 - 2 eps)`` with
      ``l(x) = -log sigma(beta x)``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[B]`` sequence
            log-probs (the reference ones are treated as constants).
        beta: the KL-regularisation strength beta (> 0).
        weights: optional ``[B]`` per-pair weights (detached here) multiplying the per-pair losses, e.g. MADPO's
            margin-based weights; reduce with ``.mean()`` (TRL's reduction) or ``.sum() / weights.sum()``.
        label_smoothing: eps for ``sigmoid`` (cDPO) and ``robust``; must be 0 for ``ipo`` and ``hinge``.

    Raises:
        ValueError: unknown ``loss_type``, ``beta <= 0``, bad ``label_smoothing``, inputs of different shapes, or
        a NaN / inf in any input (the tensors are named).

    Returns:
        ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` with the rewards
        ``beta * (log pi - log pi_ref)`` detached, as TRL logs them.

    RPO (Liu et al., NeurIPS 2024, arXiv 2405.16436: DPO plus an SFT term on the chosen response; TRL 1.16:
    ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, alpha]``) adds
    ``alpha * rpo_nll_term(chosen_token_logps, chosen_mask)`` to ``losses.mean()``.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing is only defined for loss_type 'sigmoid' and 'robust', not {loss_type!r}")
    tensors = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps,
               "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps}
    if weights is not None:
        tensors["weights"] = weights
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1 or policy_chosen_logps.dim() != 1:
        raise ValueError("dpo_loss needs 1-D [B] inputs of one shape; got " +
                         ", ".join(f"{k}={s}" for k, s in shapes.items()))
    # As policy_loss: a non-finite input is an error naming the tensor, never a silent NaN loss (one sync).
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in tensors.values()])
    if not bool(finite.all()):
        bad = [k for k, ok in zip(tensors, finite.tolist()) if not ok]
        raise ValueError(f"non-finite values in: {', '.join(bad)}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()
    delta = chosen_logratios - rejected_logratios
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) if eps == 0 else (
            -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta))
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # robust
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)

    if weights is not None:
        losses = losses * weights.detach().to(losses.dtype)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def rpo_nll_term(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """RPO's SFT term on the chosen response (Liu et al., "Provably Mitigating Overoptimization in RLHF: Your SFT
    Loss is Implicitly an Adversarial Regularizer", NeurIPS 2024, arXiv 2405.16436; see
    :mod:`posttrain.weighting.pairs.rpo`) as TRL 1.16 computes it (``sft`` loss type): the mean negative
    log-likelihood over all valid chosen tokens of the batch, ``-chosen_per_token_logps[chosen_mask.bool()].mean()``.
    (The paper's term is a per-sequence sum of log-likelihoods, so long responses weigh more there; TRL, and so this,
    averages over tokens.) 0 (not NaN) when the mask is empty.

    Args:
        chosen_token_logps: ``[B, T]`` per-token log-probs of the chosen completions.
        chosen_mask: ``[B, T]`` 1 for completion tokens.
    """
    if chosen_token_logps.shape != chosen_mask.shape:
        raise ValueError(f"shape mismatch: chosen_token_logps={tuple(chosen_token_logps.shape)}, "
                         f"chosen_mask={tuple(chosen_mask.shape)}")
    valid = chosen_mask.bool()
    total = chosen_token_logps.masked_fill(~valid, 0.0).sum()
    return -total / valid.sum().clamp(min=1)
