"""Trust-GRPO's trust-weighted, annealed auxiliary reward (SophiaVL-R1, Fan et al., arXiv 2505.17018).

Official code ``kxfan2002/SophiaVL-R1``, ``verl/workers/reward/custom.py::CustomRewardManager.__call__`` (the
per-group branch ``n > 0``); groups are formed in ``verl/trainer/ray_trainer.py::rank_dynamic_reward_fn``.
Paper: Sec. 3 Eq. 1-2 (mean thinking reward of correct / wrong rollouts), Eq. 3 (trust weight gamma),
Eq. 4 (final reward with the time-annealed factor).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from pydantic import Field, FiniteFloat

from posttrain.checks import check_finite, check_same_shape
from posttrain.weighting.objectives._common import (
    ObjectiveConfig,
    ObjectiveStrategy,
    ObjectiveWeighting,
    check_int,
    check_names,
    check_real,
    objective_means,
)
from posttrain.weighting.protocol import RolloutContext, StrategyEnv, register_strategy

__all__ = ["TrustWeighting", "TrustConfig", "TrustStrategy"]


def _vec(name: str, x: Any) -> torch.Tensor:
    # python lists become float64 (as the official numpy code); float tensors keep their dtype so that a threshold
    # such as 0.9 is compared in the scores' own precision (float32 0.9 >= 0.9 holds in torch, not after a cast)
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    t = t.reshape(-1)
    check_finite(name, t)
    return t


class TrustWeighting(ObjectiveWeighting):
    """Outcome reward plus a trust-discounted, time-annealed auxiliary reward, decided per group of rollouts.

    For one prompt's group of ``G`` rollouts with outcome scores ``a_i`` (rule-based, in ``[0, 1]``) and auxiliary
    scores ``t_i`` (the paper's Thinking Reward Model, in ``[0, 1]``), at global step ``s``:

    1. If every ``a_i >= 0.9`` or every ``a_i <= 0.1`` (a saturated group): ``t_i = 0`` and ``d = 0``
       (the official code logs ``gamma = 0.5`` here).
    2. Otherwise, with ``aux_gate`` (default 0.2, official): ``t_i = 0`` where ``a_i < 0.2`` (the TRM is only queried
       for ``a_i >= 0.2``). ``aux_gate=None`` disables this.
    3. ``correct = a_i >= 0.5``; ``mu_c = mean(t | correct)``, ``mu_w = mean(t | not correct)`` (0 if empty).
    4. Annealing: ``d = alpha * exp(-s / T)`` (``alpha = 0.3``, ``T = 500`` = ``worker.reward.alpha``).
    5. Trust: if ``mu_c < mu_w`` the auxiliary reward is untrusted and ``d *= exp(mu_c - mu_w)`` -- except when no
       rollout is correct, where the official code multiplies by 1 (``if not correct_mask.any(): discount *= 1``);
       we reproduce that. Otherwise trusted (factor 1).
       Discrepancy in the official code: the *logged* ``gamma`` is ``exp(2 (mu_c - mu_w))`` while the *applied*
       factor uses exponent x1; we apply x1 (as the code) and report both (``last_stats``). The paper writes
       ``r_i = r_o,i + alpha * gamma * exp(-s/T) * r_t,i``.
    6. Final reward ``r_i = a_i + d * t_i`` (then ordinary GRPO group advantages).

    ``scale(a, t, step)`` returns ``(d, trust)`` for one group with ``d = alpha * exp(-step/T) * trust``; ``trust``
    is 0 for a saturated group, ``exp(mu_c - mu_w)`` for an untrusted one, else 1.
    ``combine(a, t, group_ids, step)`` applies it group by group and returns the final rewards.

    ``weights()`` returns ``[1, b] / (1 + b)`` with ``b = alpha * exp(-step/T)``: the outcome/auxiliary mix of a
    *trusted* group at the current ``step``. Because ``a + b t = (1 + b) (w_o a + w_t t)`` and a per-group positive
    factor cancels under group std-normalised advantages, this is exactly the effective mix for such groups; it is
    what the trainer logs. ``update(step=None)`` advances (or sets) ``step``. State = config + ``step``.

    Args:
        alpha: 0.3 (official). T: 500 (official). aux_gate: 0.2 (official) or None.
        saturation_high / saturation_low: 0.9 / 0.1. correct_threshold: 0.5.
        names: optional names of the two objectives (outcome, auxiliary).
    """

    strategy = "trust"

    def __init__(
        self,
        alpha: float = 0.3,
        T: float = 500.0,
        *,
        aux_gate: Optional[float] = 0.2,
        saturation_high: float = 0.9,
        saturation_low: float = 0.1,
        correct_threshold: float = 0.5,
        names: Optional[Sequence[str]] = None,
    ):
        self.alpha = check_real("alpha", alpha, low=0.0)
        self.T = check_real("T", T, low=0.0, low_open=True)
        self.aux_gate = None if aux_gate is None else check_real("aux_gate", aux_gate)
        self.saturation_high = check_real("saturation_high", saturation_high)
        self.saturation_low = check_real("saturation_low", saturation_low)
        self.correct_threshold = check_real("correct_threshold", correct_threshold)
        self.num_objectives = 2
        self.names = check_names(names, 2)
        self.step = 0
        self.last_stats: List[Dict[str, Any]] = []

    # -- formulas -------------------------------------------------------------------------------------------------
    def base_discount(self, step: Optional[int] = None) -> float:
        """``alpha * exp(-step / T)``."""
        s = self.step if step is None else check_real("step", step, low=0.0)
        return self.alpha * math.exp(-s / self.T)

    def _saturated(self, a: torch.Tensor) -> bool:
        return bool((a >= self.saturation_high).all() or (a <= self.saturation_low).all())

    def _group(self, a: torch.Tensor, t: torch.Tensor, step: float) -> Tuple[float, float, torch.Tensor, Dict[str, Any]]:
        if a.numel() == 0:
            raise ValueError("a group must hold at least one rollout")
        if self._saturated(a):
            return 0.0, 0.0, torch.zeros_like(t), {"saturated": True, "gamma_logged": 0.5, "mu_correct": None,
                                                   "mu_wrong": None}
        if self.aux_gate is not None:
            t = torch.where(a >= self.aux_gate, t, torch.zeros_like(t))
        correct = a >= self.correct_threshold
        t64 = t.double()
        mu_c = float(t64[correct].mean()) if correct.any() else 0.0
        mu_w = float(t64[~correct].mean()) if (~correct).any() else 0.0
        if mu_c < mu_w:
            trust = 1.0 if not bool(correct.any()) else math.exp(mu_c - mu_w)
            gamma_logged = math.exp(2.0 * (mu_c - mu_w))
        else:
            trust, gamma_logged = 1.0, 1.0
        d = self.base_discount(step) * trust
        return d, trust, t, {"saturated": False, "gamma_logged": gamma_logged, "mu_correct": mu_c, "mu_wrong": mu_w}

    def scale(self, outcome_scores: Any, aux_scores: Any, step: Optional[int] = None) -> Tuple[float, float]:
        """``(d, trust)`` for ONE group (see class docstring). ``step`` defaults to ``self.step``."""
        a, t = _vec("outcome_scores", outcome_scores), _vec("aux_scores", aux_scores)
        check_same_shape(outcome_scores=a, aux_scores=t)
        s = self.step if step is None else check_real("step", step, low=0.0)
        d, trust, _, _ = self._group(a, t, s)
        return d, trust

    @staticmethod
    def _group_ids(group_ids: Any, n: int) -> torch.Tensor:
        if group_ids is None:
            return torch.zeros(n, dtype=torch.long)
        if isinstance(group_ids, torch.Tensor):
            g = group_ids.detach().reshape(-1)
        else:  # any hashable ids (ints, prompt strings, uuids) -> 0..G-1 in order of first appearance
            ids = list(group_ids)
            index: Dict[Any, int] = {}
            g = torch.tensor([index.setdefault(x, len(index)) for x in ids], dtype=torch.long)
        if g.numel() != n:
            raise ValueError(f"group_ids must have one id per rollout ({n}), got {g.numel()}")
        return g

    def combine(self, outcome: Any, aux: Any, group_ids: Any = None, step: Optional[int] = None) -> torch.Tensor:
        """Final rewards ``r_i = a_i + d_g * t_i`` (``t`` gated as in ``scale``) for a batch of groups.
        ``group_ids`` holds one id per rollout (None = one group). Returns a detached 1-D tensor with the dtype of
        ``outcome`` (float64 for python lists); the arithmetic is float64. Per-group statistics are kept in ``last_stats`` for logging."""
        a, t = _vec("outcome", outcome), _vec("aux", aux)
        check_same_shape(outcome=a, aux=t)
        s = self.step if step is None else check_real("step", step, low=0.0)
        gids = self._group_ids(group_ids, a.numel())
        out = a.double().clone()
        stats = []
        for g in torch.unique(gids):
            idx = (gids == g).nonzero(as_tuple=True)[0]
            d, trust, tg, info = self._group(a[idx], t[idx], s)
            out[idx] = out[idx] + d * tg.double()
            stats.append({"group": g.item(), "discount": d, "trust": trust, **info})
        self.last_stats = stats
        return out.to(a.dtype)

    # -- strategy protocol ----------------------------------------------------------------------------------------
    def weights(self) -> List[float]:
        b = self.base_discount()
        return [1.0 / (1.0 + b), b / (1.0 + b)]

    def update(self, step: Optional[int] = None) -> List[float]:
        """Advance ``step`` by one, or set it to ``step``. Returns ``weights()``."""
        self.step = self.step + 1 if step is None else check_int("step", step, low=0)
        return self.weights()

    def _config(self) -> Dict[str, Any]:
        return {
            "alpha": self.alpha,
            "T": self.T,
            "aux_gate": self.aux_gate,
            "saturation_high": self.saturation_high,
            "saturation_low": self.saturation_low,
            "correct_threshold": self.correct_threshold,
            "names": self.names,
        }

    def _get_state(self) -> Dict[str, Any]:
        return {"step": self.step}

    def _set_state(self, state: Dict[str, Any]) -> None:
        self.step = check_int("state.step", state["step"], low=0)


# ---------------------------------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------------------------------
_PAPER = "Trust-GRPO (SophiaVL-R1), Fan et al., arXiv 2505.17018"


class TrustConfig(ObjectiveConfig):
    alpha: FiniteFloat = Field(0.3, ge=0, description=f"alpha of the annealed auxiliary factor alpha exp(-step / T) "
                                                      f"({_PAPER}, Eq. 4; official worker.reward.alpha = 0.3).")
    T: FiniteFloat = Field(500.0, gt=0, description=f"Annealing horizon T in steps ({_PAPER}, Eq. 4; official "
                                                    f"500).")
    aux_gate: Optional[FiniteFloat] = Field(
        0.2, description="Auxiliary scores of rollouts with outcome below this are set to 0 (the official code "
                         "queries the thinking reward model only for outcome >= 0.2: custom.py::"
                         "CustomRewardManager.__call__); null disables the gate.")
    saturation_high: FiniteFloat = Field(0.9, description="A group whose outcomes are all >= this gets no auxiliary "
                                                          "reward (official 0.9).")
    saturation_low: FiniteFloat = Field(0.1, description="A group whose outcomes are all <= this gets no auxiliary "
                                                         "reward (official 0.1).")
    correct_threshold: FiniteFloat = Field(0.5, description=f"Outcome at or above which a rollout counts as correct "
                                                            f"in the trust comparison ({_PAPER}, Eq. 1-2: 0.5).")


@register_strategy("objective", "trust")
class TrustStrategy(ObjectiveStrategy):
    """Trust-weighted, annealed auxiliary reward (Trust-GRPO / SophiaVL-R1, Fan et al., arXiv 2505.17018,
    Eq. 1-4; official code ``kxfan2002/SophiaVL-R1``, ``verl/workers/reward/custom.py::
    CustomRewardManager.__call__``). Needs exactly two rewards: the outcome (first) and the auxiliary (second).

    * ``mix_weights``: ``update(step=ctx.step)``; returns ``weights()``, the effective outcome/auxiliary mix of a
      trusted group at this step (``[1, b] / (1 + b)``, ``b = alpha exp(-step / T)``), for TRL's mix and the log
      ``reward_weights/<name>``.
    * ``reshape_rewards``: the per-group reward ``a_i + d_g t_i`` (:meth:`TrustWeighting.combine`) that no weight
      vector expresses; a missing auxiliary score counts as 0, a missing outcome leaves the reward missing (NaN).
      Logs ``objective_weighting/trust/mean_discount`` (mean ``d_g`` over groups)."""

    Config = TrustConfig
    cite = f"{_PAPER}, Eq. 1-4"

    def __init__(self, config: Optional[TrustConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        k = self.env.num_objectives
        if k and k != 2:
            raise ValueError(f"trust needs exactly 2 rewards (outcome, auxiliary), got {k}")
        self.weighting = TrustWeighting(c.alpha, c.T, aux_gate=c.aux_gate, saturation_high=c.saturation_high,
                                        saturation_low=c.saturation_low, correct_threshold=c.correct_threshold,
                                        names=c.names)
        self._finish_init()

    @classmethod
    def warnings(cls, config: TrustConfig, env: StrategyEnv) -> List[str]:
        if config.alpha == 0:
            return ["alpha = 0: the auxiliary reward is never added (plain GRPO on the outcome reward)"]
        return []

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        objective_means(ctx)  # warns when an objective has no valid sample
        self.weighting.update(step=int(ctx.step))
        weights = self.weighting.weights()
        self.log_weights(ctx, weights)
        return weights

    def reshape_rewards(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        if ctx.mode != "train":
            return None
        rewards_NK = ctx.rewards_NK
        outcome = torch.nan_to_num(rewards_NK[:, 0], nan=0.0)
        aux = torch.nan_to_num(rewards_NK[:, 1], nan=0.0)
        rewards = self.weighting.combine(outcome, aux, ctx.group_ids_N.cpu()).to(rewards_NK.device, torch.float32)
        rewards[torch.isnan(rewards_NK[:, 0])] = torch.nan
        rewards[torch.isnan(rewards_NK).all(dim=1)] = torch.nan
        stats = self.weighting.last_stats
        ctx.log("objective_weighting/trust/mean_discount", sum(s["discount"] for s in stats) / max(len(stats), 1))
        return rewards
