"""Fixed objective weights: the linear-scalarisation baseline (``r = sum_k w_k r_k``) every library offers."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from posttrain.weighting.objectives._common import (
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    normalise_simplex,
)

__all__ = ["FixedWeights"]


class FixedWeights(ObjectiveWeighting):
    """Constant weights over ``K`` objectives (linear scalarisation).

    Args:
        weights: ``K`` non-negative reals with a positive sum; they are normalised to sum to 1
            (``[2, 1, 1]`` -> ``[0.5, 0.25, 0.25]``). A ``ValueError`` names a negative / non-finite / all-zero input.
        names: optional objective names (for logging).

    ``update(...)`` accepts and ignores any arguments (so a trainer can call every strategy the same way) and only
    advances ``step``; it returns the (unchanged) weights.
    """

    strategy = "fixed"

    def __init__(self, weights: Sequence[float], names: Optional[Sequence[str]] = None):
        self._raw = as_float_list("weights", weights)
        self._w = normalise_simplex("weights", self._raw)
        self.num_objectives = len(self._w)
        self.names = check_names(names, self.num_objectives)
        self.step = 0

    def weights(self) -> List[float]:
        return list(self._w)

    def update(self, *args: Any, **kwargs: Any) -> List[float]:
        self.step += 1
        return self.weights()

    def _config(self) -> Dict[str, Any]:
        return {"weights": list(self._raw), "names": self.names}

    def _get_state(self) -> Dict[str, Any]:
        return {"step": self.step}

    def _set_state(self, state: Dict[str, Any]) -> None:
        self.step = check_int("state.step", state["step"], low=0)
