"""Step guard: a non-finite loss or gradient skips the optimizer step; repeated trouble stops the run cleanly.

Runs as a ``TrainerCallback`` between gradient clipping and ``optimizer.step()`` (``on_pre_optimizer_step``).
If any micro-batch loss of the step was non-finite (the trainer sets :attr:`StepGuard.nonfinite_loss`) or any
gradient holds NaN/inf, every ``.grad`` is set to ``None``: torch optimizers skip parameters without a gradient,
so neither the weights nor the Adam moments move (the learning-rate schedule still advances one step).  After
``max_consecutive`` skipped steps in a row the run stops: diagnostics are written to
``<output.dir>/diagnostics/``, the trainer saves a checkpoint of the last good weights, and ``posttrain run``
exits with a one-line message (:class:`posttrain.errors.RunStopped`).

Other stop requests (too many failed rewards in a step) go through :meth:`StepGuard.request_stop`: the current
step is skipped the same way, a checkpoint is written and the run ends.

Limitation: under DeepSpeed the gradients live in the engine's partitioned buffers, not in ``param.grad``; there
the loss check still works (a non-finite loss skips the step) but a finite loss with non-finite gradients is
not detected here.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainerCallback

from posttrain.errors import RunStopped

logger = logging.getLogger("posttrain.trainers")


class StepGuard(TrainerCallback):
    def __init__(self, max_consecutive: int = 3, diagnostics_dir: Optional[str | Path] = None):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.diagnostics_dir = Path(diagnostics_dir) if diagnostics_dir is not None else None
        self.nonfinite_loss = False     # set by the trainer's compute_loss for the current step
        self.losses: list = []          # micro-batch losses of the current step (floats)
        self.consecutive = 0
        self.skipped_total = 0
        self.stop_reason: Optional[str] = None
        self.stop_details: dict = {}
        self._skip_next = False
        self.diagnostics_path: Optional[Path] = None

    # ------------------------------------------------------------------ called by the trainer
    def record_loss(self, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        self.losses.append(value)
        if not math.isfinite(value):
            self.nonfinite_loss = True

    def request_stop(self, reason: str, **details) -> None:
        """Skip the current step, save a checkpoint and stop (e.g. too many failed rewards)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_details = details
        self._skip_next = True

    # ------------------------------------------------------------------ callback events
    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        bad = self._nonfinite_grads(model)
        skip = self._skip_next or self.nonfinite_loss or bool(bad)
        if skip:
            for group in (optimizer.param_groups if optimizer is not None else []):
                for p in group["params"]:
                    p.grad = None
            if model is not None:
                for p in model.parameters():
                    p.grad = None
        if self.nonfinite_loss or bad:
            self.consecutive += 1
            self.skipped_total += 1
            logger.warning("step %d skipped: %s (%d in a row, limit %d)", state.global_step + 1,
                           "non-finite loss" if self.nonfinite_loss else f"non-finite gradients in {len(bad)} "
                           f"tensors", self.consecutive, self.max_consecutive)
            if self.consecutive >= self.max_consecutive and self.stop_reason is None:
                self.diagnostics_path = self.write_diagnostics(state, bad, event="consecutive non-finite steps")
                self.stop_reason = (f"{self.consecutive} consecutive steps had a non-finite loss or gradient "
                                    f"(last at step {state.global_step + 1}); diagnostics in {self.diagnostics_path}")
        elif not self._skip_next:
            self.consecutive = 0
        self.nonfinite_loss = False
        self.losses = []
        self._skip_next = False
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_reason is not None:
            control.should_save = True  # the last good weights, whatever save_strategy says
            control.should_training_stop = True
        return control

    @contextlib.contextmanager
    def diverged_sampling(self, state):
        """Around generation: sampling that met NaN/inf probabilities means the weights themselves diverged (e.g. a
        far too large learning rate). Nothing in this state is worth a checkpoint; stop with diagnostics."""
        try:
            yield
        except RuntimeError as exc:
            if "probability tensor contains" not in str(exc):
                raise
            self.stop_reason = "diverged"
            path = self.write_diagnostics(state, [], event="non-finite sampling probabilities")
            raise RunStopped(
                f"the policy's sampling probabilities became non-finite at step {state.global_step + 1} (the weights "
                f"diverged; lower train.learning_rate?); diagnostics in {path}; resume from the last complete "
                f"checkpoint, if any, with --resume") from None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _nonfinite_grads(model) -> list:
        if model is None:
            return []
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        if not named:
            return []
        norms = torch._foreach_norm([g for _, g in named])  # one fused pass; NaN/inf anywhere -> non-finite norm
        finite = torch.isfinite(torch.stack(norms))
        if bool(finite.all()):
            return []
        return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]

    def write_diagnostics(self, state, bad_params, *, event: str) -> Optional[Path]:
        if self.diagnostics_dir is None:
            return None
        self.diagnostics_dir.mkdir(parents=True, exist_ok=True)
        path = self.diagnostics_dir / f"nonfinite-step{state.global_step + 1}.json"
        recent = [h for h in state.log_history[-10:]]
        path.write_text(json.dumps({
            "event": event, "step": state.global_step + 1, "time": time.time(),
            "consecutive_skips": self.consecutive,
            "micro_batch_losses": [repr(x) for x in self.losses], "nonfinite_loss": self.nonfinite_loss,
            "params_with_nonfinite_grad": bad_params[:50], "n_params_with_nonfinite_grad": len(bad_params),
            "recent_logs": recent,
        }, indent=1, default=repr))
        return path


def zero_loss(model) -> torch.Tensor:
    """An exact zero connected to every trainable parameter (backward gives zero gradients; works with sharded
    DeepSpeed parameters)."""
    return torch.stack([p.sum() for p in model.parameters() if p.requires_grad]).sum() * 0.0


class GuardedTrainerMixin:
    """For our HF/TRL trainer subclasses: install a :class:`StepGuard`, feed it every micro-batch loss, log
    ``reliability/skipped_steps``.  Call :meth:`_install_guard` after ``super().__init__``."""

    guard: StepGuard

    def _install_guard(self, max_nonfinite_steps: int = 3, diagnostics_dir=None) -> None:
        self.guard = StepGuard(max_nonfinite_steps, diagnostics_dir)
        self.add_callback(self.guard)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        self.guard.record_loss(loss)
        if not torch.isfinite(loss):
            # Backpropagate an exact zero instead (the guard then skips the step): keeps NaN out of gradient
            # buffers we cannot inspect, e.g. DeepSpeed's.
            loss = zero_loss(model)
        return (loss, *out[1:]) if return_outputs else loss

    def posttrain_state(self):  # saved in checkpoints by CheckpointStateMixin (next in the MRO)
        state = super().posttrain_state()
        state["guard"] = {"consecutive": self.guard.consecutive, "skipped_total": self.guard.skipped_total}
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        if "guard" in state:
            self.guard.consecutive = state["guard"]["consecutive"]
            self.guard.skipped_total = state["guard"]["skipped_total"]

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log row
            logs["reliability/skipped_steps"] = self.guard.skipped_total
        return super().log(logs, start_time)


class RewardFailureMixin:
    """For the GRPO trainer: samples with a *failed* reward (:class:`posttrain.rewards.safe.SafeReward`) become NaN
    rows, which TRL 1.16 leaves out of the group baseline and gives advantage 0; a ``None`` a reward returns on
    purpose ("not applicable") keeps TRL's meaning. Too many failures in one step stop the run with a checkpoint.
    Needs ``self.max_reward_failure_fraction`` and the :class:`StepGuard` (``self.guard``)."""

    def _mark_failed_rewards(self, rewards_per_func: torch.Tensor, n_local: int) -> torch.Tensor:
        from accelerate.utils import gather

        from posttrain.rewards.safe import SafeReward

        failed = torch.zeros(n_local, len(self.reward_funcs), dtype=torch.bool, device=rewards_per_func.device)
        for i, fn in enumerate(self.reward_funcs):
            if isinstance(fn, SafeReward) and len(fn.last_failed) == n_local:
                failed[:, i] = torch.tensor(fn.last_failed, dtype=torch.bool)
        failed = gather(failed)  # rewards_per_func is already gathered over processes by TRL
        missing = failed.any(dim=1)
        rewards_per_func = rewards_per_func.clone()
        rewards_per_func[missing] = torch.nan
        mode = "train" if self.model.training else "eval"
        frac = float(missing.float().mean()) if missing.numel() else 0.0
        self._metrics[mode]["reward_failures/missing_fraction"].append(frac)
        for i, name in enumerate(self.reward_func_names):
            self._metrics[mode][f"reward_failures/{name}"].append(float(failed[:, i].float().mean()))
        if frac > self.max_reward_failure_fraction and mode == "train":
            reasons = {}
            for fn in self.reward_funcs:
                if isinstance(fn, SafeReward) and fn.last_reasons:
                    reasons[fn.__name__] = dict(fn.last_reasons)
            self.guard.request_stop(
                f"{frac:.0%} of the samples of step {self.state.global_step + 1} have a failed reward "
                f"(limit reliability.max_reward_failure_fraction={self.max_reward_failure_fraction}): {reasons}",
                reasons=reasons)
        return rewards_per_func
