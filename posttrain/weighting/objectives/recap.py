"""Convergence/instability objective weights in the spirit of RECAP (Phan et al., Meta, arXiv 2510.21978v2,
ACL 2026 Findings): Section 4 Eq. 1, Algorithm 1 and Algorithm 2 (PyTorch pseudocode), Appendix A.2/A.6/A.7.

One class, :class:`RecapWeights` (``ConvergenceInstabilityWeights`` is the same class under its former name);
registered as the objective strategy ``recap`` (alias ``convergence_instability``).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

import torch
from pydantic import Field, FiniteFloat

from posttrain.weighting.objectives._common import (
    ObjectiveConfig,
    ObjectiveStrategy,
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    check_real,
    objective_means,
    softmax,
)
from posttrain.weighting.protocol import RolloutContext, StrategyEnv, register_strategy

__all__ = ["RecapWeights", "ConvergenceInstabilityWeights", "RecapConfig", "RecapStrategy"]


class RecapWeights(ObjectiveWeighting):
    """Short-horizon convergence rate and volatility of each objective -> softmax weights (RECAP-like).

    What RECAP specifies (arXiv 2510.21978v2): for each objective ``k`` keep a FIFO buffer of the last ``2W``
    values of its **loss** ``L_k`` (the scalar mini-batch loss of that objective). With ``mu_k`` the mean of the
    last ``W`` values, ``mu~_k`` the mean of the ``W`` before them and ``sigma_k`` the std of the buffer:

    * convergence rate ``c_k = mu~_k / mu_k`` (> 1 while the loss is still falling, ~1 once saturated);
    * instability (inverse signal-to-noise) ``i_k = sigma_k / (mu_k + mu~_k)``;
    * priority ``s_k = alpha c_k + (1 - alpha) i_k``;
    * ``lambda_k = K softmax_k(s_k / T)`` (mean 1); during warm-up (fewer than ``2W`` values) ``lambda_k = 1``.

    The paper's loss is ``(1/K) sum_k lambda_k L_k`` with ``lambda`` detached; ``update`` is called *before* the
    weighted loss, so a step's own loss counts towards its weight (Alg. 2). ``sigma`` follows the reference code
    (``hist.std(unbiased=True)`` over all ``2W`` values, i.e. around the 2W-window mean) rather than the text
    (deviation from ``mu_k``).

    **Our adaptation (not RECAP).** posttrain's GRPO trainer combines per-objective *rewards*, not per-objective
    losses, so when it feeds e.g. a reward shortfall ``1 - mean reward_k`` (or any other non-negative "distance to
    done" per objective) instead of a loss, this class is a convergence/instability reweighter *in the spirit of*
    RECAP, applied to a different monitored quantity. The paper is also silent on which scalar an "RL surrogate
    loss" is for a 0/1 reward. Feed true per-objective losses to get RECAP proper.

    Guards (NOT in the paper; documented choices): losses that approach 0 or change sign would blow up ``c`` and
    ``i``, so we use magnitudes and ``eps``: ``c = (|mu~| + eps) / (|mu| + eps)`` (0/0 -> 1, "saturated"),
    ``i = sigma / (|mu| + |mu~| + eps)``, and clamp both to ``[0, max_score]`` (default 10). For positive losses
    away from 0 this equals the paper's formulas up to ``eps``.

    ``weights()`` returns ``lambda / K`` (a simplex, the form plotted in the paper's Fig. 11); ``lambdas()`` returns
    the raw ``lambda`` (mean 1), which is what multiplies each loss in the paper. With a reward-combining trainer,
    ``r = sum_k w_k r_k`` with ``w = lambda / K`` is the same mix up to the global factor ``K``.

    Defaults: ``window W = 10``, ``temperature T = 5.0``, ``alpha = 0.5`` (App. A.2/A.7, the configuration the paper
    reports running). Warning: the main text's unweighted ``s = c + i`` with ``T = 5`` is a different setting
    (``alpha = 0.5, T = 5`` equals ``s = c + i`` with ``T = 10``); pass ``alpha=0.5, temperature=2.5`` for the
    main-text one.

    Args:
        num_objectives: ``K``.
        window: ``W`` (the buffer holds ``2W`` values per objective). ``W >= 1``.
        temperature: ``T > 0``; ``T -> inf`` gives uniform weights.
        alpha: in ``[0, 1]``.
        eps: guard, default ``1e-8``.
        max_score: clamp for ``c`` and ``i``, default 10.
        names: optional objective names.
    """

    #: the tag in ``state_dict()``; kept from the class's former name so that existing checkpoints still load
    strategy = "convergence_instability"

    def __init__(
        self,
        num_objectives: int,
        window: int = 10,
        temperature: float = 5.0,
        alpha: float = 0.5,
        eps: float = 1e-8,
        max_score: float = 10.0,
        names: Optional[Sequence[str]] = None,
    ):
        self.num_objectives = check_int("num_objectives", num_objectives, low=1)
        self.window = check_int("window", window, low=1)
        self.temperature = check_real("temperature", temperature, low=0.0, low_open=True)
        self.alpha = check_real("alpha", alpha, low=0.0, high=1.0)
        self.eps = check_real("eps", eps, low=0.0)
        self.max_score = check_real("max_score", max_score, low=0.0, low_open=True)
        self.names = check_names(names, self.num_objectives)
        self._hist: List[Deque[float]] = [deque(maxlen=2 * self.window) for _ in range(self.num_objectives)]
        self._lambdas = [1.0] * self.num_objectives
        self.last_convergence: Optional[List[float]] = None
        self.last_instability: Optional[List[float]] = None
        self.step = 0

    # -- reading --------------------------------------------------------------------------------------------------
    def lambdas(self) -> List[float]:
        """RECAP's ``lambda_k`` (mean 1; all 1 during warm-up)."""
        return list(self._lambdas)

    def weights(self) -> List[float]:
        """``lambda / K`` -- a simplex."""
        k = self.num_objectives
        return [l / k for l in self._lambdas]

    @property
    def warmed_up(self) -> bool:
        return len(self._hist[0]) >= 2 * self.window

    # -- updating -------------------------------------------------------------------------------------------------
    def scores(self) -> Optional[Dict[str, List[float]]]:
        """``{"convergence": c, "instability": i, "priority": s}`` from the current buffers (None in warm-up)."""
        if not self.warmed_up:
            return None
        w, eps, cap = self.window, self.eps, self.max_score
        c_all, i_all, s_all = [], [], []
        for h in self._hist:
            vals = list(h)
            prev, cur = vals[:w], vals[w:]
            mu_prev = math.fsum(prev) / w
            mu = math.fsum(cur) / w
            sigma = float(torch.tensor(vals, dtype=torch.float64).std(unbiased=True)) if len(vals) > 1 else 0.0
            num, den = abs(mu_prev) + eps, abs(mu) + eps
            c = num / den if den > 0 else (1.0 if num == 0 else cap)  # den == 0 only when eps == 0
            denom = abs(mu) + abs(mu_prev) + eps
            i = sigma / denom if denom > 0 else (0.0 if sigma == 0 else cap)
            c = min(max(c, 0.0), cap)
            i = min(max(i, 0.0), cap)
            c_all.append(c)
            i_all.append(i)
            s_all.append(self.alpha * c + (1.0 - self.alpha) * i)
        return {"convergence": c_all, "instability": i_all, "priority": s_all}

    def update(self, losses: Sequence[float]) -> List[float]:
        """Push one value per objective (this step's losses, or the trainer's documented surrogate) and recompute
        the weights. Returns ``weights()``."""
        vals = as_float_list("losses", losses, self.num_objectives)
        for h, v in zip(self._hist, vals):
            h.append(v)
        self.step += 1
        sc = self.scores()
        if sc is None:
            self._lambdas = [1.0] * self.num_objectives
        else:
            self.last_convergence, self.last_instability = sc["convergence"], sc["instability"]
            p = softmax([s / self.temperature for s in sc["priority"]])
            self._lambdas = [self.num_objectives * v for v in p]
        return self.weights()

    # -- state ----------------------------------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {
            "num_objectives": self.num_objectives,
            "window": self.window,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "eps": self.eps,
            "max_score": self.max_score,
            "names": self.names,
        }

    def _get_state(self) -> Dict[str, Any]:
        return {
            "history": [list(h) for h in self._hist],
            "lambdas": list(self._lambdas),
            "last_convergence": self.last_convergence,
            "last_instability": self.last_instability,
            "step": self.step,
        }

    def _set_state(self, state: Dict[str, Any]) -> None:
        hist = state["history"]
        if len(hist) != self.num_objectives:
            raise ValueError(f"state.history must have {self.num_objectives} buffers, got {len(hist)}")
        lens = {len(h) for h in hist}
        if len(lens) > 1 or max(lens) > 2 * self.window:
            raise ValueError(f"state.history buffers must have equal length <= {2 * self.window}")
        self._hist = [deque(as_float_list("state.history", h), maxlen=2 * self.window) for h in hist]
        self._lambdas = as_float_list("state.lambdas", state["lambdas"], self.num_objectives)
        lc, li = state.get("last_convergence"), state.get("last_instability")
        self.last_convergence = None if lc is None else as_float_list("state.last_convergence", lc, self.num_objectives)
        self.last_instability = None if li is None else as_float_list("state.last_instability", li, self.num_objectives)
        self.step = check_int("state.step", state["step"], low=0)


#: the former name of :class:`RecapWeights` (same class)
ConvergenceInstabilityWeights = RecapWeights


# ---------------------------------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------------------------------
_PAPER = "RECAP, Phan et al., arXiv 2510.21978v2"


class RecapConfig(ObjectiveConfig):
    num_objectives: Optional[int] = Field(None, ge=1, description="K, one objective per reward. Default: the "
                                                                  "number of rewards.")
    window: int = Field(10, ge=1, description=f"W: the buffer holds the last 2W values per objective; the "
                                              f"convergence rate compares the means of its two halves ({_PAPER}, "
                                              f"Sec. 4 Eq. 1, App. A.2: W = 10).")
    temperature: FiniteFloat = Field(5.0, gt=0, description=f"T of lambda = K softmax(s / T) ({_PAPER}, Sec. 4 "
                                                            f"Eq. 1, App. A.2: T = 5).")
    alpha: FiniteFloat = Field(0.5, ge=0, le=1, description=f"Priority s = alpha c + (1 - alpha) i of the "
                                                            f"convergence rate c and instability i ({_PAPER}, App. "
                                                            f"A.7: alpha = 0.5).")
    eps: FiniteFloat = Field(1e-8, ge=0, description="Guard added to |mean| in c and i (not in the paper: keeps "
                                                     "them finite when a monitored value approaches 0).")
    max_score: FiniteFloat = Field(10.0, gt=0, description="Clamp of c and i to [0, max_score] (not in the paper; "
                                                           "same purpose as eps).")


@register_strategy("objective", "recap", aliases=("convergence_instability",))
class RecapStrategy(ObjectiveStrategy):
    """Convergence/instability objective weights in the spirit of RECAP (Phan et al., arXiv 2510.21978v2, Sec. 4
    Eq. 1, Algorithm 2), applied to rewards.

    ``mix_weights``: ``update([1 - J_k])`` *before* the mix (Algorithm 2's order: a step's own value counts
    towards its weight), with ``J_k`` the batch mean of reward ``k`` (missing samples left out); the monitored
    "loss" of objective ``k`` is its shortfall from 1 (every shipped reward is at most 1). This is our adaptation
    of RECAP to per-objective rewards, not RECAP's per-objective losses. A step where some objective has no valid
    sample keeps the weights (warning). Logs ``reward_weights/<name>``."""

    Config = RecapConfig
    cite = f"{_PAPER}, Sec. 4 Eq. 1 and Algorithm 2 (adapted to reward shortfalls)"

    @staticmethod
    def config_defaults(env: StrategyEnv) -> Dict[str, Any]:
        return {"num_objectives": env.num_objectives} if env.reward_names else {}

    def __init__(self, config: Optional[RecapConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        if c.num_objectives is None:
            raise ValueError("'num_objectives' is required when the run's rewards are unknown")
        self.weighting = RecapWeights(c.num_objectives, window=c.window, temperature=c.temperature, alpha=c.alpha,
                                      eps=c.eps, max_score=c.max_score, names=c.names)
        self._finish_init()

    @classmethod
    def warnings(cls, config: RecapConfig, env: StrategyEnv) -> List[str]:
        if env.max_steps is not None and 2 * config.window > env.max_steps:
            return [f"the warm-up (2 * window = {2 * config.window} steps) outlasts the run ({env.max_steps} "
                    f"steps): the weights stay uniform"]
        return []

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        means = objective_means(ctx)
        if means is not None:
            self.weighting.update([1.0 - m for m in means])  # Algorithm 2: update before the weighted combination
        weights = self.weighting.weights()
        self.log_weights(ctx, weights)
        return weights
