"""Fixed objective weights: the linear-scalarisation baseline (``r = sum_k w_k r_k``) every library offers."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from pydantic import Field, FiniteFloat

from posttrain.weighting.objectives._common import (
    ObjectiveConfig,
    ObjectiveStrategy,
    ObjectiveWeighting,
    as_float_list,
    check_int,
    check_names,
    normalise_simplex,
    objective_means,
)
from posttrain.weighting.protocol import RolloutContext, StrategyEnv, register_strategy

__all__ = ["FixedWeights", "FixedConfig", "FixedStrategy"]


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


# ---------------------------------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------------------------------
class FixedConfig(ObjectiveConfig):
    weights: Optional[List[FiniteFloat]] = Field(
        None, min_length=1,
        description="Objective weights, one per reward, non-negative with a positive sum; normalised to sum to 1 "
                    "(linear scalarisation r = sum_k w_k r_k). Default: the rewards' weight values.")


@register_strategy("objective", "fixed")
class FixedStrategy(ObjectiveStrategy):
    """Constant objective weights (linear scalarisation ``r = sum_k w_k r_k``), the baseline every library offers.

    ``mix_weights``: the normalised weights, every training step (logged as ``reward_weights/<name>``)."""

    Config = FixedConfig
    cite = "linear scalarisation r = sum_k w_k r_k"

    @staticmethod
    def config_defaults(env: StrategyEnv) -> Dict[str, Any]:
        if not env.reward_names:
            return {}
        return {"weights": [float(v) for v in env.reward_weights] or [1.0] * env.num_objectives}

    def __init__(self, config: Optional[FixedConfig] = None, env: Optional[StrategyEnv] = None):
        super().__init__(config, env)
        if self.config.weights is None:
            raise ValueError("'weights' is required when the run's rewards are unknown")
        self.weighting = FixedWeights(self.config.weights, names=self.config.names)
        self._finish_init()

    def mix_weights(self, ctx: RolloutContext) -> Optional[List[float]]:
        if ctx.mode != "train":
            return None
        objective_means(ctx)  # warns when an objective has no valid sample (the weights do not depend on it)
        weights = self.weighting.weights()
        self.log_weights(ctx, weights)
        self.weighting.update()
        return weights
