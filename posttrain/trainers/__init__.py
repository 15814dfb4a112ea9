"""TRL subclasses (GRPO, DPO, SFT) (glue only: where in the step a weight is computed and applied; no formulas here)."""
from .callbacks import JsonlMetricsCallback
from .dpo import AdaptiveDPOTrainer
from .grpo import PosttrainGRPOTrainer
from .sft import PosttrainSFTTrainer

__all__ = ["AdaptiveDPOTrainer", "JsonlMetricsCallback", "PosttrainGRPOTrainer", "PosttrainSFTTrainer"]
