"""Our DPO trainer: a subclass of TRL 1.16's ``DPOTrainer`` with per-pair weights.  Glue only.

Where the weights enter a step (design.md; formulas in ``posttrain.weighting.pairs`` and ``posttrain.losses``):

* a per-pair ``weight`` column of the data, and/or margin strategies (``weighting.pairs: [{name: madpo}]``, MADPO,
  arXiv 2510.05342, D12) on a ``margin`` column, give weights ``w_i`` multiplying the per-pair losses;
* a gap strategy (``beta_dpo``, beta-DPO, Wu et al. NeurIPS 2024, D13) sees the implicit-reward gaps of the batch --
  all-gathered across processes, as the official code does -- updates its EMA (training only), draws the
  Gaussian-weighted keep mask and sets the batch beta;
* the loss is ``sum_i w_i keep_i l_i(beta_b) / max(sum_i keep_i, 1)`` (:func:`posttrain.losses.dpo_loss`): TRL's
  plain mean when nothing is filtered (MADPO's weights are not renormalised), beta-DPO's masked mean otherwise;
* RPO's SFT term is TRL's own: ``train.loss_type: [sigmoid, sft]`` with ``loss_weights: [1, alpha]``
  (TRL 1.16 has no ``rpo_alpha`` any more; the ``sft`` loss type is its replacement). On our weighted path it is
  :func:`posttrain.losses.rpo_nll_term`, the same token-mean NLL over all chosen tokens, unweighted and unfiltered.

With no weight column and no strategy the loss is TRL's ``_compute_loss`` untouched. Otherwise TRL's
``_compute_loss`` still runs (so all of TRL's metrics are logged as usual; its ``rewards/*`` use the base beta, as
beta-DPO's official code logs them) while forward hooks record the policy's and the reference's per-token
log-probs; the returned loss is recomputed from those with the weights. No extra forward pass.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Sequence

import torch
from trl import DPOTrainer

from posttrain.errors import UserError
from posttrain.losses import dpo_loss, rpo_nll_term
from posttrain.trainers.checkpointing import CheckpointStateMixin
from posttrain.trainers.guards import GuardedTrainerMixin
from posttrain.weighting.pair_specs import PairWeighting, build_pair_weighting, dry_run_pair_specs

PAIR_COLUMNS = ("weight", "margin")
_OUR_LOSS_TYPES = {"sigmoid", "ipo", "hinge", "robust"}


class PairColumnsCollator:
    """Wraps TRL's preference collator: also returns the per-pair ``weight`` / ``margin`` columns as float tensors
    (TRL's collator keeps only the token ids and reference log-probs)."""

    def __init__(self, inner, columns: Sequence[str] = PAIR_COLUMNS):
        self.inner, self.columns = inner, tuple(columns)

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, Any]:
        out = self.inner(examples)
        for col in self.columns:
            if col in examples[0]:
                values = [ex[col] for ex in examples]
                if any(v is None for v in values):
                    raise ValueError(f"column '{col}' has missing values (None)")
                out[col] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        return out


class AdaptiveDPOTrainer(GuardedTrainerMixin, CheckpointStateMixin, DPOTrainer):
    """TRL's DPO plus per-pair weights (``weight`` column, MADPO margins, beta-DPO). Exactly TRL's DPO without them.

    Args (besides ``DPOTrainer``'s): ``pair_strategies`` -- ``[{"name": "madpo", "tau": 2.0}, {"name": "beta_dpo"}]``
    (the recipe's ``weighting.pairs``) or a built :class:`~posttrain.weighting.pair_specs.PairWeighting`.
    """

    def __init__(self, *args, pair_strategies: Sequence[Dict[str, Any]] | PairWeighting = (),
                 max_nonfinite_steps: int = 3, diagnostics_dir=None, **kwargs):
        if isinstance(pair_strategies, PairWeighting):
            self.pair_weighting = pair_strategies
        else:
            try:
                specs = [dict(s) for s in pair_strategies]
                dry_run_pair_specs(specs)  # bad argument values: one line now, not a traceback mid-training
                self.pair_weighting = build_pair_weighting(specs)
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"weighting.pairs.{exc}") from None
        super().__init__(*args, **kwargs)
        self._install_guard(max_nonfinite_steps, diagnostics_dir)
        self.data_collator = PairColumnsCollator(self.data_collator)
        columns = set(getattr(self.train_dataset, "column_names", None) or ())
        if self.pair_weighting.needs_margins and "margin" not in columns:
            raise UserError("weighting.pairs: a margin strategy (e.g. madpo) needs a 'margin' column in data.train "
                            "(r(chosen) - r(rejected)); use algorithm 'reward_model+dpo' to compute it")
        self._weighted = self.pair_weighting.active or "weight" in columns
        if self._weighted:
            self._check_weighting_supported()
        # beta-DPO's draws: one generator per mode, seeded identically on every rank so that all ranks draw the same
        # global keep mask; evaluation has its own so that evaluating does not change the training draws.
        self._pair_generators = {m: torch.Generator().manual_seed(int(self.args.seed) + k)
                                 for k, m in enumerate(("train", "eval"))}

    # ------------------------------------------------------------------ set-up
    def _check_weighting_supported(self) -> None:
        problems = []
        unsupported = [t for t in self.loss_types if t not in _OUR_LOSS_TYPES | {"sft"}]
        if unsupported:
            problems.append(f"train.loss_type {unsupported} (supported: {sorted(_OUR_LOSS_TYPES)} plus 'sft')")
        if not any(t in _OUR_LOSS_TYPES for t in self.loss_types):
            problems.append("a loss_type without a pairwise term")
        if self.f_divergence_type != "reverse_kl":
            problems.append(f"train.f_divergence_type '{self.f_divergence_type}'")
        if self.ld_alpha is not None:
            problems.append("train.ld_alpha")
        if self.use_weighting:
            problems.append("train.use_weighting (WPO)")
        if self.aux_loss_enabled:
            problems.append("router aux loss (MoE)")
        if problems:
            raise UserError("per-pair weights (weighting.pairs or a 'weight' column) cannot be combined with: "
                            + "; ".join(problems))

    def _set_signature_columns_if_needed(self):
        # remove_unused_columns would drop our columns before the collator sees them
        super()._set_signature_columns_if_needed()
        if not self._is_vision_dataset:
            self._signature_columns = list(self._signature_columns) + [c for c in PAIR_COLUMNS
                                                                       if c not in self._signature_columns]

    # ------------------------------------------------------------------ loss
    @contextlib.contextmanager
    def _record_log_probs(self, model):
        """Forward hooks recording ``outputs.log_probs`` of every fused-LM-head forward, in call order (policy
        first, then the reference unless it is precomputed). Hooks sit on the unwrapped modules, which DDP /
        DeepSpeed wrappers call, and the PEFT reference is the policy with its adapter disabled."""
        records: List[torch.Tensor] = []

        def hook(module, args, kwargs, output):
            if kwargs.get("fused_lm_head"):
                records.append(output.log_probs)

        unwrap = self.accelerator.unwrap_model
        modules = {id(m): m for m in (unwrap(model), unwrap(self.model))}
        if self.ref_model is not None:
            modules.setdefault(id(unwrap(self.ref_model)), unwrap(self.ref_model))
        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
        try:
            yield records
        finally:
            for h in handles:
                h.remove()

    def _compute_loss(self, model, inputs, return_outputs):
        inputs = dict(inputs)
        columns = {c: inputs.pop(c) for c in PAIR_COLUMNS if c in inputs}  # not model inputs
        if not self._weighted:
            return super()._compute_loss(model, inputs, return_outputs)
        with self._record_log_probs(model) as records:
            result = super()._compute_loss(model, inputs, return_outputs)
        n_expected = 1 if self.precompute_ref_logps else 2
        if len(records) < n_expected:
            raise RuntimeError(f"expected {n_expected} fused forwards (policy, reference), recorded {len(records)}")
        ref_tok = None if self.precompute_ref_logps else records[1]
        loss = self._weighted_loss(inputs, records[0], ref_tok, columns)
        return (loss, result[1]) if return_outputs else loss

    def _gap_strategy_step(self, gaps: torch.Tensor, mode: str):
        """beta-DPO on this process's gaps ``[n]``: all-gather them (the official code's scope), update the EMA
        (training only), draw the global keep mask with the rank-synchronised generator, take this rank's slice.
        Returns ``(keep [n] bool, batch beta float, metrics)``."""
        strategy = self.pair_weighting.gap_strategy
        n = gaps.numel()
        all_gaps = self.accelerator.gather(gaps)
        if all_gaps.numel() != n * self.accelerator.num_processes:
            raise RuntimeError("beta-DPO needs equal local batch sizes on every process")
        if mode == "train":
            strategy.update(all_gaps)
        all_keep = strategy.keep_mask(all_gaps.cpu(), generator=self._pair_generators[mode]).to(gaps.device)
        beta = float(strategy.beta(all_gaps, all_keep))
        rank = self.accelerator.process_index
        metrics = {"pairs/kept_fraction": all_keep.float().mean().item(),
                   "pairs/gap_ema_mean": float(strategy.gap_mean), "pairs/gap_ema_std": float(strategy.gap_std)}
        return all_keep[rank * n:(rank + 1) * n], beta, metrics

    def _weighted_loss(self, inputs, policy_tok, ref_tok, columns) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        seq_len = shift_mask.size(1)
        policy_tok = policy_tok[:, -seq_len:]
        chosen, rejected = policy_tok.sum(dim=1).chunk(2, dim=0)  # as TRL: labels -100 give log-prob 0
        if ref_tok is None:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = ref_tok[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        n = chosen.size(0)
        metrics: Dict[str, float] = {}

        weights = torch.ones(n, dtype=chosen.dtype, device=chosen.device)
        if "weight" in columns:
            weights = weights * columns["weight"].to(weights)
        if self.pair_weighting.needs_margins:
            margins = columns["margin"].to(weights)
            try:
                weights = weights * self.pair_weighting.margin_weights(margins).to(weights)
            except ValueError as exc:
                raise ValueError(f"weighting.pairs: {exc}") from None
        if "margin" in columns:
            all_margins = self.accelerator.gather(columns["margin"].to(weights.device))
            metrics["pairs/margin_mean"] = all_margins.mean().item()
            metrics["pairs/margin_abs_mean"] = all_margins.abs().mean().item()
        all_w = self.accelerator.gather(weights.detach())
        metrics.update({"pairs/weight_mean": all_w.mean().item(), "pairs/weight_min": all_w.min().item(),
                        "pairs/weight_max": all_w.max().item()})

        keep = torch.ones(n, dtype=torch.bool, device=chosen.device)
        beta = self.beta
        if self.pair_weighting.gap_strategy is not None:
            gaps = ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
            keep, beta, gap_metrics = self._gap_strategy_step(gaps, mode)
            metrics.update(gap_metrics)
        metrics["pairs/beta"] = float(beta)

        pair_weights = weights * keep.to(weights.dtype)
        denom = keep.sum().clamp(min=1).to(chosen.dtype)
        loss = chosen.new_zeros(())
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sft":
                chosen_tok, _ = policy_tok.chunk(2, dim=0)
                chosen_mask, _ = shift_mask.chunk(2, dim=0)
                loss = loss + loss_weight * rpo_nll_term(chosen_tok, chosen_mask)
                continue
            pc, pr, rc, rr = chosen, rejected, ref_chosen, ref_rejected
            if loss_type == "ipo":  # length-normalised log-ratios, as TRL (see dpo_loss)
                len_c, len_r = completion_mask.sum(dim=1).clamp(min=1.0).chunk(2, dim=0)
                pc, rc, pr, rr = pc / len_c, rc / len_c, pr / len_r, rr / len_r
            losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, weights=pair_weights,
                                    label_smoothing=self.label_smoothing if loss_type == "robust" else 0.0)
            loss = loss + loss_weight * losses.sum() / denom
        for k, v in metrics.items():
            self._metrics[mode][k].append(v)
        return loss

    # ------------------------------------------------------------------ checkpoints (CheckpointStateMixin)
    def posttrain_state(self) -> Dict[str, Any]:
        state = super().posttrain_state()
        state["generators"] = {m: g.get_state() for m, g in self._pair_generators.items()}
        if self.pair_weighting.gap_strategy is not None:
            state["gap_strategy"] = self.pair_weighting.gap_strategy.state_dict()
        return state

    def load_posttrain_state(self, state: Dict[str, Any]) -> None:
        """Restore beta-DPO's EMA and the draw generators (called on resume with the checkpoint's state)."""
        super().load_posttrain_state(state)
        for m, s in state.get("generators", {}).items():
            if m in self._pair_generators:
                self._pair_generators[m].set_state(s)
        if "gap_strategy" in state and self.pair_weighting.gap_strategy is not None:
            self.pair_weighting.gap_strategy.load_state_dict(state["gap_strategy"])
