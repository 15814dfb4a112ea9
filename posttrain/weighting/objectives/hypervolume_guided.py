"""Hypervolume-guided meta-reward (Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (a) "vanilla").

Official code ``yining610/dynamic-reward-weighting`` (commit 238fe655...):
``verl/trainer/ppo/ray_trainer_vanilla.py::VanillaRayPPOTrainer.fit`` and
``verl/utils/reward_score/dynamic_math/hypervolumn_contribution.py::compute_score``. Spec: ``methods.md`` C8(a).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from posttrain.weighting.objectives._common import (
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    check_real,
    normalise_simplex,
)
from posttrain.weighting.objectives.hypervolume import _signs, hypervolume, hypervolume_contribution

__all__ = ["HypervolumeWeights", "meta_reward_from_hvc"]

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

    Caveat [inferred] on ``apply_to``: the official code multiplies the *reward* by ``m`` before computing
    advantages. With GRPO's group std-normalised advantages ``(r - mean) / (std + eps)`` a batch-uniform positive
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
