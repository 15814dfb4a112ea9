"""Our GRPO trainer: a subclass of TRL's ``GRPOTrainer``, glue only.

Where the weights enter a step (design.md):
- token strategies (``weighting.tokens``) run in :meth:`_compute_loss` on the micro-batch (or on all processes'
  micro-batches gathered, ``scope: global``) and reach the loss through :func:`posttrain.losses.policy_loss`;
- with no token strategy configured the loss is TRL's own ``_compute_loss`` untouched;
- objective weights (``weighting.objectives``) set TRL's ``reward_weights`` at the end of ``_calculate_rewards``
  and sequence strategies (``weighting.sequences``) adjust the advantages after TRL's
  ``_generate_and_score_completions`` (:mod:`posttrain.trainers.reweighting` explains each placement).
Reliability (docs/reliability.md): rewards wrapped in :class:`posttrain.rewards.safe.SafeReward` report failed
samples, which are excluded from the advantages here; a :class:`StepGuard` skips steps with a non-finite loss or
gradient; checkpoints carry posttrain's own state and a completion marker (:class:`CheckpointStateMixin`).
The formulas live in ``posttrain.weighting`` and ``posttrain.losses``; nothing here computes a weight.
"""
from __future__ import annotations

import logging

import torch
from accelerate.utils import gather
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from posttrain.data import render_prompt
from posttrain.errors import RunStopped, UserError
from posttrain.losses import policy_loss
from posttrain.rewards.safe import SafeReward
from posttrain.trainers.checkpointing import CheckpointStateMixin
from posttrain.trainers.guards import GuardedTrainerMixin
from posttrain.trainers.reweighting import RewardWeightingMixin
from posttrain.weighting.tokens import TokenBatch, apply_token_strategies, parse_token_specs, token_weight_stats
from posttrain.weighting.tokens import required_inputs

# TRL loss_type -> our aggregation (TRL's normalisers for gradient accumulation are applied in _aggregate_like_trl)
_AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dr_grpo": "dr_grpo", "dapo": "token_mean"}
logger = logging.getLogger("posttrain.trainers")


class PosttrainGRPOTrainer(RewardWeightingMixin, GuardedTrainerMixin, CheckpointStateMixin, GRPOTrainer):
    """TRL's GRPO plus posttrain's reweighting hooks.  With no weighting configured it is exactly TRL's GRPO.

    Extra keyword arguments: ``weighting`` (the recipe's ``weighting`` section), ``max_reward_failure_fraction``
    (stop when more than this fraction of a step's samples has a failed reward; default 0.5),
    ``max_nonfinite_steps`` (stop after this many consecutive skipped steps; default 3), ``diagnostics_dir`` and
    ``objective_eval_dataset`` (held-out prompts for the ``hypervolume`` objective strategy's evaluations).
    """

    def __init__(self, *args, weighting=None, max_reward_failure_fraction: float = 0.5, max_nonfinite_steps: int = 3,
                 diagnostics_dir=None, objective_eval_dataset=None, **kwargs):
        if not 0.0 <= max_reward_failure_fraction <= 1.0:
            raise UserError(f"max_reward_failure_fraction must be in [0, 1], got {max_reward_failure_fraction}")
        self.max_reward_failure_fraction = max_reward_failure_fraction
        self.weighting = weighting
        self._token_specs = [s.model_dump() for s in weighting.tokens] if weighting is not None else []
        try:
            parse_token_specs(self._token_specs)  # unknown names / arguments: one line, before the model loads
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"weighting.tokens: {exc}") from None
        self._token_needs = required_inputs(self._token_specs)
        self._scope = weighting.scope if weighting is not None else "micro"
        self._normalize = weighting.normalize if weighting is not None else "count"
        super().__init__(*args, **kwargs)
        self._install_guard(max_nonfinite_steps, diagnostics_dir)
        self._setup_reward_weighting(weighting, objective_eval_dataset)
        if self._token_specs:
            self._check_token_weighting_supported()
        # Clip-Cov draws random tokens: a dedicated generator, seeded identically on every rank so that
        # scope=global selections agree across processes.
        self._token_generator = torch.Generator().manual_seed(int(self.args.seed))

    # ------------------------------------------------------------------ set-up checks
    def _check_token_weighting_supported(self) -> None:
        problems = []
        if self.loss_type not in _AGGREGATION:
            problems.append(f"train.loss_type '{self.loss_type}' (supported: {', '.join(_AGGREGATION)})")
        if self.top_entropy_quantile < 1.0:
            problems.append("train.top_entropy_quantile < 1 (use the 'high_entropy' token strategy instead)")
        if self.off_policy_mask_threshold is not None:
            problems.append("train.off_policy_mask_threshold")
        if self._entropy_bonus_enabled:
            problems.append("train.entropy_coef / use_adaptive_entropy")
        if self.use_vllm and self.vllm_importance_sampling_correction:
            problems.append("vLLM importance-sampling correction")
        if self.aux_loss_enabled:
            problems.append("router aux loss (MoE)")
        if self._scope == "global" and any(s.kind == "loss_term" for s, _ in parse_token_specs(self._token_specs)):
            problems.append("scope 'global' with a loss-term strategy such as kl_cov (use scope micro or local)")
        if self._scope == "local" and self.args.steps_per_generation != 1:
            problems.append("scope 'local' with train.steps_per_generation > 1 (the micro-batch is then only part "
                            "of the generation batch; use scope micro or global)")
        if problems:
            raise UserError("weighting.tokens cannot be combined with: " + "; ".join(problems))

    # ------------------------------------------------------------------ prompts
    def _tokenize_prompts(self, prompts: list):
        """Keep assistant pre-fills.

        TRL 1.16 renders every conversational prompt with ``add_generation_prompt=True``; a conversation that ends
        with an assistant message (a pre-fill such as "3 + 4 = ") then gets that turn closed and a new one opened,
        and the model answers from scratch.  Such prompts are rendered here with ``continue_final_message=True``
        (the same function the evaluation uses); everything else goes through TRL unchanged.
        """
        prefilled = bool(prompts) and is_conversational({"prompt": prompts[0]}) and any(
            p[-1].get("role") == "assistant" for p in prompts
        )
        if not prefilled or self._is_vlm or self.environment_factories is not None or self.tools:
            return super()._tokenize_prompts(prompts)
        texts = [render_prompt(p, self.processing_class, **self.chat_template_kwargs) for p in prompts]
        prompt_ids = self.processing_class(text=texts, add_special_tokens=False)["input_ids"]
        return prompt_ids, None, {}

    # ------------------------------------------------------------------ rollout side
    def _generate_and_score_completions(self, inputs):
        try:
            out = super()._generate_and_score_completions(inputs)
        except RuntimeError as exc:
            if "probability tensor contains" not in str(exc):
                raise
            # Sampling met NaN/inf probabilities: the weights themselves have diverged (e.g. a far too large
            # learning rate).  Nothing in this state is worth a checkpoint; stop with diagnostics.
            self.guard.stop_reason = "diverged"
            path = self.guard.write_diagnostics(self.state, [], event="non-finite sampling probabilities")
            raise RunStopped(
                f"the policy's sampling probabilities became non-finite at step {self.state.global_step + 1} "
                f"(the weights diverged; lower train.learning_rate?); diagnostics in {path}; resume from the last "
                f"complete checkpoint, if any, with --resume"
            ) from None
        out = self._reweight_advantages(out, "train" if self.model.training else "eval")
        if not self._token_specs:
            return out
        # Group layout survives TRL's shuffling of the generation batch: carry each row's group id along.
        n = out["completion_ids"].size(0)
        out["group_ids"] = torch.arange(n, device=out["completion_ids"].device) // self.num_generations
        # STEER reads pi_old entropies.  When TRL computed old log-probs (the policy moves between rollout and
        # update), compute the old entropies in the same no-grad pass; otherwise pi_old == pi_theta and the
        # current (detached) entropies are used in _compute_loss.
        if "old_entropies" in self._token_needs and out.get("old_per_token_logps") is not None:
            out["old_entropies"] = self._no_grad_entropies(out)
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards, then every sample with a *failed* reward (SafeReward) gets a NaN row: TRL 1.16 leaves
        NaN rows out of the group baseline and gives them advantage 0.  A ``None`` a reward returns on purpose
        ("not applicable") keeps TRL's meaning.  Too many failures in one step stop the run (with a checkpoint)."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        n_local = len(prompts)
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
        self._reweight_before_mix(rewards_per_func, completions, mode)
        return rewards_per_func

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        state.update(token_generator=self._token_generator.get_state(), trl_step=int(self._step),
                     trl_buffered_inputs=self._buffered_inputs)
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        self._token_generator.set_state(state["token_generator"])
        self._step = state["trl_step"]
        self._buffered_inputs = state["trl_buffered_inputs"]

    @torch.no_grad()
    def _no_grad_entropies(self, batch) -> torch.Tensor:
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        _, entropies, _ = self._get_per_token_logps_and_entropies(
            self.model, input_ids, attention_mask, batch["completion_ids"].size(1), compute_entropy=True,
            batch_size=self.args.per_device_train_batch_size,
        )
        return entropies

    # ------------------------------------------------------------------ update side
    def _compute_loss(self, model, inputs):
        if not self._token_specs:
            return super()._compute_loss(model, inputs)
        if "full_logprobs" in self._token_needs:
            inputs = self._group_ordered(inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True
        )
        entropies = entropies.detach()
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"]
        batch = TokenBatch(
            advantages=advantages, mask=mask, logps=logps, old_logps=old_logps, entropies=entropies,
            old_entropies=inputs.get("old_entropies", entropies), group_size=self.num_generations,
            clip_low=self.epsilon_low, clip_high=self.epsilon_high, temperature=self.temperature,
            generator=self._token_generator,
        )
        if "full_logprobs" in self._token_needs:
            hidden, head = self._last_hidden_and_head(model, input_ids, attention_mask, logits_to_keep)
            batch = batch.replace(hidden=hidden, lm_head_weight=head)
        result = self._apply_token_strategies(batch)

        mode = "train" if self.model.training else "eval"
        loss, metrics = policy_loss(
            logps, old_logps, result.advantages, mask,
            token_weights=result.weights,
            ref_logps=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            clip_low=None if result.clip_disabled else self.epsilon_low,
            clip_high=None if result.clip_disabled else self.epsilon_high,
            kl_coef=self.beta, kl_estimator="k3", kl_bias_correction=bool(self.args.use_bias_correction_kl),
            aggregation=_AGGREGATION[self.loss_type], max_len=self.max_completion_length,
            normalize=self._normalize, importance_level=self.importance_sampling_level,
            extra_token_loss=result.extra_token_loss, delta=self.args.delta,
        )
        loss = self._scale_like_trl(loss, mask, inputs, mode)
        self._log_token_weighting(mode, metrics, result, entropies, mask)
        return loss

    def _apply_token_strategies(self, batch: TokenBatch):
        if self._scope != "global" or self.accelerator.num_processes == 1:
            return apply_token_strategies(self._token_specs, batch)
        # scope=global: every rank computes the strategies over all ranks' rows (values only; weights carry no
        # gradient) and keeps its own rows, so batch statistics are identical on every rank.
        b = batch.mask.size(0)
        rank = self.accelerator.process_index

        def gather(t):
            if t is None:
                return None
            t = t.detach()
            if t.dim() == 1:
                return self.accelerator.gather(t)
            return self.accelerator.gather(self.accelerator.pad_across_processes(t, dim=1, pad_index=0))

        g = batch.replace(**{k: gather(getattr(batch, k)) for k in
                             ("advantages", "mask", "logps", "old_logps", "entropies", "old_entropies")})
        res = apply_token_strategies(self._token_specs, g)
        t = batch.mask.size(1)
        rows = slice(rank * b, (rank + 1) * b)
        res.weights = None if res.weights is None else res.weights[rows, :t]
        adv = res.advantages
        res.advantages = adv[rows] if adv.dim() == 1 else adv[rows, :t]
        return res

    def _group_ordered(self, inputs):
        """TW-GRPO needs whole groups in contiguous rows, but TRL shuffles the generation batch: reorder every
        per-row tensor of this micro-batch by group id.  Every aggregation is invariant to the row order."""
        group_ids = inputs["group_ids"]
        counts = torch.bincount(group_ids - group_ids.min())
        if bool((counts[counts > 0] != self.num_generations).any()):
            raise UserError(
                "the tw_grpo token strategy needs whole groups in each micro-batch: set train.steps_per_generation "
                "to 1 and per_device_train_batch_size to a multiple of num_generations"
            )
        order = torch.argsort(group_ids, stable=True)
        b = group_ids.size(0)
        return {k: (v[order] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == b else v)
                for k, v in inputs.items()}

    @torch.no_grad()
    def _last_hidden_and_head(self, model, input_ids, attention_mask, logits_to_keep):
        unwrapped = self.accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state[:, -logits_to_keep - 1:-1, :]
        return hidden, base.get_output_embeddings().weight

    def _scale_like_trl(self, loss, mask, inputs, mode):
        """Apply TRL 1.16's gradient-accumulation / DAPO normalisers (grpo_trainer.py `_compute_loss`)."""
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.loss_type != "dapo":
            return loss / accum
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * accum / self.args.steps_per_generation
        # policy_loss's token_mean divides by the local denominator; DAPO divides the sum by the global count.
        local = (mask * 1.0).sum().clamp(min=1.0)
        return loss * local / normalizer

    def _log_token_weighting(self, mode, metrics, result, entropies, mask):
        m = self._metrics[mode]
        m["entropy"].append(self._global_mean(entropies, mask))
        for key in ("clip_frac_low", "clip_frac_high", "clip_frac"):
            m[f"clip_ratio/{key.removeprefix('clip_frac_') if key != 'clip_frac' else 'region'}_mean"].append(
                float(self.accelerator.gather(metrics[key].reshape(1)).mean())
            )
        if "kl" in metrics:
            m["kl"].append(float(self.accelerator.gather(metrics["kl"].reshape(1)).mean()))
        if result.weights is not None:
            for k, v in token_weight_stats(result.weights, entropies, mask).items():
                # weight_mean -> weights/mean, entropy_p90 -> entropy/p90, weight_entropy_corr -> weights/entropy_corr
                key = f"entropy/{k[len('entropy_'):]}" if k.startswith("entropy_") else f"weights/{k[len('weight_'):]}"
                m[key].append(float(v))
        for name, diag in result.diagnostics.items():
            for k, v in diag.items():
                if isinstance(v, (int, float)):
                    m[f"weighting/{name}/{k}"].append(float(v))

    def _global_mean(self, x, mask) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
        return float(totals[0] / totals[1].clamp(min=1.0))


ReweightedGRPOTrainer = PosttrainGRPOTrainer
