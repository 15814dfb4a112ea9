"""Hypervolume-guided objective weighting (Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (a)
"hypervolume-guided weight adaptation"), with the exact hypervolume math it rests on.

Official code ``yining610/dynamic-reward-weighting`` (commit 238fe655...):
``verl/trainer/ppo/ray_trainer_vanilla.py::VanillaRayPPOTrainer.fit`` and
``verl/utils/reward_score/dynamic_math/hypervolumn_contribution.py::compute_score``.

Contents: the pure functions :func:`hypervolume`, :func:`hypervolume_contribution`, :func:`pareto_front` (exact HV,
HV contribution and Pareto filtering for any number of objectives; also used by the objective-weighting comparison
script) and :func:`meta_reward_from_hvc`; :class:`HypervolumeWeights` (the method's state: reference point, front,
meta-reward); :class:`HypervolumeConfig` and :class:`HypervolumeStrategy` (the ``hypervolume`` objective strategy).

Hypervolume.

Definition. For points ``p_1..p_n`` and a reference point ``r`` in ``d`` objectives, each objective either maximised
or minimised, ``HV = Lebesgue measure of  U_i { x : x is between r and p_i in every objective }``.
Minimised objectives are sign-flipped (as the official code's ``_to_maximization``), so internally every point becomes
an origin-anchored box with side lengths ``q_ik = p_ik - r_k`` (maximised) or ``r_k - p_ik`` (minimised).
A point that is not *strictly* better than ``r`` in every objective (some ``q_ik <= 0``) spans no volume and
contributes nothing.

Difference from the official code (documented choice): the official recursive slicing returns ``max(p) - r`` in the
1-D base case even when that is negative, so a point worse than the reference in the last objective gets a *negative*
volume; their ``compute_score`` therefore tolerates a negative contribution when the buffer holds only the reference
point and raises otherwise, and clips at 0. With the standard definition used here HV is never negative and a
contribution is never negative, so the two agree after clipping for a single point and ours stays correct (instead of
raising) when later points lie partly outside the reference box.

Algorithm. WFG (While, Bradstreet & Barone, IEEE TEVC 2012): ``HV(S) = sum_i exclusive(p_i, S[i+1:])`` with
``exclusive(p, T) = prod(p) - HV(nondominated(min(T, p)))`` (the "limit set"), recursing until 2-D, where an
``O(n log n)`` staircase sweep is exact. Points are pre-filtered to the non-dominated set (duplicates once). All
arithmetic is float64 numpy. 100 points x 5 objectives on a concave front take well under a second.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field, FiniteFloat, StrictBool

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
)
from posttrain.weighting.protocol import RolloutContext, StepEndContext, StrategyEnv, register_strategy

__all__ = ["hypervolume", "hypervolume_contribution", "pareto_front", "meta_reward_from_hvc", "HypervolumeWeights",
           "HypervolumeConfig", "HypervolumeStrategy"]

logger = logging.getLogger("posttrain.weighting.objectives")


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def _as_matrix(name: str, x: Any, d: Optional[int] = None) -> np.ndarray:
    """Points -> float64 array [n, d]. Accepts a list of sequences, a numpy array or a tensor. Empty -> [0, d]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of points (each a sequence of reals), got {x!r}") from None
    if arr.size == 0:
        return np.zeros((0, d if d is not None else 0))
    if arr.ndim == 1:  # a single point -- or, with one objective, a flat list of n values
        arr = arr[:, None] if d == 1 else arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_points, num_objectives], got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have {d} objective value(s) per point (as ref), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s); hypervolume needs finite inputs")
    return arr


def _as_ref(ref: Any) -> np.ndarray:
    if isinstance(ref, torch.Tensor):
        ref = ref.detach().to("cpu", torch.float64).numpy()
    try:
        r = np.asarray(ref, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"ref must be a sequence of reals, got {ref!r}") from None
    if r.size == 0:
        raise ValueError("ref must have at least one objective")
    if not np.isfinite(r).all():
        raise ValueError(f"ref has {int((~np.isfinite(r)).sum())} non-finite value(s); hypervolume needs finite inputs")
    return r


def _signs(maximize: Optional[Sequence[bool]], d: int) -> np.ndarray:
    """+1 for maximised objectives, -1 for minimised ones. ``None`` means every objective is maximised."""
    if maximize is None:
        return np.ones(d)
    if isinstance(maximize, (bool, np.bool_)):
        return np.full(d, 1.0 if maximize else -1.0)
    m = list(maximize)
    if len(m) != d:
        raise ValueError(f"maximize must have {d} entries (one per objective), got {len(m)}")
    for v in m:
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"maximize must be a list of bools, got {maximize!r}")
    return np.array([1.0 if v else -1.0 for v in m])


def _boxes(points: np.ndarray, ref: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Side lengths of the origin-anchored boxes of the points strictly inside the reference box."""
    q = (points - ref[None, :]) * signs[None, :]
    return q[(q > 0).all(axis=1)]


def _nondominated_mask(q: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``q`` (all objectives maximised) that are non-dominated; duplicates kept once
    (the first occurrence). ``O(n^2 d)`` vectorised."""
    n = q.shape[0]
    if n <= 1:
        return np.ones(n, dtype=bool)
    ge = (q[:, None, :] >= q[None, :, :]).all(axis=2)  # ge[j, i]: q_j weakly dominates q_i
    eq = ge & ge.T                                        # identical points
    strictly = ge & ~eq                                   # q_j dominates q_i
    dominated = strictly.any(axis=0)
    earlier_duplicate = np.triu(eq, k=1).any(axis=0)      # exists j < i with q_j == q_i
    return ~(dominated | earlier_duplicate)


# ----------------------------------------------------------------------------------------------------------------------
# volume of a union of origin-anchored boxes
# ----------------------------------------------------------------------------------------------------------------------
def _hv2d(q: np.ndarray) -> float:
    """Area of a union of boxes ``[0, x_i] x [0, y_i]`` (staircase sweep, any input order/domination)."""
    order = np.lexsort((-q[:, 1], -q[:, 0]))  # x descending, then y descending
    area, ymax = 0.0, 0.0
    for x, y in q[order]:
        if y > ymax:
            area += x * (y - ymax)
            ymax = y
    return float(area)


def _hv_nd(q: np.ndarray) -> float:
    """Volume of the union of boxes ``[0, q_i]``; ``q`` must be non-dominated with positive entries."""
    n, d = q.shape
    if n == 0:
        return 0.0
    if n == 1:
        return float(np.prod(q[0]))
    if d == 1:
        return float(q.max())
    if d == 2:
        return _hv2d(q)
    q = q[np.argsort(-q[:, -1], kind="stable")]  # WFG: decreasing in the last objective
    total = 0.0
    for i in range(n):
        p = q[i]
        excl = float(np.prod(p))
        if i + 1 < n:
            limited = np.minimum(q[i + 1:], p[None, :])
            limited = limited[_nondominated_mask(limited)]
            excl -= _hv_nd(limited)
        total += excl
    return total


def _hv_boxes(q: np.ndarray) -> float:
    if q.shape[0] == 0:
        return 0.0
    return _hv_nd(q[_nondominated_mask(q)])


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------
def hypervolume(points: Any, ref: Any, maximize: Optional[Sequence[bool]] = None) -> float:
    """Exact hypervolume of ``points`` with respect to ``ref``.

    Args:
        points: ``[n, d]`` list of sequences / array / tensor (``n`` may be 0). Dominated, duplicate and
            out-of-box points are allowed (they add nothing).
        ref: the reference point, ``d`` values (DRW: the initial model's evaluation).
        maximize: ``d`` bools, ``True`` = larger is better. ``None`` = all maximised. Minimised objectives are
            sign-flipped, as the official code does.

    Returns:
        ``float >= 0``; ``0.0`` for an empty set or when no point is strictly better than ``ref`` in every objective.

    Raises:
        ValueError: non-finite values (naming ``points``/``ref``), shape mismatch, bad ``maximize``.
    """
    r = _as_ref(ref)
    p = _as_matrix("points", points, r.size)
    return _hv_boxes(_boxes(p, r, _signs(maximize, r.size)))


def hypervolume_contribution(front: Any, point: Any, ref: Any, maximize: Optional[Sequence[bool]] = None) -> float:
    """``HV(front U {point}) - HV(front)``, computed exactly as the exclusive volume of ``point``:
    ``prod(q) - HV(nondominated(min(front, q)))`` in box coordinates (WFG's ``exclhv``), so it is ``>= 0`` by
    construction. ``0.0`` if ``point`` is weakly dominated by ``front`` or not strictly better than ``ref`` in every
    objective. ``front`` may be empty (then this is the volume of the box between ``ref`` and ``point``)."""
    r = _as_ref(ref)
    signs = _signs(maximize, r.size)
    f = _as_matrix("front", front, r.size)
    pt = _as_matrix("point", point, r.size)
    if pt.shape[0] != 1:
        raise ValueError(f"point must be a single point with {r.size} objective value(s), got shape {pt.shape}")
    qp = _boxes(pt, r, signs)
    if qp.shape[0] == 0:
        return 0.0
    qp = qp[0]
    qf = _boxes(f, r, signs)
    if qf.shape[0] == 0:
        return float(np.prod(qp))
    limited = np.minimum(qf, qp[None, :])
    return max(0.0, float(np.prod(qp)) - _hv_boxes(limited))


def pareto_front(points: Any, maximize: Optional[Sequence[bool]] = None) -> List[Tuple[float, ...]]:
    """The non-dominated subset of ``points`` (no reference point involved), as tuples in input order; identical
    points are kept once (first occurrence). ``p`` dominates ``q`` if it is at least as good in every objective and
    strictly better in one."""
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(points, dtype=np.float64) if len(points) else np.zeros((0, 0))
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None, :]
    arr = _as_matrix("points", arr)
    signs = _signs(maximize, arr.shape[1])
    keep = _nondominated_mask(arr * signs[None, :])
    return [tuple(float(v) for v in row) for row in arr[keep]]


# ----------------------------------------------------------------------------------------------------------------------
# the method: meta-reward from the hypervolume contribution
# ----------------------------------------------------------------------------------------------------------------------
APPLY_TO = ("reward", "advantage")


def meta_reward_from_hvc(hvc: float) -> float:
    """``m = 0.5 + 1.5 * tanh(max(hvc, 0))`` -- the official ``compute_score`` mapping; ``m`` lies in ``[0.5, 2)``.
    ``hvc = 0`` (no improvement of the front) gives ``m = 0.5``: a *penalty* relative to the initial ``m = 1``."""
    return 0.5 + 1.5 * math.tanh(max(float(hvc), 0.0))


class HypervolumeWeights(ObjectiveWeighting):
    """Fixed base weights times a hypervolume-driven meta-reward ``m`` (DRW method (a), arXiv 2509.11452).

    Per training step the trainer builds ``r = m * sum_k w_k r_k`` (``apply_to="reward"``) or multiplies the
    normalised advantages by ``m`` (``apply_to="advantage"``, default; see the caveat below). ``w`` are the fixed
    base weights (``weights()``), ``m`` is ``meta_reward()``.

    Every ``eval_every`` steps the trainer evaluates the policy on held-out prompts, giving the performance vector
    ``p_t`` (one mean value per objective, in the objective's own units; ``maximize[k]`` says which direction is
    better, e.g. ``[True, False, True]`` for accuracy / token count / format), and calls ``update(p_t)``:

    1. ``buffer[0]`` is the reference point: the initial model's evaluation (``set_reference`` or ``reference=``;
       if neither was given, the first ``update`` call records its argument as the reference and returns ``m = 1``).
    2. ``HVC = HV(buffer[1:] U {p_t}; ref) - HV(buffer[1:]; ref)`` (exact, minimised objectives sign-flipped),
       clipped at ``>= 0``. The official code allows a negative raw HVC only while the buffer holds just the
       reference point (its HV goes negative for points worse than the reference) and raises otherwise; with the
       exact HV of :func:`hypervolume` a negative HVC cannot occur, so that rule reduces to the clip.
    3. ``m = 0.5 + 1.5 tanh(HVC)`` (``[0.5, 2)``). ``m`` starts at 1; the value computed after step ``t`` is used
       from step ``t + 1`` on, until the next evaluation (the official code evaluates after every actor update).
    4. If ``HVC > 0``, ``p_t`` joins the buffer, and buffer points it dominates are dropped (the official code keeps
       them; dominated points add no volume, so every HVC is unchanged -- the buffer just stays non-dominated).

    Args:
        weights: fixed base weights, non-negative, must sum to 1 within ``1e-6`` (official config assertion).
        maximize: one bool per objective.
        eval_every: evaluation cadence in training steps, default **5**. *Documented choice*: the official trainer
            validates (and updates the buffer) after *every* actor update and runs its separate test set every
            ``test_freq = 5`` steps; we default to 5 because a held-out evaluation per step is costly at our scale.
            ``eval_every=1`` reproduces the official cadence. The trainer reads it (``should_evaluate(step)``).
        apply_to: ``"advantage"`` (default) or ``"reward"``. Read by the trainer.
        reference: optional initial-model performance vector (``buffer[0]``).
        names: optional objective names.

    Caveat on ``apply_to`` (our reading, not stated in the paper): the official code multiplies the *reward* by ``m``
    before computing advantages. With GRPO's group std-normalised advantages ``(r - mean) / (std + eps)`` a batch-uniform positive
    ``m`` cancels (up to ``eps``), so in the paper's GRPO runs it is essentially a no-op; it only acts for
    REINFORCE / RLOO-style or un-normalised advantages. ``apply_to="advantage"`` multiplies the advantages *after*
    normalisation, where a uniform factor does act: it scales the policy-gradient step (and its weight relative to
    a KL penalty, which it does not multiply). Note that Adam partly adapts to a persistent gradient scale, so the
    effect is strongest right after ``m`` changes. ``"reward"`` reproduces the official placement.

    Edge cases: a ``p_t`` equal to or dominated by a buffer point, or not strictly better than the reference in
    every objective, has ``HVC = 0`` -> ``m = 0.5``. Non-finite performance values raise ``ValueError``.
    """

    strategy = "hypervolume"

    def __init__(
        self,
        weights: Sequence[float],
        maximize: Sequence[bool],
        *,
        eval_every: int = 5,
        apply_to: str = "advantage",
        reference: Optional[Sequence[float]] = None,
        names: Optional[Sequence[str]] = None,
    ):
        self._raw = as_float_list("weights", weights)
        self._w = normalise_simplex("weights", self._raw, tol=1e-6)
        self.num_objectives = len(self._w)
        if isinstance(maximize, bool):
            raise ValueError("maximize must be a list of bools, one per objective")
        _signs(maximize, self.num_objectives)  # validates length and types
        self.maximize = [bool(m) for m in maximize]
        self.eval_every = check_int("eval_every", eval_every, low=1)
        if apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}, got {apply_to!r}")
        self.apply_to = apply_to
        self.names = check_names(names, self.num_objectives)
        self._init_reference = None if reference is None else as_float_list("reference", reference, self.num_objectives)
        self.buffer: List[List[float]] = [] if self._init_reference is None else [list(self._init_reference)]
        self._meta = 1.0
        self.last_hvc: Optional[float] = None
        self.step = 0

    # -- reading --------------------------------------------------------------------------------------------------
    def weights(self) -> List[float]:
        """The fixed base weights (sum to 1); the meta-reward is separate (``meta_reward()``)."""
        return list(self._w)

    def meta_reward(self) -> float:
        """The factor ``m`` to apply at the current training step (1.0 until the first evaluation)."""
        return self._meta

    def reference(self) -> Optional[List[float]]:
        return list(self.buffer[0]) if self.buffer else None

    def front(self) -> List[List[float]]:
        """The non-dominated points found so far (``buffer[1:]``), in the objectives' own units."""
        return [list(p) for p in self.buffer[1:]]

    def front_hypervolume(self) -> float:
        """``HV(buffer[1:]; buffer[0])`` -- a progress metric worth logging."""
        if not self.buffer:
            return 0.0
        return hypervolume(self.buffer[1:], self.buffer[0], self.maximize)

    def should_evaluate(self, global_step: int) -> bool:
        """True when ``global_step`` (1-based training step just finished) is an evaluation step."""
        return int(global_step) % self.eval_every == 0

    # -- updating -------------------------------------------------------------------------------------------------
    def set_reference(self, performance: Sequence[float]) -> None:
        """Set ``buffer[0]`` (the initial model's evaluation); clears any front collected so far."""
        self.buffer = [as_float_list("performance", performance, self.num_objectives)]

    def update(self, performance: Sequence[float]) -> float:
        """Record the evaluation ``p_t``; returns the new meta-reward ``m`` (used from the next step on)."""
        p = as_float_list("performance", performance, self.num_objectives)
        if not self.buffer:
            self.buffer = [p]
            return self._meta
        ref, front = self.buffer[0], self.buffer[1:]
        hvc = max(0.0, hypervolume_contribution(front, p, ref, self.maximize))
        self.last_hvc = hvc
        self._meta = meta_reward_from_hvc(hvc)
        if hvc > 0.0:
            signs = np.array([1.0 if m else -1.0 for m in self.maximize])
            qp = np.asarray(p) * signs
            kept = [q for q in front if not (np.asarray(q) * signs <= qp).all()]
            self.buffer = [ref] + kept + [p]
        self.step += 1
        return self._meta

    # -- state ----------------------------------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {
            "weights": list(self._raw),
            "maximize": list(self.maximize),
            "eval_every": self.eval_every,
            "apply_to": self.apply_to,
            "reference": None if self._init_reference is None else list(self._init_reference),
            "names": self.names,
        }

    def _get_state(self) -> Dict[str, Any]:
        return {
            "buffer": [list(p) for p in self.buffer],
            "meta_reward": self._meta,
            "last_hvc": self.last_hvc,
            "step": self.step,
        }

    def _set_state(self, state: Dict[str, Any]) -> None:
        buffer = [as_float_list("state.buffer", p, self.num_objectives) for p in state["buffer"]]
        meta = check_real("state.meta_reward", state["meta_reward"], low=0.0)
        last = state.get("last_hvc")
        self.buffer = buffer
        self._meta = meta
        self.last_hvc = None if last is None else check_real("state.last_hvc", last, low=0.0)
        self.step = check_int("state.step", state["step"], low=0)


# ----------------------------------------------------------------------------------------------------------------------
# strategy
# ----------------------------------------------------------------------------------------------------------------------
_PAPER = "Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (a)"


class HypervolumeConfig(ObjectiveConfig):
    weights: Optional[List[FiniteFloat]] = Field(
        None, min_length=1,
        description=f"Fixed base weights, one per reward, non-negative and summing to 1 within 1e-6 (the official "
                    f"config asserts it; {_PAPER}). Default: the rewards' weight values, normalised.")
    maximize: Optional[List[StrictBool]] = Field(
        None, min_length=1,
        description="Per objective, true when larger is better (minimised objectives are sign-flipped, as the "
                    "official hypervolumn_contribution.py::_to_maximization). Default: all true (every shipped "
                    "reward is higher-is-better).")
    eval_every: int = Field(5, ge=1,
                            description=f"Held-out evaluation cadence in optimizer steps; eval_every = 1 is the "
                                        f"official cadence (validation after every actor update; {_PAPER}, official "
                                        f"ray_trainer_vanilla.py::VanillaRayPPOTrainer.fit). 5 is our default: an "
                                        f"evaluation per step is costly at our scale.")
    apply_to: Literal["advantage", "reward"] = Field(
        "advantage",
        description="Where the meta-reward m multiplies: reward (the official placement, r = m sum_k w_k r_k; a "
                    "batch-uniform factor cancels under group/batch std-normalised advantages up to 1e-4) or "
                    "advantage (after normalisation, where it scales the policy-gradient step; our default).")
    reference: Optional[List[FiniteFloat]] = Field(
        None, description=f"The initial model's per-objective performance (the reference point, buffer[0]; "
                          f"{_PAPER}). Default: measured by a held-out evaluation at the first training step.")
    eval_prompts: int = Field(32, ge=1, strict=True,
                              description="Held-out prompts per evaluation: the first N of data.eval, completed "
                                          "greedily and scored by every reward (read by the trainer's "
                                          "evaluation).")
    eval_max_new_tokens: Optional[int] = Field(
        None, ge=1, strict=True,
        description="Greedy completion length of the evaluation. Default: train.max_completion_length.")


@register_strategy("objective", "hypervolume")
class HypervolumeStrategy(ObjectiveStrategy):
    """Hypervolume-guided meta-reward on fixed base weights (Dynamic Reward Weighting, Lu et al., arXiv 2509.11452,
    method (a); official code ``yining610/dynamic-reward-weighting``,
    ``verl/trainer/ppo/ray_trainer_vanilla.py::VanillaRayPPOTrainer.fit`` and
    ``verl/utils/reward_score/dynamic_math/hypervolumn_contribution.py::compute_score``).

    * ``mix_weights``: at the first training step the initial model is evaluated on held-out prompts
      (``ctx.evaluate_objectives()``) and becomes the reference point (logged as
      ``objective_eval_reference/<name>``). Returns the base weights, times the meta-reward ``m`` when
      ``apply_to: reward``; logs ``reward_weights/<name>`` (the base weights) and ``objective_weighting/meta_reward``.
    * ``adjust_advantages`` (``apply_to: advantage``): the advantages times ``m``.
    * ``on_step_end``: every ``eval_every`` optimizer steps, ``update(ctx.evaluate_objectives())``, whose
      hypervolume contribution gives the ``m`` used from the next step on; logs ``objective_eval/<name>``,
      ``objective_weighting/hvc`` and ``objective_weighting/front_hypervolume``.

    The trainer's evaluation reads :attr:`eval_prompts` and :attr:`eval_max_new_tokens`."""

    Config = HypervolumeConfig
    cite = f"{_PAPER}: m = 0.5 + 1.5 tanh(HVC) (official hypervolumn_contribution.py::compute_score)"

    @staticmethod
    def config_defaults(env: StrategyEnv) -> Dict[str, Any]:
        if not env.reward_names:
            return {}
        return {"weights": normalised_reward_weights(env), "maximize": [True] * env.num_objectives}

    def __init__(self, config: Optional[HypervolumeConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        c = self.config
        if c.weights is None or c.maximize is None:
            raise ValueError("'weights' and 'maximize' are required when the run's rewards are unknown")
        self.weighting = HypervolumeWeights(c.weights, c.maximize, eval_every=c.eval_every, apply_to=c.apply_to,
                                            reference=c.reference, names=c.names)
        self._finish_init()
        if not self.env.has_eval_data:
            raise ValueError("hypervolume needs held-out prompts: set data.eval")
        #: held-out prompts per evaluation (the trainer's ``evaluate_objectives`` service reads it)
        self.eval_prompts: int = c.eval_prompts
        #: greedy length of the evaluation, ``None`` = the trainer's max completion length
        self.eval_max_new_tokens: Optional[int] = c.eval_max_new_tokens

    @classmethod
    def warnings(cls, config: HypervolumeConfig, env: StrategyEnv) -> List[str]:
        out = []
        if env.max_steps is not None and config.eval_every >= env.max_steps:
            out.append(f"eval_every = {config.eval_every} >= the run's {env.max_steps} steps: the meta-reward never "
                       f"changes")
        if config.apply_to == "reward" and env.scale_rewards in ("group", "batch"):
            out.append(f"apply_to: reward with scale_rewards={env.scale_rewards}: the batch-uniform meta-reward "
                       f"cancels in the std-normalised advantages (a no-op up to 1e-4); apply_to: advantage acts")
        return out

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        objective_means(ctx)  # warns when an objective has no valid sample
        hv = self.weighting
        names = self.names(ctx)
        if hv.reference() is None:
            ref = ctx.evaluate_objectives(num_prompts=self.config.eval_prompts,
                                          max_new_tokens=self.config.eval_max_new_tokens)
            hv.set_reference(ref)
            for name, v in zip(names, ref):
                ctx.log(f"objective_eval_reference/{name}", v)
        weights = hv.weights()
        ctx.log("objective_weighting/meta_reward", hv.meta_reward())
        factor = hv.meta_reward() if hv.apply_to == "reward" else 1.0
        self.log_weights(ctx, weights)
        return [w * factor for w in weights]

    def adjust_advantages(self, ctx: RolloutContext) -> Optional[torch.Tensor]:
        if ctx.mode != "train" or self.weighting.apply_to != "advantage":
            return None
        return ctx.advantages_N * self.weighting.meta_reward()

    def on_step_end(self, ctx: StepEndContext) -> None:
        hv = self.weighting
        if not hv.should_evaluate(ctx.step) or hv.reference() is None:  # no reference: not trained yet
            return
        perf = ctx.evaluate_objectives(num_prompts=self.config.eval_prompts,
                                       max_new_tokens=self.config.eval_max_new_tokens)
        m = hv.update(perf)
        for name, v in zip(self.names(ctx), perf):
            ctx.log(f"objective_eval/{name}", v)
        ctx.log("objective_weighting/hvc", float(hv.last_hvc or 0.0))
        ctx.log("objective_weighting/front_hypervolume", hv.front_hypervolume())
        logger.info("objective eval at step %d: %s -> meta-reward %.3f", ctx.step, perf, m)
