"""Lagrangian objective weights (Constrained RLHF, Moskovitz et al., "Confronting Reward Model Overoptimization
with Constrained RLHF", ICLR 2024, arXiv 2310.04373).

Official code ``tedmoskovitz/ConstrainedRL4LMs``, ``rl4lms/algorithms/constrained_ppo/constrained_ppo.py::
ConstrainedPPO.train`` (mixed advantages and the multiplier loss/SGD step); config
``scripts/training/task_configs/dialog/gpt2_constrained_ppo.yml``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

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
)
from posttrain.weighting.protocol import RolloutContext, StrategyEnv, register_strategy

__all__ = ["LagrangianWeights", "LagrangianConfig", "LagrangianStrategy"]

KINDS = ("inequality", "equality")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class LagrangianWeights(ObjectiveWeighting):
    """Squashed Lagrange multipliers, one per constrained objective, updated by SGD on the constraint violation.

    Constraints are on each constrained objective's expected return ``J_i`` (the trainer passes the batch mean of
    that reward): ``J_i >= theta_i`` (``kind="inequality"``, multiplier ``lambda_i = sigmoid(lt_i)`` in ``(0, 1)``)
    or ``J_i = theta_i`` (``kind="equality"``, ``lambda_i = tanh(lt_i)`` in ``(-1, 1)``).

    ``update(objective_returns)`` does one step of the official multiplier update:

    * loss ``L = sum_i lambda_i * (J_i - theta_i)`` with the violation detached, so
      ``dL/dlt_i = squash'(lt_i) * (J_i - theta_i)`` (computed analytically, float64);
    * gradient-norm clipping at ``max_grad_norm`` (``torch.nn.utils.clip_grad_norm_`` semantics:
      ``g *= min(1, max_norm / (||g|| + 1e-6))``);
    * SGD with momentum (``torch.optim.SGD`` semantics, dampening 0: ``buf = g`` on the first step, then
      ``buf = momentum * buf + g``; ``lt -= lr * buf``).

    Direction: ``J_i < theta_i`` (constraint violated) raises ``lambda_i``; ``J_i > theta_i`` lowers it.
    The official code steps the multipliers after every PPO minibatch; here, once per ``update`` call -- the trainer
    calls it once per optimisation step with that step's batch means.

    Mixing: the official PPO mixes *normalised advantages*
    ``A = (N - sum_i lambda_i) A_task + sum_i lambda_i A_i`` where ``N`` is the number of constraints and ``A_task``
    is the KL-penalty ("task") value stream. GRPO in posttrain has no separate KL value stream (the KL to the
    reference is a loss term, ``kl_coef``), so the mapping onto per-objective reward weights is a documented choice:

    * one objective may be the *primary* objective: give it threshold ``None``. It takes the task stream's
      coefficient ``N - sum_i lambda_i``; the constrained objectives take ``lambda_i``. ``weights()`` returns
      ``mix() / N`` (sums to 1 exactly; non-negative for ``"inequality"``; for ``"equality"`` a ``lambda_i`` can be
      negative -- a signed weight that pushes ``J_i`` *down* towards ``theta_i`` -- and the primary weight is in
      ``(0, 2)``);
    * without a primary objective the task stream has no counterpart, so ``weights()`` returns
      ``lambda_i / sum_j |lambda_j|`` (for ``"inequality"`` a simplex; for ``"equality"`` signed with unit L1 norm;
      all zeros if every ``lambda_i`` is exactly 0).

    The trainer combines rewards ``r = sum_k w_k r_k`` before group normalisation, which is the same linear mix
    when every objective's advantage is normalised the same way; the official per-stream normalisation before mixing
    is a trainer option, not part of this class.

    Args:
        thresholds: one entry per objective: ``theta_i`` for constrained objectives, ``None`` for (at most one)
            primary objective. At least one constraint. The official dialog config uses ``[0.44, 0.238]``
            (intent, METEOR), the RMs' "proxy points".
        kind: ``"inequality"`` (sigmoid, default) or ``"equality"`` (tanh).
        lr: multiplier SGD learning rate, default **0.1** (the dialog config; the class default in code is 1e-2).
        momentum: default 0.1. max_grad_norm: default 0.5 (0 or ``None`` disables clipping).
        init: ``"normal"`` (``lt ~ N(0, init_std^2)``, official ``init_std = 0.01``, drawn from a
            ``torch.Generator`` seeded with ``seed``), ``"zeros"``, or an explicit list of ``N`` values of ``lt``.
        fixed: keep the multipliers fixed (official ``fixed_lagrange=True``); ``update`` then only advances ``step``.
        names: optional objective names.
    """

    strategy = "lagrangian"

    def __init__(
        self,
        thresholds: Sequence[Optional[float]],
        *,
        kind: str = "inequality",
        lr: float = 0.1,
        momentum: float = 0.1,
        max_grad_norm: Optional[float] = 0.5,
        init: Union[str, Sequence[float]] = "normal",
        init_std: float = 0.01,
        seed: int = 0,
        fixed: bool = False,
        names: Optional[Sequence[str]] = None,
    ):
        thresholds = list(thresholds)
        if not thresholds:
            raise ValueError("thresholds must have one entry per objective")
        self.primary: Optional[int] = None
        self.thresholds: List[Optional[float]] = []
        for k, t in enumerate(thresholds):
            if t is None:
                if self.primary is not None:
                    raise ValueError("at most one objective may be primary (threshold None)")
                self.primary = k
                self.thresholds.append(None)
            else:
                self.thresholds.append(check_real(f"thresholds[{k}]", t))
        self.constrained = [k for k, t in enumerate(self.thresholds) if t is not None]
        if not self.constrained:
            raise ValueError("LagrangianWeights needs at least one constrained objective (a non-None threshold)")
        self.num_objectives = len(self.thresholds)
        self.num_constraints = len(self.constrained)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.lr = check_real("lr", lr, low=0.0)
        self.momentum = check_real("momentum", momentum, low=0.0)
        self.max_grad_norm = None if max_grad_norm in (None, 0) else check_real(
            "max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        self.init_std = check_real("init_std", init_std, low=0.0)
        self.seed = int(seed)
        self.fixed = bool(fixed)
        self.names = check_names(names, self.num_objectives)
        if isinstance(init, str):
            if init == "normal":
                g = torch.Generator().manual_seed(self.seed)
                lt = (torch.randn(self.num_constraints, generator=g, dtype=torch.float64) * self.init_std).tolist()
            elif init == "zeros":
                lt = [0.0] * self.num_constraints
            else:
                raise ValueError(f"init must be 'normal', 'zeros' or a list of {self.num_constraints} values, got {init!r}")
            self.init: Union[str, List[float]] = init
        else:
            lt = as_float_list("init", init, self.num_constraints)
            self.init = list(lt)
        self._lt: List[float] = lt
        self._buf: Optional[List[float]] = None
        self.last_violation: Optional[List[float]] = None
        self.step = 0

    # -- reading --------------------------------------------------------------------------------------------------
    def _squash(self, x: float) -> float:
        return _sigmoid(x) if self.kind == "inequality" else math.tanh(x)

    def _dsquash(self, x: float) -> float:
        if self.kind == "inequality":
            s = _sigmoid(x)
            return s * (1.0 - s)
        t = math.tanh(x)
        return 1.0 - t * t

    def multipliers(self) -> List[float]:
        """``lambda_i = squash(lt_i)``, one per constrained objective (in objective order)."""
        return [self._squash(x) for x in self._lt]

    def raw_multipliers(self) -> List[float]:
        """The unconstrained parameters ``lt_i``."""
        return list(self._lt)

    def mix(self) -> List[float]:
        """Raw mixing coefficients per objective (those of the official mixed advantage): ``N - sum(lambda)`` for the
        primary objective (if any), ``lambda_i`` for constrained ones. Sums to ``N`` with a primary, to
        ``sum(lambda)`` without."""
        lam = self.multipliers()
        out = [0.0] * self.num_objectives
        for k, l in zip(self.constrained, lam):
            out[k] = l
        if self.primary is not None:
            out[self.primary] = self.num_constraints - math.fsum(lam)
        return out

    def weights(self) -> List[float]:
        mix = self.mix()
        if self.primary is not None:
            return [m / self.num_constraints for m in mix]
        norm = math.fsum(abs(m) for m in mix)
        if norm == 0.0:
            return [0.0] * self.num_objectives
        return [m / norm for m in mix]

    # -- updating -------------------------------------------------------------------------------------------------
    def update(self, objective_returns: Sequence[float]) -> List[float]:
        """One multiplier step from the objectives' expected returns ``J`` (length ``num_objectives``; the primary
        objective's entry is ignored). Returns the new ``weights()``."""
        J = as_float_list("objective_returns", objective_returns, self.num_objectives)
        viol = [J[k] - self.thresholds[k] for k in self.constrained]  # type: ignore[operator]
        self.last_violation = viol
        self.step += 1
        if self.fixed:
            return self.weights()
        grad = [self._dsquash(x) * v for x, v in zip(self._lt, viol)]
        if self.max_grad_norm is not None:
            norm = math.sqrt(math.fsum(g * g for g in grad))
            coef = min(1.0, self.max_grad_norm / (norm + 1e-6))
            grad = [g * coef for g in grad]
        if self._buf is None or self.momentum == 0.0:
            buf = list(grad)
        else:
            buf = [self.momentum * b + g for b, g in zip(self._buf, grad)]
        self._buf = buf
        self._lt = [x - self.lr * b for x, b in zip(self._lt, buf)]
        return self.weights()

    # -- state ----------------------------------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "kind": self.kind,
            "lr": self.lr,
            "momentum": self.momentum,
            "max_grad_norm": self.max_grad_norm,
            "init": self.init if isinstance(self.init, str) else list(self.init),
            "init_std": self.init_std,
            "seed": self.seed,
            "fixed": self.fixed,
            "names": self.names,
        }

    def _get_state(self) -> Dict[str, Any]:
        return {
            "raw_multipliers": list(self._lt),
            "momentum_buffer": None if self._buf is None else list(self._buf),
            "last_violation": None if self.last_violation is None else list(self.last_violation),
            "step": self.step,
        }

    def _set_state(self, state: Dict[str, Any]) -> None:
        n = self.num_constraints
        self._lt = as_float_list("state.raw_multipliers", state["raw_multipliers"], n)
        b = state.get("momentum_buffer")
        self._buf = None if b is None else as_float_list("state.momentum_buffer", b, n)
        lv = state.get("last_violation")
        self.last_violation = None if lv is None else as_float_list("state.last_violation", lv, n)
        self.step = check_int("state.step", state["step"], low=0)


# ---------------------------------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------------------------------
_PAPER = "Constrained RLHF, Moskovitz et al., arXiv 2310.04373"


class LagrangianConfig(ObjectiveConfig):
    thresholds: Optional[List[Optional[FiniteFloat]]] = Field(
        None, min_length=1,
        description=f"Required. One entry per reward: the constraint threshold theta_k on its batch-mean reward "
                    f"(J_k >= theta_k, or = theta_k with kind=equality), or null for at most one primary, "
                    f"unconstrained objective ({_PAPER}; the official dialog config uses [0.44, 0.238]).")
    kind: Literal["inequality", "equality"] = Field(
        "inequality", description=f"inequality: lambda = sigmoid(lt) in (0, 1), J_k >= theta_k; equality: lambda = "
                                  f"tanh(lt) in (-1, 1), J_k = theta_k ({_PAPER}; official code "
                                  f"constrained_ppo.py::ConstrainedPPO.train).")
    lr: FiniteFloat = Field(0.1, ge=0, description=f"SGD learning rate of the multipliers (the official dialog "
                                                    f"config's 0.1; {_PAPER}).")
    momentum: FiniteFloat = Field(0.1, ge=0, description=f"SGD momentum of the multipliers (official 0.1; {_PAPER}).")
    max_grad_norm: Optional[FiniteFloat] = Field(
        0.5, ge=0, description=f"Gradient-norm clip of the multiplier step (official 0.5); 0 or null disables "
                               f"({_PAPER}).")
    init: Union[Literal["normal", "zeros"], List[FiniteFloat]] = Field(
        "normal", description=f"Initial unconstrained multipliers lt: normal (N(0, init_std^2), the official "
                              f"initialisation), zeros, or one value per constrained objective ({_PAPER}).")
    init_std: FiniteFloat = Field(0.01, ge=0, description=f"Std of the normal initialisation (official 0.01; "
                                                          f"{_PAPER}).")
    seed: int = Field(0, description="Seed of the normal initialisation (a torch.Generator).")
    fixed: bool = Field(False, description=f"Keep the multipliers at their initial values (the official "
                                           f"fixed_lagrange option; {_PAPER}).")


@register_strategy("objective", "lagrangian")
class LagrangianStrategy(ObjectiveStrategy):
    """Lagrange-multiplier objective weights (Constrained RLHF, Moskovitz et al., ICLR 2024, arXiv 2310.04373;
    official code ``tedmoskovitz/ConstrainedRL4LMs``, ``rl4lms/algorithms/constrained_ppo/constrained_ppo.py::
    ConstrainedPPO.train``).

    ``mix_weights``: this step's mix uses the current multipliers (logged as ``reward_weights/<name>`` and
    ``objective_weighting/lambda/<name>`` per constrained objective); then one multiplier step
    ``update(J)`` with ``J_k`` the batch mean of reward ``k`` (missing samples left out), so the new multipliers
    act from the next step on -- the official code steps them after the policy step. A step where some objective
    has no valid sample keeps the multipliers (warning)."""

    Config = LagrangianConfig
    cite = f"{_PAPER}, the Lagrangian relaxation with squashed multipliers (official ConstrainedPPO.train)"

    def __init__(self, config: Optional[LagrangianConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        if c.thresholds is None:
            raise ValueError("'thresholds' is required: one per reward (the minimum mean reward; null marks at most "
                             "one primary, unconstrained objective)")
        self.weighting = LagrangianWeights(
            c.thresholds, kind=c.kind, lr=c.lr, momentum=c.momentum, max_grad_norm=c.max_grad_norm, init=c.init,
            init_std=c.init_std, seed=c.seed, fixed=c.fixed, names=c.names)
        self._finish_init()

    @classmethod
    def warnings(cls, config: LagrangianConfig, env: StrategyEnv) -> List[str]:
        if config.lr == 0 and not config.fixed:
            return ["lr = 0: the multipliers never move (say fixed: true if constant multipliers are meant)"]
        return []

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        means = objective_means(ctx)
        lagrangian = self.weighting
        weights = lagrangian.weights()
        self.log_weights(ctx, weights)
        names = self.names(ctx)
        for k, lam in zip(lagrangian.constrained, lagrangian.multipliers()):
            ctx.log(f"objective_weighting/lambda/{names[k]}", lam)
        if means is not None:
            lagrangian.update(means)  # official order: the multipliers step after the policy step -> next mix
        return weights
