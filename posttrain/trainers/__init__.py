"""TRL subclasses (glue only: where in the step a weight is computed and applied; no formulas here)."""
from .callbacks import JsonlMetricsCallback
from .dpo import AdaptiveDPOTrainer
from .grpo import PosttrainGRPOTrainer

__all__ = ["AdaptiveDPOTrainer", "JsonlMetricsCallback", "PosttrainGRPOTrainer"]
