"""What a training run prints: one progress bar with a short postfix instead of a metrics dict per step.

The HF Trainer's ``ProgressCallback`` writes every logged dict (25-38 keys for a GRPO step) under its bar. The full
dicts are kept in ``metrics.jsonl`` (``posttrain.trainers.JsonlMetricsCallback``) and in any ``output.report_to``
backend; on the console :class:`CompactProgressCallback` shows the Trainer's own tqdm bar (unit ``step``, so tqdm's
rate reads ``s/step``) with the few numbers one watches: loss, reward (GRPO) or reward margin / accuracy (DPO),
entropy, and KL when the run logs it. ``posttrain run --verbose`` (or ``POSTTRAIN_VERBOSE=1``) restores the dicts.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Tuple

from transformers.trainer_callback import ProgressCallback
from tqdm.auto import tqdm

VERBOSE_ENV = "POSTTRAIN_VERBOSE"

# (label on the bar, metric key) in display order; absent keys are skipped.
POSTFIX_KEYS: List[Tuple[str, str]] = [
    ("loss", "loss"),
    ("reward", "reward"),
    ("margin", "rewards/margins"),
    ("acc", "rewards/accuracies"),
    ("entropy", "entropy"),
    ("kl", "kl"),
]


# tqdm's default, with the rate always as seconds per step (tqdm flips to steps/s when a step takes < 1 s).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]"


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def postfix(logs: Dict) -> Dict[str, str]:
    """The short postfix for one logged dict: ``{'loss': '0.0123', 'reward': '0.5', ...}`` (present keys only)."""
    out = {}
    for label, key in POSTFIX_KEYS:
        v = logs.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[label] = _fmt(float(v))
    return out


class CompactProgressCallback(ProgressCallback):
    """``ProgressCallback`` whose ``on_log`` sets a short postfix on the bar instead of writing the dict.

    The end-of-training dict (``train_runtime``, ...) becomes one line; evaluation dicts (``eval_*`` keys) one short
    line each.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, unit="step", desc="train",
                                     bar_format=BAR_FORMAT)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "train_runtime" in logs:
            steps = max(state.global_step, 1)
            self.training_bar.write(f"train: {state.global_step} steps in {logs['train_runtime']:.1f} s "
                                    f"({logs['train_runtime'] / steps:.2f} s/step)")
            return
        evals = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        if evals:
            short = postfix(evals)
            if short:
                self.training_bar.write("eval: " + ", ".join(f"{k} {v}" for k, v in short.items()))
            return
        short = postfix(logs)
        if short:
            self.training_bar.set_postfix(short, refresh=True)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def use_compact_progress(enabled: bool = True) -> None:
    """Make every Trainer built afterwards in this process use :class:`CompactProgressCallback` (or the stock
    ``ProgressCallback`` when ``enabled`` is false). The Trainer picks its progress callback from
    ``transformers.trainer.DEFAULT_PROGRESS_CALLBACK`` when it is constructed (with ``disable_tqdm=False``).

    Compact also hides the libraries' bookkeeping bars: transformers' "Loading weights" / "Writing model shards"
    (one per model load or save) and datasets' "Tokenizing train dataset" / "Map" (TRL's preprocessing), with their
    ``disable_progress_bar`` switches; the training and evaluation bars are unaffected."""
    import transformers.trainer as hf_trainer
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    (hf_logging.disable_progress_bar if enabled else hf_logging.enable_progress_bar)()
    (ds_logging.disable_progress_bar if enabled else ds_logging.enable_progress_bar)()

    if getattr(hf_trainer, "DEFAULT_PROGRESS_CALLBACK", None) not in (ProgressCallback, CompactProgressCallback):
        return  # a notebook progress callback (or another tool's): leave it alone
    hf_trainer.DEFAULT_PROGRESS_CALLBACK = CompactProgressCallback if enabled else ProgressCallback


class _DropMessage(logging.Filter):
    def __init__(self, prefixes: Tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - never break logging
            return True
        return not msg.startswith(self.prefixes)


# DeepSpeed's accelerator detection (deepspeed/accelerator/real_accelerator.py) warns on every import on a machine
# without GPUs: "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
# posttrain chooses CPU on purpose there; only that message is dropped, every other DeepSpeed warning stays.
_QUIET = {"DeepSpeed": ("Setting accelerator to CPU.",)}


def quiet_known_noise() -> None:
    """Install the filters of :data:`_QUIET` on their loggers (idempotent; works before or after the import, since
    ``logging.getLogger`` returns the same logger object DeepSpeed configures)."""
    for name, prefixes in _QUIET.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefixes == prefixes for f in logger.filters):
            logger.addFilter(_DropMessage(prefixes))
