"""TRL subclasses (glue only: where in the step a weight is computed and applied; no formulas here)."""
from .callbacks import JsonlMetricsCallback
from .grpo import PosttrainGRPOTrainer

__all__ = ["JsonlMetricsCallback", "PosttrainGRPOTrainer"]
