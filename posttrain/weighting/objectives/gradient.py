"""Gradient-based objective weights (Dynamic Reward Weighting, Lu et al., arXiv 2509.11452, method (b)
"optimization").

Official code ``yining610/dynamic-reward-weighting`` (commit 238fe655...):
``verl/trainer/ppo/ray_trainer_optimization.py`` (the ``reweight`` block of ``fit``) and
``verl/workers/fsdp_workers.py::compute_gradients``. Spec: ``methods.md`` C8(b).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from posttrain.weighting.objectives._common import (
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    check_real,
    normalise_simplex,
    softmax,
)

__all__ = ["GradientWeights", "gram_alignment"]

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
