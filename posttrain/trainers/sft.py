"""Our SFT trainer: a subclass of TRL 1.16's ``SFTTrainer`` with per-sample weights.  Glue only.

Where the weights enter a step (formulas in :mod:`posttrain.losses.sft`,
:mod:`posttrain.weighting.sequences.loss_reweighting` and :mod:`posttrain.weighting.samples`): per micro-batch TRL's own ``compute_loss`` runs unchanged (so every TRL metric
is logged as usual) while a forward hook records the fused head's per-token log-probs ``lp_it`` and label mask
``m_it`` (no extra forward); the returned loss is then recomputed as

    loss = sum_i w_i sum_t m_it * l_it / num_tokens          l_it = -lp_it  (TRL's loss_type 'dft': l_it * exp(lp_it))

with TRL's own denominator (``num_items_in_batch``: the valid tokens of the whole accumulated batch on all ranks;
else the micro-batch's) and TRL's ``average_tokens_across_devices`` factor, so ``w_i = 1`` gives exactly TRL's SFT
loss. ``w_i`` is the product of

* a ``weight`` column of the data (kept through TRL's dataset preparation and collator), and
* each ``weighting.samples`` strategy (``loss_reweighting``: Sow et al., ICLR 2025, arXiv 2502.06733): per-sample
  loss = token-mean NLL of the sample's loss tokens (:func:`~posttrain.weighting.sequences.token_mean_nll`),
  all-gathered over processes (the official scope), weights :meth:`LossSampleWeighter.weights` (sum 1; uniform for
  ``burn_in_steps`` optimizer steps) times the gathered count ``N`` (mean 1). With one process this is the
  official repo's loss ``sum_i w_i (n_i / sum n) l_i * B`` exactly; its burn-in is TRL's token mean.

With neither, the loss is TRL's ``compute_loss`` untouched. Logged: ``samples/weight_mean|min|max`` (over the
gathered micro-batch). Checkpoint state: each sample strategy's ``state_dict`` (the burn-in counter).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Sequence

import torch
from trl import SFTTrainer

from posttrain.data.mixture import DOMAIN_COLUMN
from posttrain.errors import RunStopped, StrategyFailed, UserError
from posttrain.losses import weighted_sft_loss
from posttrain.registry import RegistryError
from posttrain.trainers.checkpointing import CheckpointStateMixin
from posttrain.trainers.columns import FloatColumnsCollator, KeepColumnsMixin
from posttrain.trainers.domains import DomainMixtureMixin
from posttrain.trainers.guards import GuardedTrainerMixin, raise_if_failed_anywhere, zero_loss
from posttrain.weighting.protocol import SampleContext, StrategyEnv, StrategyError, label, required_columns
from posttrain.weighting.sequences import token_mean_nll

SAMPLE_COLUMNS = ("weight",)
_COLUMNS = SAMPLE_COLUMNS + (DOMAIN_COLUMN,)   # per-sample columns read by the loss, not model inputs


class _SampleWeightedSFT(SFTTrainer):
    """The weighted loss (below the guard in the MRO, so the guard sees the loss that is backpropagated)."""

    _weighted: bool = False
    sample_strategies: List[Any] = []
    _extra_columns: Sequence[str] = _COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        columns = {c: inputs.pop(c) for c in self._extra_columns if c in inputs}  # not model inputs
        if not self._weighted:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        with self._record_fused_outputs(model) as records:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        if not records:
            raise RuntimeError("expected one fused-LM-head forward of the policy, recorded none")
        log_probs, label_mask = records[0]
        try:
            loss = self._weighted_loss(log_probs, label_mask, columns, num_items_in_batch)
        except StrategyFailed as exc:  # skip this step, save a checkpoint, stop the run (exit 3)
            self.guard.request_stop(str(exc))
            loss = zero_loss(model)
        return (loss, out[1]) if return_outputs else loss

    @contextlib.contextmanager
    def _record_fused_outputs(self, model):
        """Forward hook recording ``(log_probs, label_mask)`` of every fused-LM-head forward (on the unwrapped
        module, which DDP / DeepSpeed wrappers call)."""
        records: List[Any] = []

        def hook(module, args, kwargs, output):
            if kwargs.get("fused_lm_head"):
                records.append((output.log_probs, output.label_mask))

        unwrap = self.accelerator.unwrap_model
        modules = {id(m): m for m in (unwrap(model), unwrap(self.model))}
        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
        try:
            yield records
        finally:
            for h in handles:
                h.remove()

    def sample_weights(self, log_probs: torch.Tensor, label_mask: torch.Tensor, columns) -> torch.Tensor:
        """``[B]`` detached weights of this process's samples: the ``weight`` column times every sample strategy's
        ``sample_weights`` (training only; each strategy's weights are over the gathered batch)."""
        n = log_probs.size(0)
        weights = torch.ones(n, dtype=log_probs.dtype, device=log_probs.device)
        if "weight" in columns:
            weights = weights * columns["weight"].to(weights)
        factors = self._domain_factors_of(columns[DOMAIN_COLUMN]) if DOMAIN_COLUMN in columns else None
        if factors is not None and self.model.training:  # the domain strategy's loss factors (upweighting)
            weights = weights * factors.to(weights)
        if self.sample_strategies and self.model.training:
            ctx = self._sample_context(log_probs, label_mask, columns)
            rows = ctx.local_rows
            for strategy in self.sample_strategies:
                w = self._call_sample_hook(strategy, ctx)
                weights = weights * w[rows].to(weights)
        return weights.detach()

    def _sample_context(self, log_probs, label_mask, columns) -> SampleContext:
        gather = self.accelerator.gather
        nll = token_mean_nll(log_probs.detach(), label_mask).float()
        return SampleContext(
            losses_N=gather(nll), num_tokens_N=gather(label_mask.sum(dim=1)),
            columns={k: gather(v.float()) for k, v in columns.items()}, step=int(self.state.global_step),
            mode="train", process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes,
            log=lambda key, value: self._metrics["train"][key].append(float(value)))

    def _call_sample_hook(self, strategy, ctx: SampleContext) -> torch.Tensor:
        """Run ``sample_weights`` and check its result; a failure is one line naming the strategy, raised on every
        process when it happens on any."""
        w, failure = None, None
        try:
            w = torch.as_tensor(strategy.sample_weights(ctx))
            if w.shape != ctx.losses_N.shape or not torch.isfinite(w).all() or (w < 0).any():
                failure = StrategyFailed(f"{label(strategy, 'sample')}: sample_weights must return "
                                         f"{ctx.losses_N.numel()} finite, non-negative weights, got shape "
                                         f"{tuple(w.shape)}")
        except (UserError, RunStopped):
            raise
        except StrategyFailed as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a strategy failing is a stop with one line, not a traceback
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = StrategyFailed(f"{label(strategy, 'sample')} failed in sample_weights: {type(exc).__name__}: {msg}")
            failure.__cause__ = exc
        raise_if_failed_anywhere(self.accelerator, failure)
        return w.detach()

    def _weighted_loss(self, log_probs, label_mask, columns, num_items_in_batch) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        if self._domain is not None and self.model.training and DOMAIN_COLUMN in columns:
            self._domain_observe(columns[DOMAIN_COLUMN], token_mean_nll(log_probs.detach(), label_mask).float(),
                                 key="loss", sign=1.0)
        weights = self.sample_weights(log_probs, label_mask, columns)
        all_w = self.accelerator.gather(weights)
        self._metrics[mode]["samples/weight_mean"].append(all_w.mean().item())
        self._metrics[mode]["samples/weight_min"].append(all_w.min().item())
        self._metrics[mode]["samples/weight_max"].append(all_w.max().item())
        loss = weighted_sft_loss(log_probs, label_mask, weights, num_tokens=num_items_in_batch,
                                 loss_type=self.args.loss_type)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:  # as TRL's compute_loss
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss


class PosttrainSFTTrainer(KeepColumnsMixin, GuardedTrainerMixin, DomainMixtureMixin, CheckpointStateMixin,
                          _SampleWeightedSFT):
    """TRL's SFT plus per-sample weights (a ``weight`` column, ``weighting.samples`` strategies); exactly TRL's SFT
    without them. Non-finite losses / gradients skip the step (:class:`~posttrain.trainers.guards.StepGuard`);
    checkpoints are complete-or-ignored and carry the strategies' state.

    Args (besides ``SFTTrainer``'s): ``sample_strategies`` -- the recipe's ``weighting.samples`` specs
    (``[{"name": "loss_reweighting", "strategy": "linupper", "temperature": 0.4, "burn_in_steps": 1000}]``) or built
    strategies; ``max_nonfinite_steps``, ``diagnostics_dir`` (the guard's); ``domains`` -- a
    :class:`~posttrain.trainers.domains.DomainSetup` for a data mixture (the training data then has a ``domain_id``
    column; :mod:`posttrain.trainers.domains`).
    """

    def __init__(self, *args, sample_strategies: Sequence[Any] = (), max_nonfinite_steps: int = 3,
                 diagnostics_dir=None, domains=None, **kwargs):
        from posttrain.weighting.samples import build_sample_strategies

        max_steps = getattr(kwargs.get("args"), "max_steps", -1)
        env = StrategyEnv(max_steps=max_steps if max_steps and max_steps > 0 else None)
        try:
            self.sample_strategies = build_sample_strategies(sample_strategies, env)
        except (RegistryError, StrategyError, TypeError, ValueError) as exc:
            raise UserError(f"weighting.samples.{exc}") from None
        needed = required_columns(self.sample_strategies)  # data columns a (user's) strategy reads
        self._extra_columns = tuple(dict.fromkeys([*_COLUMNS, *(col for col, _ in needed)]))
        super().__init__(*args, **kwargs)
        self._install_guard(max_nonfinite_steps, diagnostics_dir)
        self.data_collator = FloatColumnsCollator(self.data_collator, self._extra_columns)
        columns = set(getattr(self.train_dataset, "column_names", None) or ())
        for col, name in needed:
            if col not in columns:
                raise UserError(f"weighting.samples: {name} needs a '{col}' column in data.train")
        self._setup_domains(domains)
        # a mixture needs the recorded per-sample NLL (per-domain losses); with weights 1 the loss is TRL's
        self._weighted = bool(self.sample_strategies) or "weight" in columns or domains is not None
        if self._weighted:
            self._check_weighting_supported()

    def _check_weighting_supported(self) -> None:
        problems = []
        if self.padding_free or self.args.packing:
            problems.append("train.packing / train.padding_free (a row is then several samples)")
        if self.args.loss_type not in ("nll", "dft"):
            problems.append(f"train.loss_type '{self.args.loss_type}'")
        if self.label_smoother is not None:
            problems.append("train.label_smoothing_factor")
        if self.compute_loss_func is not None:
            problems.append("a compute_loss_func")
        if self.aux_loss_enabled:
            problems.append("router aux loss (MoE)")
        if self._is_vision_dataset:
            problems.append("a vision dataset")
        if problems:
            raise UserError("per-sample weights (weighting.samples, a 'weight' column or a data.train mixture) "
                            "cannot be combined with: "
                            + "; ".join(problems))

    # ------------------------------------------------------------------ held-out NLL
    def heldout_nll(self, dataset) -> float:
        """Token-mean NLL of ``dataset``'s loss tokens (prepared as the training data: the completion tokens of
        prompt/completion rows), unweighted, summed over processes; every rank must call it."""
        prepared = self._prepare_dataset(dataset, self.processing_class, self.args, False, None, "held-out")
        model, was_training = self.model, self.model.training
        total = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        model.eval()
        try:
            with torch.no_grad():
                for batch in self.get_eval_dataloader(prepared):
                    batch = self._prepare_inputs(batch)
                    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                labels=batch["labels"], fused_lm_head=True, use_cache=False)
                    total += torch.stack([-out.log_probs.double().sum(), out.label_mask.sum().double()])
        finally:
            model.train(was_training)
        total = self.accelerator.reduce(total, reduction="sum") if self.accelerator.num_processes > 1 else total
        return float(total[0] / total[1].clamp(min=1))

    # ------------------------------------------------------------------ domain services (DomainMixtureMixin)
    def _domain_sampler_layout(self):
        """One unit per optimizer step: per_device x gradient_accumulation x processes rows, no repetition."""
        world = self.accelerator.num_processes
        per_device = self.args.per_device_train_batch_size
        return per_device * self.args.gradient_accumulation_steps * world, 1, 1, per_device * world

    def _collated(self, dataset, rows) -> List[Dict[str, torch.Tensor]]:
        if not rows:
            return []
        batch = self.data_collator([dict(dataset[int(i)]) for i in rows])
        return [{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}]

    def _domain_gradients(self) -> torch.Tensor:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        draws = [self._domain_draw(d) for d in range(len(self._domain.names))]  # same draws on every rank
        return torch.stack([self._nll_grad(self._collated(self.train_dataset, rows[rank::world]), gradient=True)
                            for rows in draws])

    def _domain_heldout_batches(self, rows) -> List[Dict[str, torch.Tensor]]:
        if getattr(self, "_domain_heldout_prepared", None) is None:
            self._domain_heldout_prepared = self._prepare_dataset(
                self._domain.heldout, self.processing_class, self.args, False, None, "domain held-out")
        return self._collated(self._domain_heldout_prepared, rows)

    # ------------------------------------------------------------------ checkpoints (CheckpointStateMixin)
    def posttrain_state(self) -> Dict[str, Any]:
        state = super().posttrain_state()
        state["samples"] = {f"{i}:{s.name}": s.state_dict() for i, s in enumerate(self.sample_strategies)}
        return state

    def load_posttrain_state(self, state: Dict[str, Any]) -> None:
        super().load_posttrain_state(state)
        saved = state.get("samples", {})
        for i, strategy in enumerate(self.sample_strategies):
            if f"{i}:{strategy.name}" in saved:
                strategy.load_state_dict(saved[f"{i}:{strategy.name}"])


__all__ = ["PosttrainSFTTrainer", "SAMPLE_COLUMNS"]
