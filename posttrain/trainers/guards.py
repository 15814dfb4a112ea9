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

With several processes the decision is collective: after every micro-batch the processes agree (one all-reduce of
two flags) on whether any of them saw a non-finite loss or asked for a stop, and then all of them backpropagate the
same exact zero, count the same skip and stop at the same step. A decision on one process only would leave the
others in collectives it never joins (a hang under ZeRO-3) or fill DeepSpeed's gradient buckets in another order.

Under DeepSpeed the engine takes the optimizer step inside ``backward``, before this callback runs, and its
gradients live in partitioned buffers, not in ``param.grad``. There a non-finite micro-batch contributes an exact
zero gradient and the step counts as skipped, but the optimizer still steps on the step's other micro-batches, and
Adam's momentum still moves the weights; a finite loss with non-finite gradients is not detected.
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

    @property
    def stop_pending(self) -> bool:
        """A stop was requested during the current step (it is skipped, then the run stops)."""
        return self._skip_next

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
    """An exact zero whose backward gives every trainable parameter a zero gradient.

    Without ZeRO-3 it is the sum of the parameters times 0 (no forward pass). Under ZeRO-3 a parameter outside a
    forward is an empty shard that cannot take a full-size gradient, and DeepSpeed fills the partitioned gradients
    from the modules' backward hooks; there it is the logits of a one-token forward times 0, which runs every
    module's gather and reduce. Every process must call it together (the guard decides collectively).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not any(hasattr(p, "ds_numel") for p in params):
        return torch.stack([p.sum() for p in params]).sum() * 0.0
    device = getattr(model, "device", None) or params[0].device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    return model(input_ids=token, use_cache=False).logits.float().sum() * 0.0


def first_message_anywhere(accelerator, message: Optional[str]) -> Optional[str]:
    """The first non-empty ``message`` over the processes, in process order (every process calls this together;
    with one process, ``message`` itself)."""
    if accelerator.num_processes == 1:
        return message
    from accelerate.utils import gather_object

    messages = [m for m in gather_object([message]) if m]
    return messages[0] if messages else None


def raise_if_failed_anywhere(accelerator, failure: Optional[Exception]) -> None:
    """Raise ``failure`` on every process if a strategy hook failed on any of them (one all-reduce; the others raise
    the message of the first process that failed). Every process calls this after the same hook: a failure on one
    process only would leave the others in the collectives that follow it."""
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(torch.tensor([float(failure is not None)], device=accelerator.device),
                                  reduction="sum")
        if bool(flag.item() > 0):
            from posttrain.errors import StrategyFailed

            message = first_message_anywhere(accelerator, None if failure is None else str(failure))
            if failure is None:
                failure = StrategyFailed(f"{message} (on another process)")
    if failure is not None:
        raise failure


class GuardedTrainerMixin:
    """For our HF/TRL trainer subclasses: install a :class:`StepGuard`, feed it every micro-batch loss, log
    ``reliability/skipped_steps``.  Call :meth:`_install_guard` after ``super().__init__``."""

    guard: StepGuard

    def _install_guard(self, max_nonfinite_steps: int = 3, diagnostics_dir=None) -> None:
        from posttrain.debug import nan_loss_steps

        self.guard = StepGuard(max_nonfinite_steps, diagnostics_dir)
        self.add_callback(self.guard)
        self._debug_nan_steps = nan_loss_steps(self.accelerator.process_index)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if self.state.global_step + 1 in self._debug_nan_steps and self.model.training:
            loss = loss * float("nan")  # fault injection (posttrain.debug), off unless the variable is set
        self.guard.record_loss(loss)
        nonfinite, stopping = self._agree_on_skip(not bool(torch.isfinite(loss.detach())), self.guard.stop_pending)
        if stopping:
            reason = self._gathered_stop_reason()
            if not self.guard.stop_pending:
                self.guard.request_stop(reason)
        if nonfinite:
            self.guard.nonfinite_loss = True
        if nonfinite or stopping:
            # Every process backpropagates the same exact zero (the guard then skips the step): keeps NaN out of
            # gradient buffers we cannot inspect, e.g. DeepSpeed's, and runs the same collectives everywhere.
            loss = zero_loss(model)
        return (loss, *out[1:]) if return_outputs else loss

    def _agree_on_skip(self, nonfinite: bool, stopping: bool) -> tuple:
        """(any process has a non-finite loss, any process asked for a stop), by one all-reduce; local with one
        process."""
        if self.accelerator.num_processes == 1:
            return nonfinite, stopping
        flags = torch.tensor([float(nonfinite), float(stopping)], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _gathered_stop_reason(self) -> str:
        """The stop reason of the first process that asked for one (every process calls this together)."""
        reason = first_message_anywhere(self.accelerator, self.guard.stop_reason if self.guard.stop_pending else None)
        if reason:
            return reason
        return "stop requested" if self.accelerator.num_processes == 1 else "another process stopped the run"

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
