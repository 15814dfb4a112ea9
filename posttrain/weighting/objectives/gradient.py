"""Gradient-based objective weights (Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (b)
"optimization").

Official code ``yining610/dynamic-reward-weighting`` (commit 238fe655...):
``verl/trainer/ppo/ray_trainer_optimization.py`` (the ``reweight`` block of ``fit``) and
``verl/workers/fsdp_workers.py::compute_gradients``.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from pydantic import Field, FiniteFloat, model_validator

from posttrain.losses.advantages import group_advantages
from posttrain.weighting.objectives._common import (
    ObjectiveConfig,
    ObjectiveStrategy,
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    check_real,
    normalise_simplex,
    normalised_reward_weights,
    objective_means,
    softmax,
)
from posttrain.weighting.protocol import RolloutContext, StrategyEnv, register_strategy

__all__ = ["GradientWeights", "gram_alignment", "GradientConfig", "GradientStrategy"]

logger = logging.getLogger("posttrain.weighting.objectives")

Grads = Union[torch.Tensor, Sequence[torch.Tensor]]


def _grad_list(grads: Grads) -> List[torch.Tensor]:
    if isinstance(grads, torch.Tensor):
        if grads.dim() < 1:
            raise ValueError("per_objective_grads must be [K, P] or a list of K tensors, got a scalar")
        rows = [grads[k] for k in range(grads.shape[0])]
    else:
        rows = list(grads)
    if not rows:
        raise ValueError("per_objective_grads must hold one gradient per objective, got none")
    out = []
    for k, g in enumerate(rows):
        if not isinstance(g, torch.Tensor):
            g = torch.as_tensor(g)
        g = g.detach().reshape(-1)
        if not torch.is_floating_point(g):
            g = g.to(torch.get_default_dtype())
        out.append(g)
    n = out[0].numel()
    if any(g.numel() != n for g in out):
        raise ValueError(
            f"every objective's gradient must have the same number of elements, got {[g.numel() for g in out]}"
        )
    return out


def gram_alignment(grads: Grads) -> List[float]:
    """``s_k = sum_j <g_k, g_j> = <g_k, sum_j g_j>``: row sums of the Gram matrix ``G = g g^T``.

    ``grads`` is ``[K, P]`` or a list of ``K`` tensors (any shape, flattened; same element count). Dot products are
    taken in the gradients' own dtype (as the official ``train_mat @ train_mat.T`` in float32), then returned as
    python floats. ``s_k`` is invariant to flipping the sign of *all* gradients, so loss- vs objective-gradients
    give the same scores. A non-finite gradient, or a Gram matrix that overflows, raises ``ValueError``.
    """
    rows = _grad_list(grads)
    for k, g in enumerate(rows):
        if not torch.isfinite(g).all():
            raise ValueError(f"per_objective_grads[{k}] has non-finite values; objective weighting needs finite inputs")
    k = len(rows)
    gram = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            v = float(torch.dot(rows[i], rows[j].to(rows[i].dtype)).item())
            gram[i][j] = gram[j][i] = v
    s = [math.fsum(row) for row in gram]
    if not all(math.isfinite(v) for v in s):
        raise ValueError("the Gram matrix of per_objective_grads overflowed; rescale the gradients (e.g. use float64)")
    return s


class GradientWeights(ObjectiveWeighting):
    """Exponentiated-gradient objective weights from per-objective policy gradients (DRW method (b)).

    For each objective ``k`` the trainer computes the policy gradient ``g_k`` of the loss built from reward ``r_k``
    alone (its own advantages; one extra backward per objective, restricted to configurable parameters -- the
    official code uses layers 10-25 of Qwen3-8B), flattens it and calls ``update(grads, lr)``:

    * ``s_k = sum_j Gram_kj = g_k . sum_j g_j`` (:func:`gram_alignment`): how much objective ``k``'s gradient agrees
      with the summed gradient;
    * ``s`` is summed over ``accumulation_steps`` calls and then averaged (official ``weight_accumulation_steps``,
      default 1); weights change only on the call that completes an accumulation window;
    * ``log w <- log w + lr * s / regularization_factor`` and ``w <- softmax(log w)``, with ``lr`` the actor's current
      learning rate (official: ``lr_scheduler.get_last_lr()``) and ``regularization_factor = 1e-5``.

    The official code then uses the new ``w`` for the same step's reward ``r = sum_k w_k r_k``.

    Direction: an objective whose gradient aligns with the sum of all gradients (large positive ``s_k``) gains
    weight; one that conflicts with the others (negative ``s_k``) loses weight.

    Args:
        num_objectives: ``K``; may be omitted when ``initial_weights`` is given.
        initial_weights: default uniform (the official config writes ``[0.334, 0.333, 0.333]`` for ``K = 3``).
            Normalised to sum to 1; must be non-negative.
        regularization_factor: default ``1e-5`` (official). Must be ``> 0``.
        accumulation_steps: default 1.
        names: optional objective names.

    Edge cases: a weight that underflows to exactly 0 stays 0 (multiplicative update; the official
    ``min_weight``/``max_weight`` clipping is commented out and not reproduced). ``lr = 0`` leaves ``w`` unchanged.
    The softmax is computed stably, so huge ``lr * s / regularization_factor`` gives a one-hot ``w``, never NaN.
    """

    strategy = "gradient"

    def __init__(
        self,
        num_objectives: Optional[int] = None,
        *,
        initial_weights: Optional[Sequence[float]] = None,
        regularization_factor: float = 1e-5,
        accumulation_steps: int = 1,
        names: Optional[Sequence[str]] = None,
    ):
        if initial_weights is None:
            if num_objectives is None:
                raise ValueError("GradientWeights needs num_objectives or initial_weights")
            k = check_int("num_objectives", num_objectives, low=1)
            self._init_raw: Optional[List[float]] = None
            self._w = [1.0 / k] * k
        else:
            self._init_raw = as_float_list("initial_weights", initial_weights)
            self._w = normalise_simplex("initial_weights", self._init_raw)
            if num_objectives is not None and check_int("num_objectives", num_objectives) != len(self._w):
                raise ValueError(
                    f"initial_weights has {len(self._w)} entries but num_objectives={num_objectives}"
                )
        self.num_objectives = len(self._w)
        self.regularization_factor = check_real("regularization_factor", regularization_factor, low=0.0, low_open=True)
        self.accumulation_steps = check_int("accumulation_steps", accumulation_steps, low=1)
        self.names = check_names(names, self.num_objectives)
        self._scores = [0.0] * self.num_objectives
        self._accumulated = 0
        self.last_scores: Optional[List[float]] = None
        self.step = 0

    def weights(self) -> List[float]:
        return list(self._w)

    def update(self, per_objective_grads: Grads, lr: float) -> List[float]:
        """Accumulate the alignment scores of one step; apply the exponentiated-gradient step when an accumulation
        window completes. Returns the (possibly unchanged) weights."""
        lr = check_real("lr", lr, low=0.0)
        rows = _grad_list(per_objective_grads)
        if len(rows) != self.num_objectives:
            raise ValueError(f"per_objective_grads must hold {self.num_objectives} gradients, got {len(rows)}")
        s = gram_alignment(rows)
        self._scores = [a + b for a, b in zip(self._scores, s)]
        self._accumulated += 1
        self.step += 1
        if self._accumulated >= self.accumulation_steps:
            avg = [v / self._accumulated for v in self._scores]
            self.last_scores = avg
            self._w = self.apply_scores(self._w, avg, lr, self.regularization_factor)
            self._scores = [0.0] * self.num_objectives
            self._accumulated = 0
        return self.weights()

    @staticmethod
    def apply_scores(w: Sequence[float], scores: Sequence[float], lr: float, regularization_factor: float) -> List[float]:
        """``softmax(log w + lr * scores / regularization_factor)`` (zeros stay zero)."""
        logits = [(math.log(wk) if wk > 0 else -math.inf) + lr * sk / regularization_factor for wk, sk in zip(w, scores)]
        if not any(math.isfinite(x) for x in logits):  # cannot happen for a simplex input; defensive
            raise ValueError("all weights are zero")
        return softmax(logits)

    def _config(self) -> Dict[str, Any]:
        return {
            "num_objectives": self.num_objectives,
            "initial_weights": None if self._init_raw is None else list(self._init_raw),
            "regularization_factor": self.regularization_factor,
            "accumulation_steps": self.accumulation_steps,
            "names": self.names,
        }

    def _get_state(self) -> Dict[str, Any]:
        return {
            "weights": list(self._w),
            "accumulated_scores": list(self._scores),
            "accumulated": self._accumulated,
            "last_scores": None if self.last_scores is None else list(self.last_scores),
            "step": self.step,
        }

    def _set_state(self, state: Dict[str, Any]) -> None:
        w = as_float_list("state.weights", state["weights"], self.num_objectives)
        if any(v < 0 for v in w) or abs(math.fsum(w) - 1.0) > 1e-6:
            raise ValueError(f"state.weights must be a simplex, got {w}")
        self._w = w
        self._scores = as_float_list("state.accumulated_scores", state["accumulated_scores"], self.num_objectives)
        self._accumulated = check_int("state.accumulated", state["accumulated"], low=0)
        ls = state.get("last_scores")
        self.last_scores = None if ls is None else as_float_list("state.last_scores", ls, self.num_objectives)
        self.step = check_int("state.step", state["step"], low=0)


# ---------------------------------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------------------------------
_PAPER = "Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (b)"


class GradientConfig(ObjectiveConfig):
    num_objectives: Optional[int] = Field(None, ge=1, description="K, one objective per reward. Default: the "
                                                                  "number of rewards.")
    initial_weights: Optional[List[FiniteFloat]] = Field(
        None, min_length=1,
        description=f"Initial weights, non-negative, normalised to sum to 1 (the official config writes "
                    f"[0.334, 0.333, 0.333]; {_PAPER}). Default: the rewards' weight values, normalised.")
    regularization_factor: FiniteFloat = Field(
        1e-5, gt=0, description=f"Divides the step: log w += lr * s / regularization_factor (official 1e-5 with lr "
                                f"1e-6; {_PAPER}, official ray_trainer_optimization.py, the reweight block of fit).")
    accumulation_steps: int = Field(1, ge=1, description="Steps whose alignment scores are averaged before one "
                                                         "weight update (official weight_accumulation_steps = 1).")
    parameters: Optional[str] = Field(
        None, description="Regular expression searched in the trainable parameters' names: the gradients of the Gram "
                          "matrix are taken over the matching tensors only (the official code uses layers 10-25 of "
                          "Qwen3-8B: fsdp_workers.py::compute_gradients). Default: every trainable parameter (the "
                          "LoRA adapters with LoRA).")

    @model_validator(mode="after")
    def _valid_pattern(self) -> "GradientConfig":
        if self.parameters is not None:
            try:
                re.compile(self.parameters)
            except re.error as exc:
                raise ValueError(f"parameters is not a valid regular expression ({exc}): "
                                 f"{self.parameters!r}") from None
        return self


@register_strategy("objective", "gradient")
class GradientStrategy(ObjectiveStrategy):
    """Exponentiated-gradient objective weights from per-objective policy gradients (Dynamic Reward Weighting,
    Lu et al., arXiv 2509.11452, method (b); official code ``yining610/dynamic-reward-weighting``,
    ``verl/trainer/ppo/ray_trainer_optimization.py`` (the ``reweight`` block of ``fit``) and
    ``verl/workers/fsdp_workers.py::compute_gradients``).

    * ``mix_weights``: the current weights (TRL's mix; superseded by ``reshape_rewards`` in training).
    * ``reshape_rewards``: per objective ``k`` the group advantages ``A_k`` of reward ``k`` alone
      (:func:`~posttrain.losses.advantages.group_advantages`, the run's ``scale_rewards``); the trainer's
      ``ctx.policy_gradients(A_KN)`` returns the ``[K, P]`` gradients of the on-policy surrogate
      (:func:`posttrain.losses.policy.policy_gradient_surrogate`) over the parameters matching
      :attr:`parameter_pattern`; ``update(grads, ctx.learning_rate)`` moves the weights, which form *this* step's
      reward ``sum_k w_k r_k`` (the official order). A non-finite gradient keeps the weights (warning). Logs
      ``reward_weights/<name>``, ``objective_weighting/gradient_score/<name>`` (the alignment score ``s_k``) and
      ``objective_weighting/gradient_norm/<name>`` (``|g_k|``)."""

    Config = GradientConfig
    cite = f"{_PAPER}: log w += lr * (Gram row sums) / regularization_factor, w = softmax(log w)"

    @staticmethod
    def config_defaults(env: StrategyEnv) -> Dict[str, Any]:
        if not env.reward_names:
            return {}
        return {"num_objectives": env.num_objectives, "initial_weights": normalised_reward_weights(env)}

    def __init__(self, config: Optional[GradientConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        self.weighting = GradientWeights(c.num_objectives, initial_weights=c.initial_weights,
                                         regularization_factor=c.regularization_factor,
                                         accumulation_steps=c.accumulation_steps,
                                         names=c.names)
        self._finish_init()
        #: the ``parameters`` regular expression (``None``: every trainable parameter); the trainer's
        #: ``policy_gradients`` service differentiates the parameters for which :meth:`selects` is true
        self.parameter_pattern: Optional[str] = c.parameters
        trainable = self.env.trainable_parameters
        if trainable is not None and not any(self.selects(n) for n in trainable):
            raise ValueError(f"gradient: no trainable parameter matches parameters={self.parameter_pattern!r}")

    def selects(self, parameter_name: str) -> bool:
        """True when the parameter named ``parameter_name`` feeds the Gram matrix (``re.search``)."""
        return self.parameter_pattern is None or re.search(self.parameter_pattern, parameter_name) is not None

    @classmethod
    def warnings(cls, config: GradientConfig, env: StrategyEnv) -> List[str]:
        if env.max_steps is not None and config.accumulation_steps > env.max_steps:
            return [f"accumulation_steps = {config.accumulation_steps} > the run's {env.max_steps} steps: the "
                    f"weights never change"]
        return []

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        objective_means(ctx)  # warns when an objective has no valid sample
        return self.weighting.weights()  # logged in reshape_rewards, once updated

    def reshape_rewards(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        if ctx.mode != "train":
            return None
        rewards_NK = ctx.rewards_NK
        advantages_KN = torch.stack([group_advantages(rewards_NK[:, k].float(), ctx.group_size,
                                                      scale=ctx.scale_rewards)
                                     for k in range(rewards_NK.size(1))])
        grads = ctx.policy_gradients(advantages_KN, parameters=self.parameter_pattern)
        if not bool(torch.isfinite(grads).all()):
            logger.warning("gradient objective weighting: non-finite per-objective gradient; weights not updated")
        else:
            weights = self.weighting.update(grads.cpu().double(), float(ctx.learning_rate))
            names = self.names(ctx)
            self.log_weights(ctx, weights)
            for name, v in zip(names, self.weighting.last_scores or []):
                ctx.log(f"objective_weighting/gradient_score/{name}", float(v))
            for name, v in zip(names, grads.norm(dim=1).tolist()):
                ctx.log(f"objective_weighting/gradient_norm/{name}", float(v))
        ctx.weights_K = tuple(self.weighting.weights())  # the new weights form this step's reward (official order)
        return ctx.mix()
