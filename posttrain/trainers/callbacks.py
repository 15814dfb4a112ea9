"""Trainer callbacks: one JSON object per logged step into ``metrics.jsonl``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null keeps the line parseable
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


class JsonlMetricsCallback(TrainerCallback):
    """Append ``{"step": …, "epoch": …, <TRL's logged metrics>}`` per log event (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch}
        row.update({k: _jsonable(v) for k, v in logs.items()})
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
