"""DeepSpeed configs for the recipe's ``distributed`` section.

``"auto"`` values are filled in by the HF Trainer from the TRL config, so bf16/fp16, batch sizes and gradient
accumulation always agree with the trainer (a mismatch makes DeepSpeed raise, environment.md).
"""
from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import UserError


def deepspeed_config(section) -> dict:
    if section.config:
        path = Path(section.config).expanduser()
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"distributed.config: file '{path}' does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"distributed.config: cannot read '{path}' as JSON: {exc}") from None
    stage = section.zero_stage
    zero: dict = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if section.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
