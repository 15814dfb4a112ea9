"""DRA-GRPO: Diversity-aware Reward Adjustment (Chen et al., arXiv 2505.09655, Sec. 3).

Each completion's reward is divided by one plus its graph-cut submodular mutual information with the other
completions, ``R~_i = R_i / (1 + sum_{j != i} s(o_i, o_j))`` with ``s`` the cosine similarity of sentence
embeddings, before the group advantage (official code ``xiwenc1/DRA-GRPO``
``src/open_r1/trl/trainer/grpo_trainer.py::GRPOTrainer._prepare_inputs``: ``diversity_weights = 1 /
(similarity_sums + 1e-6)``; ``rewards = rewards * diversity_weights``).

* :func:`dra_weights` / :func:`dra_adjust_rewards` -- the pure math (precomputed embeddings in, weights out);
* :class:`DRAConfig` / :class:`DiversityRewardAdjustment` -- the ``dra`` sequence strategy (hook
  ``reshape_rewards``): the trainer embeds the completions (``ctx.embed_completions()``), the strategy multiplies
  the scalar reward by the factors; the trainer then recomputes the group advantages from the new reward.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from posttrain.checks import as_float_tensor as _as_float_tensor
from posttrain.checks import check_finite
from posttrain.checks import check_real as _check_real
from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig, StrategyError, register_strategy

__all__ = ["dra_weights", "dra_adjust_rewards", "DRAConfig", "DiversityRewardAdjustment"]


def dra_weights(
    embeddings: Any,
    group_ids: Optional[Any] = None,
    *,
    eps: float = 1e-6,
    min_divisor: float = 0.1,
) -> torch.Tensor:
    """DRA-GRPO diversity factor per completion (Diversity-aware Reward Adjustment, arXiv 2505.09655).

    Official code ``xiwenc1/DRA-GRPO``, ``src/open_r1/trl/trainer/grpo_trainer.py::_prepare_inputs`` l.662-698
    (graph-cut submodular mutual information of ``{i}`` with the rest)::

        e_i <- e_i / ||e_i||;   S = E E^T;   w_i = 1 / (sum_j S_ij + eps)

    so that the adjusted reward is ``R~_i = R_i * w_i = R_i / (1 + SMI_i)`` with ``SMI_i = sum_{j != i} S_ij``
    (the self-similarity ``S_ii = 1`` supplies the 1). Apply ``w`` to the rewards *before* the group advantage.

    Scope (``group_ids``):
      * ``None`` (default) -- similarity over **all rows handed in**: the official code's convention (it uses every
        completion held by the local process, which can span several prompts' groups). To reproduce the code, pass the
        per-device slice.
      * a [N] integer tensor/list -- only pairs with the same id count (the paper's wording "the rest of the group").

    Guards (documented choices):
      * **Negative cosines** (not guarded by the official code): ``sum_j S_ij`` can be <= 0, which makes the official
        factor huge or negative. Here the divisor is clamped: ``w_i = 1 / (max(sum_j S_ij, min_divisor) + eps)``
        (default ``min_divisor = 0.1``, so ``w <= 10``). The result equals the official code whenever
        ``sum_j S_ij >= min_divisor``. ``min_divisor = 1.0`` gives the graph-cut reading with non-negative
        similarity (``w in (0, 1]``, diversity can only discount redundancy).
      * Zero-norm embedding rows are treated as orthogonal to everything; the diagonal is set to exactly 1
        (self-similarity), also removing rounding of ``||e_i||^2``.

    Edge cases: ``N == 0`` -> empty; ``N == 1`` -> ``[1/(1+eps)]``; a singleton group -> ``1/(1+eps)``.
    Returns a detached float tensor [N] (dtype of ``embeddings``; float32 for integer input).
    """
    eps = _check_real("eps", eps)
    min_divisor = _check_real("min_divisor", min_divisor)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if min_divisor <= 0:
        raise ValueError(f"min_divisor must be > 0, got {min_divisor}")
    e_in = _as_float_tensor("embeddings", embeddings)
    if e_in.dim() != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(e_in.shape)}")
    n = e_in.shape[0]
    if n == 0:
        return torch.empty(0, dtype=e_in.dtype, device=e_in.device)
    e = e_in.to(torch.float64)
    # scale rows by their max-abs first so that the norm cannot overflow for huge finite entries
    scale = e.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    e = F.normalize(e / scale, p=2, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(1.0)
    if group_ids is not None:
        g = torch.as_tensor(group_ids, device=e.device)
        if g.dim() != 1 or g.shape[0] != n:
            raise ValueError(f"group_ids must be 1-D with {n} entries (one per embedding row), got shape {tuple(g.shape)}")
        if torch.is_floating_point(g):
            check_finite("group_ids", g)
        sim = sim * (g[:, None] == g[None, :]).to(sim.dtype)
    divisor = sim.sum(dim=1).clamp_min(min_divisor)
    w = 1.0 / (divisor + eps)
    return w.to(e_in.dtype).detach()


def dra_adjust_rewards(
    rewards: Any,
    embeddings: Any,
    group_ids: Optional[Any] = None,
    *,
    eps: float = 1e-6,
    min_divisor: float = 0.1,
) -> torch.Tensor:
    """DRA-adjusted rewards ``R~ = R * dra_weights(embeddings, group_ids)`` (arXiv 2505.09655, official
    ``_prepare_inputs``: ``rewards * weights`` before the group mean/std). ``rewards`` is [N] (the summed reward per
    completion, i.e. after objective weighting). Returns a detached tensor [N]. See :func:`dra_weights`.
    """
    r = _as_float_tensor("rewards", rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
    w = dra_weights(embeddings, group_ids, eps=eps, min_divisor=min_divisor)
    if w.shape[0] != r.shape[0]:
        raise ValueError(f"rewards has {r.shape[0]} entries but embeddings has {w.shape[0]} rows")
    return (r * w.to(device=r.device, dtype=r.dtype)).detach()


# ----------------------------------------------------------------------------------------------------------- strategy
class DRAConfig(StrategyConfig):
    """Arguments of the ``dra`` sequence strategy."""

    eps: float = Field(1e-6, ge=0, allow_inf_nan=False, description=(
        "Added to the divisor, w_i = 1 / (max(sum_j S_ij, min_divisor) + eps); 1e-6 is the official code's "
        "(DRA-GRPO, arXiv 2505.09655, Sec. 3; xiwenc1/DRA-GRPO grpo_trainer.py::GRPOTrainer._prepare_inputs)"))
    min_divisor: float = Field(0.1, gt=0, allow_inf_nan=False, description=(
        "Floor of the similarity sum sum_j S_ij (cosines can be negative, which the official code leaves unguarded "
        "and which makes 1/sum huge or negative); 0.1 caps the factor at 10, 1.0 keeps it in (0, 1] so diversity "
        "only discounts redundancy. Equal to the official factor whenever sum_j S_ij >= min_divisor "
        "(DRA-GRPO, arXiv 2505.09655, Sec. 3: R~ = R / (1 + SMI), graph-cut SMI)"))
    scope: Literal["group", "process"] = Field("group", description=(
        "Which completions a completion is compared with: 'group' -- the other completions of its prompt (the "
        "paper's wording, 'the rest of the group', DRA-GRPO, arXiv 2505.09655, Sec. 3); 'process' -- every "
        "completion one training process holds (several prompts' groups), as the official code computes it "
        "(xiwenc1/DRA-GRPO grpo_trainer.py::GRPOTrainer._prepare_inputs, per device before gather)"))


@register_strategy("sequence", "dra")
class DiversityRewardAdjustment(Strategy):
    """DRA-GRPO: divide each completion's reward by 1 + its summed cosine similarity to the others (arXiv 2505.09655).

    Hook ``reshape_rewards`` (training rollouts only; ``None`` in evaluation, where the trainer applies no sequence
    strategy): ``w = dra_weights(ctx.embed_completions(), group_ids)`` over the ``N`` rows of all processes, with
    ``group_ids = row // group_size`` (``scope: group``) or ``row // (N / num_processes)`` (``scope: process``, the
    official per-device similarity); returns ``ctx.rewards_N * w`` (rows whose reward is NaN stay NaN). Logs
    ``sequence_weighting/dra/mean`` and ``sequence_weighting/dra/min`` (over the ``N`` factors) and
    ``sequence_weighting/dra/group_cv``, the mean over comparison sets of std(w) / mean(w) (population std): a factor
    that is uniform within a group cancels in std-scaled group advantages (``scale_rewards: group``), so a CV near 0
    means DRA barely changes the update (e.g. completions that all embed alike). The trainer recomputes the group
    advantages from the returned reward.
    """

    Config = DRAConfig
    cite = ("DRA-GRPO, Chen et al., arXiv 2505.09655, Sec. 3 (R~ = R / (1 + SMI), graph-cut SMI); "
            "xiwenc1/DRA-GRPO src/open_r1/trl/trainer/grpo_trainer.py::GRPOTrainer._prepare_inputs")

    def set_size(self, num_rows: int, ctx: RolloutContext) -> int:
        """How many consecutive rows form one comparison set (see ``scope``)."""
        if self.config.scope == "group":
            per = int(ctx.group_size)
        else:
            processes = max(int(ctx.num_processes), 1)
            if num_rows % processes:
                raise StrategyError(f"dra: scope 'process' needs the {num_rows} rows to split evenly over "
                                    f"{processes} processes")
            per = num_rows // processes
        if per < 1:
            raise StrategyError(f"dra: cannot form comparison sets of {per} rows")
        return per

    def group_ids(self, num_rows: int, ctx: RolloutContext, device=None) -> torch.Tensor:
        """``[N]`` ids of the rows whose completions are compared with each other (see ``scope``)."""
        return torch.arange(num_rows, device=device) // self.set_size(num_rows, ctx)

    def reshape_rewards(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        if ctx.mode != "train":
            return None
        rewards = ctx.rewards_N
        if rewards is None:
            raise StrategyError("dra: the context carries no scalar reward (rewards_N)")
        embeddings = torch.as_tensor(ctx.embed_completions())
        if embeddings.dim() != 2 or embeddings.shape[0] != rewards.shape[0]:
            raise StrategyError(f"dra: embed_completions() returned shape {tuple(embeddings.shape)}, expected "
                                f"[{rewards.shape[0]}, D] (one row per completion)")
        group_ids = self.group_ids(embeddings.shape[0], ctx, device=embeddings.device)
        w = dra_weights(embeddings, group_ids, eps=self.config.eps, min_divisor=self.config.min_divisor)
        w = w.to(rewards.device, rewards.dtype)
        ctx.log("sequence_weighting/dra/mean", float(w.mean()))
        ctx.log("sequence_weighting/dra/min", float(w.min()))
        ctx.log("sequence_weighting/dra/group_cv", _mean_group_cv(w, self.set_size(w.shape[0], ctx)))
        return rewards * w


def _mean_group_cv(w_N: torch.Tensor, set_size: int) -> float:
    """Mean over the comparison sets (``set_size`` consecutive rows each) of std(w) / mean(w), population std
    (0 for sets of one row); one reduction, one host sync."""
    W = w_N.detach().double().reshape(-1, set_size)
    return float((W.std(dim=1, unbiased=False) / W.mean(dim=1)).mean())
