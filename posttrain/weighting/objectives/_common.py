"""Shared helpers for the objective-weighting strategies (pure python/torch; no TRL).

Conventions used by every strategy in :mod:`posttrain.weighting.objectives`:

* ``.weights()`` returns a plain ``list[float]`` of length ``num_objectives`` (JSON-friendly, easy to log as
  ``reward_weights/<name>``). Unless a strategy documents otherwise it is a valid simplex.
* ``.state_dict()`` returns ``{"strategy": str, "version": int, "config": {...}, "state": {...}}`` made only of
  python ``int/float/bool/str/None/list/dict`` so ``json.dumps`` round-trips it exactly (python writes floats with
  ``repr``, which is lossless). ``load_state_dict`` refuses a state whose strategy or config differs from the object's
  own config (an exact resume needs the same hyper-parameters); ``from_state_dict`` rebuilds an object from it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from pydantic import Field

from posttrain.checks import check_real  # noqa: F401 - shared with pairs/sequences
from posttrain.weighting.protocol import RolloutContext, Strategy, StrategyConfig, StrategyEnv

logger = logging.getLogger("posttrain.weighting.objectives")

STATE_VERSION = 1


def as_float_list(name: str, x: Any, length: Optional[int] = None) -> List[float]:
    """A 1-D sequence / tensor / array of reals -> ``list[float]``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).reshape(-1).tolist()
    elif hasattr(x, "tolist") and not isinstance(x, (list, tuple)):  # numpy arrays / scalars
        x = x.tolist()
        if not isinstance(x, list):
            x = [x]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        x = [x]
    try:
        out = [float(v) for v in x]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of real numbers, got {x!r}") from None
    bad = sum(1 for v in out if not math.isfinite(v))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s); objective weighting needs finite inputs")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} value(s) (one per objective), got {len(out)}")
    return out


def check_int(name: str, value: Any, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_names(names: Optional[Sequence[str]], k: int) -> Optional[List[str]]:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"names must have {k} entries (one per objective), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {names}")
    return names


def normalise_simplex(name: str, w: Sequence[float], *, tol: Optional[float] = None) -> List[float]:
    """Validate non-negative weights with a positive sum and return them divided by their sum.

    With ``tol`` given the weights must already sum to 1 within ``tol`` (they are still renormalised exactly).
    """
    w = as_float_list(name, w)
    if not w:
        raise ValueError(f"{name} must not be empty")
    neg = [v for v in w if v < 0]
    if neg:
        raise ValueError(f"{name} must be non-negative, got {w}")
    s = math.fsum(w)
    if s <= 0:
        raise ValueError(f"{name} must have a positive sum, got {w}")
    if tol is not None and abs(s - 1.0) > tol:
        raise ValueError(f"{name} must sum to 1 within {tol} (got sum {s!r}: {w})")
    return [v / s for v in w]


def softmax(xs: Sequence[float]) -> List[float]:
    """Numerically stable softmax of finite-or--inf python floats (at least one finite)."""
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = math.fsum(e)
    return [v / s for v in e]


class ObjectiveWeighting:
    """Base class: the contract every objective-weighting strategy follows (see module docstring)."""

    strategy: str = "base"
    num_objectives: int
    names: Optional[List[str]]

    # -- to implement -------------------------------------------------------------------------------------------
    def weights(self) -> List[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _config(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_state(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, state: Dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def named_weights(self) -> Dict[str, float]:
        """``{name: weight}`` (names default to ``"objective_<k>"``), e.g. for ``reward_weights/<name>`` logging."""
        names = self.names or [f"objective_{k}" for k in range(self.num_objectives)]
        return dict(zip(names, self.weights()))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "strategy": self.strategy,
            "version": STATE_VERSION,
            "config": self._config(),
            "state": self._get_state(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError("state_dict must be a dict produced by .state_dict()")
        if state_dict.get("strategy") != self.strategy:
            raise ValueError(
                f"state_dict is for strategy {state_dict.get('strategy')!r}, cannot load into {self.strategy!r}"
            )
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state_dict version {state_dict.get('version')!r} (expected {STATE_VERSION})")
        mine, theirs = self._config(), state_dict.get("config", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(
                f"{self.strategy} state_dict was saved with a different config ({', '.join(diff)}); "
                f"build the strategy with the saved config (e.g. {type(self).__name__}.from_state_dict) to resume"
            )
        self._set_state(state_dict["state"])

    @classmethod
    def from_state_dict(cls, state_dict: Dict[str, Any]) -> "ObjectiveWeighting":
        obj = cls(**state_dict["config"])
        obj.load_state_dict(state_dict)
        return obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._config().items())})"


# ---------------------------------------------------------------------------------------------------------------------
# the shared part of every objective Strategy (posttrain.weighting.protocol)
# ---------------------------------------------------------------------------------------------------------------------
def names_field() -> Any:
    return Field(None, description="Objective names, one per reward, used in the logged keys "
                                   "(reward_weights/<name>, ...). Default: the rewards' names, which must then be "
                                   "distinct.")


class ObjectiveConfig(StrategyConfig):
    """Fields every objective strategy accepts."""

    names: Optional[List[str]] = names_field()


def normalised_reward_weights(env: StrategyEnv) -> Optional[List[float]]:
    """The rewards' ``weight`` values divided by their sum (``[1] * K`` when the env has names but no weights);
    returned unnormalised when they are not a valid simplex, so that the strategy's own check names the problem."""
    if not env.reward_names:
        return None
    w = [float(v) for v in env.reward_weights] or [1.0] * env.num_objectives
    s = math.fsum(w) if all(math.isfinite(v) for v in w) else float("nan")
    if not (s > 0) or any(v < 0 for v in w):
        return w
    return [v / s for v in w]


def objective_names(names: Optional[Sequence[str]], env: StrategyEnv) -> Optional[List[str]]:
    """The configured names, else the env's reward names (which must be distinct: one logged key per objective)."""
    if names is not None:
        return list(names)
    if not env.reward_names:
        return None
    if len(set(env.reward_names)) != len(env.reward_names):
        raise ValueError(f"the rewards need distinct names for per-objective logging (got "
                         f"{list(env.reward_names)}); set args.name on the rewards")
    return list(env.reward_names)


def check_objective_count(num_objectives: int, env: StrategyEnv) -> None:
    """One objective per reward of the run (checked when the env knows the rewards)."""
    k = env.num_objectives
    if k and num_objectives != k:
        raise ValueError(f"configured for {num_objectives} objective(s) but the recipe has {k} reward(s); give one "
                         f"value per reward")


def objective_means(ctx: RolloutContext) -> Optional[List[float]]:
    """Per-objective batch means of ``ctx.rewards_NK`` (NaN samples left out, float64); ``None`` -- with a
    warning -- when some objective has no valid sample this step (its weight input would be undefined)."""
    means = torch.nanmean(ctx.rewards_NK.double(), dim=0).tolist()
    if any(not math.isfinite(m) for m in means):
        logger.warning("objective weighting: an objective has no valid reward this step; weights not updated")
        return None
    return means


class ObjectiveStrategy(Strategy):
    """Base of the built-in objective strategies: each wraps one :class:`ObjectiveWeighting` (``self.weighting``,
    the pure method object) and forwards its checkpoint state. Subclasses build ``self.weighting`` in
    ``__init__`` and implement the hooks."""

    weighting: ObjectiveWeighting

    def names(self, ctx: Any) -> List[str]:
        """The objective names used in logged keys: the strategy's, else the context's reward names."""
        return list(self.weighting.names or ctx.reward_names)

    def log_weights(self, ctx: RolloutContext, weights: Sequence[float]) -> None:
        for name, w in zip(self.names(ctx), weights):
            ctx.log(f"reward_weights/{name}", float(w))

    def _finish_init(self) -> None:
        """After ``self.weighting`` is built: one objective per reward of the run, then the default names (the
        rewards'), set after the count check so that a miscount is reported as such."""
        check_objective_count(self.weighting.num_objectives, self.env)
        if self.config.names is None:
            self.weighting.names = objective_names(None, self.env)

    def state_dict(self) -> Dict[str, Any]:
        return {"objective": self.weighting.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Accepts this strategy's ``state_dict()`` or, from checkpoints written before the strategy protocol, the
        wrapped object's own ``state_dict()``."""
        if not isinstance(state, dict):
            raise ValueError(f"{self.name}: a state must be a dict, got {type(state).__name__}")
        inner = state["objective"] if "objective" in state else state
        self.weighting.load_state_dict(inner)
