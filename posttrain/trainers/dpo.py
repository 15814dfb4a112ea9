"""Our DPO trainer: a subclass of TRL 1.16's ``DPOTrainer`` with per-pair weights.  Glue only.

Where the weights enter a step (formulas in ``posttrain.weighting.pairs`` and ``posttrain.losses``): per
micro-batch the trainer builds a :class:`~posttrain.weighting.protocol.PairContext` (sequence log-probs of policy
and reference, the data columns, the rank-synchronised generator, all-gather and log services) and calls

* every pair strategy implementing ``pair_weights`` (``madpo``, MADPO, arXiv 2510.05342, on a ``margin`` column):
  their weights multiply, with a per-pair ``weight`` column of the data, into ``w_i``;
* at most one implementing ``batch_beta`` (``beta_dpo``, beta-DPO, Wu et al. NeurIPS 2024): keep mask and batch
  beta from the implicit-reward gaps (the strategy all-gathers them, as the official code does);
* :func:`posttrain.losses.weighted_preference_loss`: ``sum_i w_i keep_i l_i(beta_b) / max(sum_i keep_i, 1)`` per
  TRL loss type (IPO length-normalised) plus RPO's SFT term (``train.loss_type: [sigmoid, sft]``, see
  :mod:`posttrain.weighting.pairs.rpo`), unweighted and unfiltered.

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

from posttrain.errors import RunStopped, StrategyFailed, UserError
from posttrain.losses import weighted_preference_loss
from posttrain.registry import RegistryError
from posttrain.trainers.checkpointing import CheckpointStateMixin
from posttrain.trainers.columns import FloatColumnsCollator, KeepColumnsMixin
from posttrain.trainers.guards import GuardedTrainerMixin, raise_if_failed_anywhere, zero_loss
from posttrain.weighting.pairs import build_pair_strategies, required_columns, split_pair_strategies
from posttrain.weighting.pair_specs import PairWeighting
from posttrain.weighting.protocol import PairContext, Strategy, StrategyEnv, StrategyError

PAIR_COLUMNS = ("weight", "margin")
_OUR_LOSS_TYPES = {"sigmoid", "ipo", "hinge", "robust"}
_COLUMN_HINTS = {"margin": " (r(chosen) - r(rejected)); use algorithm 'reward_model+dpo' to compute it"}


def _label(strategy: Strategy) -> str:
    return strategy.name or type(strategy).__name__


class AdaptiveDPOTrainer(KeepColumnsMixin, GuardedTrainerMixin, CheckpointStateMixin, DPOTrainer):
    """TRL's DPO plus per-pair weights (``weight`` column, pair strategies). Exactly TRL's DPO without them.

    Args (besides ``DPOTrainer``'s): ``pair_strategies`` -- the recipe's ``weighting.pairs`` specs
    (``[{"name": "madpo", "tau": 2.0}, {"name": "beta_dpo"}]``, import paths ``pkg.mod:Class``) and/or built
    :class:`~posttrain.weighting.protocol.Strategy` instances of kind ``pair``.
    """

    def __init__(self, *args, pair_strategies: Sequence[Any] = (), max_nonfinite_steps: int = 3,
                 diagnostics_dir=None, **kwargs):
        max_steps = getattr(kwargs.get("args"), "max_steps", -1)
        env = StrategyEnv(max_steps=max_steps if max_steps and max_steps > 0 else None,
                          has_eval_data=kwargs.get("eval_dataset") is not None)
        try:  # bad names / arguments / two batch betas: one line now, not a traceback mid-training
            self.pair_strategies: List[Strategy] = build_pair_strategies(
                getattr(pair_strategies, "strategies", pair_strategies), env)  # (or a pair_specs.PairWeighting)
            self._weighters, self._beta_strategy = split_pair_strategies(self.pair_strategies)
        except (RegistryError, StrategyError, TypeError, ValueError) as exc:
            raise UserError(f"weighting.pairs.{exc}") from None
        needed = required_columns(self.pair_strategies)
        self._pair_columns = tuple(dict.fromkeys([*PAIR_COLUMNS, *(col for col, _ in needed)]))
        self._extra_columns = self._pair_columns
        super().__init__(*args, **kwargs)
        self._install_guard(max_nonfinite_steps, diagnostics_dir)
        self.data_collator = FloatColumnsCollator(self.data_collator, self._pair_columns)
        columns = set(getattr(self.train_dataset, "column_names", None) or ())
        for col, name in needed:
            if col not in columns:
                raise UserError(f"weighting.pairs: {name} needs a '{col}' column in data.train"
                                + _COLUMN_HINTS.get(col, ""))
        self._weighted = bool(self.pair_strategies) or "weight" in columns
        if self._weighted:
            self._check_weighting_supported()
        # batch_beta draws: one generator per mode, seeded identically on every rank so that all ranks draw the same
        # global keep mask; evaluation has its own so that evaluating does not change the training draws.
        self._pair_generators = {m: torch.Generator().manual_seed(int(self.args.seed) + k)
                                 for k, m in enumerate(("train", "eval"))}

    @property
    def pair_weighting(self) -> PairWeighting:
        """The pre-protocol view (``margin_weights``, ``gap_strategy``) of :attr:`pair_strategies`."""
        return PairWeighting(self.pair_strategies)

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
        columns = {c: inputs.pop(c) for c in self._pair_columns if c in inputs}  # not model inputs
        if not self._weighted:
            return super()._compute_loss(model, inputs, return_outputs)
        with self._record_log_probs(model) as records:
            result = super()._compute_loss(model, inputs, return_outputs)
        n_expected = 1 if self.precompute_ref_logps else 2
        if len(records) < n_expected:
            raise RuntimeError(f"expected {n_expected} fused forwards (policy, reference), recorded {len(records)}")
        ref_tok = None if self.precompute_ref_logps else records[1]
        try:
            loss = self._weighted_loss(inputs, records[0], ref_tok, columns)
        except StrategyFailed as exc:  # skip this step, save a checkpoint, stop the run (exit 3)
            self.guard.request_stop(str(exc))
            loss = zero_loss(model)
        return (loss, result[1]) if return_outputs else loss

    def _call_hook(self, strategy: Strategy, hook: str, ctx: PairContext, *, shape=None):
        """Run one hook (and check the shape of its tensor result against ``shape``); a failure is one line naming
        the strategy and the hook, raised on every process when it happens on any."""
        result, failure = None, None
        try:
            result = getattr(strategy, hook)(ctx)
            if shape is not None:
                result = torch.as_tensor(result)
                if tuple(result.shape) != shape:
                    failure = StrategyFailed(f"pair strategy '{_label(strategy)}' returned weights of shape "
                                             f"{tuple(result.shape)} from {hook}, expected {list(shape)}")
        except (UserError, RunStopped):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a strategy's code is reported in one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = StrategyFailed(f"pair strategy '{_label(strategy)}' failed in {hook}: {msg}")
            failure.__cause__ = exc
        raise_if_failed_anywhere(self.accelerator, failure)
        return result

    def _weighted_loss(self, inputs, policy_tok, ref_tok, columns) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        policy_tok = policy_tok[:, -shift_mask.size(1):]
        chosen, rejected = policy_tok.sum(dim=1).chunk(2, dim=0)  # as TRL: labels -100 give log-prob 0
        if ref_tok is None:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = ref_tok[:, -shift_mask.size(1):].sum(dim=1).chunk(2, dim=0)
        n = chosen.size(0)
        metrics: Dict[str, float] = {}
        ctx = PairContext(chosen, rejected, ref_chosen, ref_rejected, beta=self.beta,
                          columns={c: v.to(chosen) for c, v in columns.items()}, step=self.state.global_step,
                          mode=mode, generator=self._pair_generators[mode],
                          process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
                          all_gather=self.accelerator.gather, log=metrics.__setitem__)

        weights = torch.ones(n, dtype=chosen.dtype, device=chosen.device)
        if "weight" in columns:
            weights = weights * columns["weight"].to(weights)
        if self._weighters:
            strategy_weights = torch.ones_like(weights)
            for strategy in self._weighters:
                w = self._call_hook(strategy, "pair_weights", ctx, shape=(n,))
                strategy_weights = strategy_weights * w.to(weights)
            weights = weights * strategy_weights.detach()
        if "margin" in columns:
            all_margins = self.accelerator.gather(columns["margin"].to(weights.device))
            metrics["pairs/margin_mean"] = all_margins.mean().item()
            metrics["pairs/margin_abs_mean"] = all_margins.abs().mean().item()
        all_w = self.accelerator.gather(weights.detach())
        metrics.update({"pairs/weight_mean": all_w.mean().item(), "pairs/weight_min": all_w.min().item(),
                        "pairs/weight_max": all_w.max().item()})

        keep, beta = torch.ones(n, dtype=torch.bool, device=chosen.device), self.beta
        if self._beta_strategy is not None:
            keep, beta = self._call_hook(self._beta_strategy, "batch_beta", ctx)
            keep = torch.as_tensor(keep, device=chosen.device).bool()
        metrics["pairs/beta"] = float(beta)

        chosen_tok, _ = policy_tok.chunk(2, dim=0)
        chosen_mask, _ = shift_mask.chunk(2, dim=0)
        len_chosen, len_rejected = completion_mask.sum(dim=1).chunk(2, dim=0)
        loss = weighted_preference_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta=float(beta), loss_types=self.loss_types,
            loss_weights=self.loss_weights, weights=weights, keep=keep, chosen_lengths=len_chosen,
            rejected_lengths=len_rejected, chosen_token_logps=chosen_tok, chosen_mask=chosen_mask,
            label_smoothing=self.label_smoothing)
        for k, v in metrics.items():
            self._metrics[mode][k].append(v)
        return loss

    # ------------------------------------------------------------------ checkpoints (CheckpointStateMixin)
    def posttrain_state(self) -> Dict[str, Any]:
        state = super().posttrain_state()
        state["generators"] = {m: g.get_state() for m, g in self._pair_generators.items()}
        state["strategies"] = {f"{i}:{_label(s)}": s.state_dict() for i, s in enumerate(self.pair_strategies)}
        return state

    def load_posttrain_state(self, state: Dict[str, Any]) -> None:
        """Restore the strategies' state (beta-DPO's EMA) and the draw generators (on resume)."""
        super().load_posttrain_state(state)
        for m, s in state.get("generators", {}).items():
            if m in self._pair_generators:
                self._pair_generators[m].set_state(s)
        saved = state.get("strategies", {})
        for i, strategy in enumerate(self.pair_strategies):
            if f"{i}:{_label(strategy)}" in saved:
                strategy.load_state_dict(saved[f"{i}:{_label(strategy)}"])
        if "gap_strategy" in state and self._beta_strategy is not None and not saved:  # pre-protocol checkpoints
            self._beta_strategy.load_state_dict(state["gap_strategy"])
