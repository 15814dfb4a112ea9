"""ReLIFT in the GRPO trainer: fine-tuning on the hardest questions interleaved with the RL steps.  Glue only.

Ma et al., "Learning What Reinforcement Learning Can't: Interleaved Online Fine-Tuning for Hardest Questions"
(arXiv 2506.07527); official code ``TheRoadQaQ/ReLIFT``, ``relift/verl/verl/relift/trainer.py::fit`` (l.304-560),
``replace_response_in_batch`` (l.255), ``actor.py::sft_update_policy``. The math is in
:mod:`posttrain.weighting.hardest` (selection, buffer) and :func:`posttrain.losses.relift_sft_loss`.

Where it runs in a step:

1. Scoring (every generation round, in ``_calculate_rewards``; training only): the gathered scalar reward (TRL's mix
   with the current objective weights) is viewed ``[P, G]``; each hardest prompt's first row (its prompt and the
   ``demonstration_column`` value of its dataset row) is gathered from the process that holds it, so the buffer is
   the same on every process, and put in front of the buffer. Logged: ``relift/hardest_prompts``.
2. The RL update runs on the whole batch, as in the official code.
3. After the optimizer step (``on_step_end``): when the buffer holds ``sft_data_size`` rows, the newest ones are
   taken and fine-tuned on: the prompt rendered as the GRPO rollout renders it (chat template, pre-fill continued),
   the demonstration tokens plus EOS as the completion (only they are scored), ``sft_epochs`` passes in
   mini-batches of ``sft_batch_size`` (each process takes its contiguous share, gradient accumulation over
   ``sft_micro_batch_size``), with a separate AdamW (its own lr, weight decay), gradient-norm clip ``grad_clip``;
   a non-finite gradient skips that SFT step. Logged every step: ``relift/buffer_size``, ``relift/sft_steps``
   (cumulative SFT optimizer steps), and ``relift/sft_loss`` on steps with an SFT phase.

Choices where the paper / code is silent or does not apply [inferred]: the SFT log-probs use temperature 1 (plain
NLL of the demonstration, whatever the rollout temperature); the SFT optimiser has no lr schedule; DeepSpeed is
refused (a second optimiser over DeepSpeed-managed, possibly partitioned parameters), DDP works through the wrapped
model (its gradient all-reduce) but is not exercised by our tests. Checkpoints carry the buffer, the SFT optimiser's
state and the counters (exact resume).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List

import torch
from accelerate.utils import gather_object
from pydantic import ValidationError
from transformers import TrainerCallback

from posttrain.data.common import DataError, demonstration_column, demonstration_text
from posttrain.errors import UserError
from posttrain.losses import relift_sft_loss
from posttrain.weighting.hardest import HardestBuffer, select_hardest
from posttrain.weighting.protocol import mix_rewards


class _SFTPhase(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._relift_step_end()


class ReliftMixin:
    """``relift`` in :class:`~posttrain.trainers.PosttrainGRPOTrainer` (the recipe's ``relift`` section or a dict of
    its fields); ``None``: off."""

    _relift: Dict[str, Any] | None = None

    def _setup_relift(self, config) -> None:
        if config is None:
            self._relift = None
            return
        from posttrain.recipes.schema import ReliftSection

        try:
            cfg = config if isinstance(config, ReliftSection) else ReliftSection.model_validate(dict(config))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"relift{'.' + where if where else ''}: {err['msg'].removeprefix('Value error, ')}") \
                from None
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise UserError("relift: not available with DeepSpeed or FSDP (its separate SFT optimiser would step "
                            "parameters they partition and own); use DDP")
        world = self.accelerator.num_processes
        if cfg.sft_batch_size % (world * cfg.sft_micro_batch_size):
            raise UserError(f"relift.sft_batch_size ({cfg.sft_batch_size}) must be a multiple of "
                            f"relift.sft_micro_batch_size ({cfg.sft_micro_batch_size}) x {world} process(es)")
        try:
            column = demonstration_column(self.train_dataset.column_names, cfg.demonstration_column)
        except DataError as exc:
            raise UserError(f"relift.demonstration_column: data.train: {exc}") from None
        self._relift = cfg.model_dump()
        self._relift["column"] = column
        self._relift_buffer = HardestBuffer(cfg.buffer_capacity)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._sft_optimizer = torch.optim.AdamW(params, lr=cfg.sft_learning_rate, weight_decay=cfg.sft_weight_decay)
        self._sft_params = params
        self._sft_steps = 0
        self.add_callback(_SFTPhase(self))

    # ------------------------------------------------------------------ scoring: collect the hardest prompts
    def _relift_observe(self, inputs: List[dict], rewards_NK: torch.Tensor) -> None:
        """Every process calls this with its rollout rows and the gathered rewards (training only)."""
        if self._relift is None or not self.model.training:
            return
        g, cfg = self.num_generations, self._relift
        rewards_N = mix_rewards(rewards_NK, self.reward_weights.tolist())
        hardest_P = select_hardest(rewards_N.reshape(-1, g).cpu(), cfg["fail_value"], threshold=cfg["fail_threshold"])
        offset = self.accelerator.process_index * len(inputs)
        mine = []
        for j, row in enumerate(inputs):
            i = offset + j
            if i % g == 0 and bool(hardest_P[i // g]):
                try:
                    demo = demonstration_text(row.get(cfg["column"]), cfg["column"], i)
                except DataError as exc:
                    raise UserError(f"relift.demonstration_column: data.train: {exc}") from None
                mine.append({"prompt": row["prompt"], "demonstration": demo})
        rows = gather_object(mine) if self.accelerator.num_processes > 1 else mine
        self._relift_buffer.add(rows)
        self._log_metric("relift/hardest_prompts", float(len(rows)))

    # ------------------------------------------------------------------ after the optimizer step: the SFT phase
    def _relift_step_end(self) -> None:
        cfg = self._relift
        if cfg is None:
            return
        if self._relift_buffer.ready(cfg["sft_data_size"]):
            losses = self._sft_phase(self._relift_buffer.take(cfg["sft_data_size"]))
            if losses:
                self._log_metric("relift/sft_loss", sum(losses) / len(losses))
        self._log_metric("relift/buffer_size", float(len(self._relift_buffer)))
        self._log_metric("relift/sft_steps", float(self._sft_steps))

    def _sft_phase(self, rows: List[dict]) -> List[float]:
        cfg = self._relift
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mini, micro = cfg["sft_batch_size"], cfg["sft_micro_batch_size"]
        share = mini // world
        losses = []
        saved = self.temperature, self.chunked_entropy_grad
        self.temperature, self.chunked_entropy_grad = 1.0, cfg["entropy_coef"] != 0.0
        try:
            for _ in range(cfg["sft_epochs"]):
                for start in range(0, len(rows), mini):
                    local = rows[start + rank * share:start + (rank + 1) * share]
                    losses.append(self._sft_update(local, micro))
        finally:
            self.temperature, self.chunked_entropy_grad = saved
        return [x for x in losses if math.isfinite(x)]

    def _sft_update(self, local: List[dict], micro: int) -> float:
        """One SFT optimizer step on this process's share of a mini-batch; returns the loss (mean over processes)."""
        model = self.model_wrapped
        chunks = [local[i:i + micro] for i in range(0, len(local), micro)]
        total = torch.zeros((), device=self.accelerator.device)
        self._sft_optimizer.zero_grad(set_to_none=True)
        for k, chunk in enumerate(chunks):
            input_ids, attention_mask, n_completion = self._sft_batch(chunk)
            sync = k == len(chunks) - 1
            with self.accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                logps, entropies, _ = self._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, n_completion, compute_entropy=True)
                mask = attention_mask[:, -n_completion:]
                loss = relift_sft_loss(logps, entropies, mask, entropy_coef=self._relift["entropy_coef"])
                (loss / len(chunks)).backward()  # fp32, no DeepSpeed: plain backward (DDP all-reduces on sync)
            total = total + loss.detach() / len(chunks)
        norm = torch.nn.utils.clip_grad_norm_(self._sft_params, self._relift["grad_clip"])
        if torch.isfinite(norm):
            self._sft_optimizer.step()
            self._sft_steps += 1
        else:
            self._log_metric("relift/sft_skipped_nonfinite", 1.0)
        self._sft_optimizer.zero_grad(set_to_none=True)
        return float(self.accelerator.reduce(total, reduction="mean")) if self.accelerator.num_processes > 1 \
            else float(total)

    def _sft_batch(self, rows: List[dict]):
        """The demonstrations as TRL lays out prompt + completion
        (:meth:`~posttrain.trainers.grpo.PosttrainGRPOTrainer._prompt_completion_batch`)."""
        return self._prompt_completion_batch([r["prompt"] for r in rows], [r["demonstration"] for r in rows])

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        if self._relift is not None:
            state["relift"] = {"buffer": self._relift_buffer.state_dict(), "sft_steps": self._sft_steps,
                               "optimizer": self._sft_optimizer.state_dict()}
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        saved = state.get("relift")
        if (saved is None) != (self._relift is None):
            raise UserError("--resume: the checkpoint was written " + ("without" if saved is None else "with")
                            + " a relift section; the recipe now " + ("has one" if saved is None else "has none"))
        if saved is not None:
            self._relift_buffer.load_state_dict(saved["buffer"])
            self._sft_steps = int(saved["sft_steps"])
            self._sft_optimizer.load_state_dict(saved["optimizer"])

