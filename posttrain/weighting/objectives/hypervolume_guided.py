"""Former home of :class:`HypervolumeWeights` and :func:`meta_reward_from_hvc`; both now live in
:mod:`posttrain.weighting.objectives.hypervolume` (one method, one file). Kept so that old imports still work."""
from posttrain.weighting.objectives.hypervolume import HypervolumeWeights, meta_reward_from_hvc  # noqa: F401
