"""The GRPO trainer's update side when token strategies are configured (glue, no formulas).

Per micro-batch: the policy forward gives log-probs and entropies (TRL's ``_get_per_token_logps_and_entropies``),
a :class:`~posttrain.weighting.tokens.TokenBatch` is built (over all processes' rows with ``weighting.scope:
global``), every token strategy's hook runs (:func:`~posttrain.weighting.tokens.apply_token_strategies`: shaped
advantages first, weights multiply, loss terms add) and :func:`~posttrain.losses.policy_loss` forms the loss, scaled
as TRL 1.16 scales its own (:func:`~posttrain.losses.policy.trl_scaled_loss`).
"""
from __future__ import annotations

from functools import partial

import torch

from posttrain.errors import RunStopped, StrategyFailed, UserError
from posttrain.losses import AdaptiveEntropyCoef, entropy_bonus, policy_loss
from posttrain.losses.policy import TRL_LOSS_TYPES, trl_scaled_loss
from posttrain.trainers import grpo_services as services
from posttrain.trainers.guards import raise_if_failed_anywhere
from posttrain.weighting.tokens import (TokenBatch, apply_token_strategies, build_token_strategies, required_inputs,
                                        token_kinds, token_weight_stats)



class TokenLossMixin:
    """Token strategies in the GRPO trainer's ``_compute_loss``; mixed in before ``CheckpointStateMixin``."""

    def _setup_token_strategies(self, weighting) -> None:
        specs = [s.model_dump() for s in weighting.tokens] if weighting is not None else []
        try:  # unknown names / arguments: one line, before TRL's set-up
            self._token_strategies = build_token_strategies(specs)
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"weighting.tokens.{exc}") from None
        self._token_needs = required_inputs(self._token_strategies)
        self._token_kinds = {k for s in self._token_strategies for k in token_kinds(s)}
        # a strategy that shapes advantages or adds a loss term can give a gradient where every advantage is 0
        self._token_shapes_loss = bool(self._token_kinds - {"weight"})
        if "entropies_grad" in self._token_needs and getattr(self, "chunked_entropy_grad", None) is None:
            self.chunked_entropy_grad = True  # EM-FT differentiates through the entropies
        self._scope = weighting.scope if weighting is not None else "micro"
        self._normalize = weighting.normalize if weighting is not None else "count"

    def _check_token_weighting_supported(self) -> None:
        # Clip-Cov draws random tokens: a dedicated generator, seeded identically on every rank so that
        # scope=global selections agree across processes.
        self._token_generator = torch.Generator().manual_seed(int(self.args.seed))
        # TRL's adaptive-entropy update rule; its state lives in TRL's own attributes (and TRL's checkpoints)
        self._entropy_ctrl = AdaptiveEntropyCoef(
            self.entropy_coef, target=self.args.entropy_target, delta=self.args.entropy_coef_delta,
            coef_min=self.args.entropy_coef_min, coef_max=self.args.entropy_coef_max)
        if not self._token_strategies:
            return
        # Every TRL 1.16 loss feature composes with token weights (posttrain.losses.policy_loss reproduces TRL's
        # _compute_loss for each); the few combinations that cannot be meant are refused here.
        problems = []
        if self.loss_type not in TRL_LOSS_TYPES:
            problems.append(f"train.loss_type '{self.loss_type}' (known: {', '.join(TRL_LOSS_TYPES)})")
        if self.aux_loss_enabled:
            problems.append("router aux loss (MoE)")
        if self._normalize == "weights" and self.loss_type in ("dapo", "cispo", "vespo"):
            problems.append(f"weighting.normalize 'weights' with train.loss_type '{self.loss_type}' (its denominator "
                            f"is the generation batch's token count)")
        if self._scope == "global" and "loss_term" in self._token_kinds:
            problems.append("scope 'global' with a loss-term strategy such as kl_cov (use scope micro or local)")
        if self._scope == "local" and self.args.steps_per_generation != 1:
            problems.append("scope 'local' with train.steps_per_generation > 1 (the micro-batch is then only part "
                            "of the generation batch; use scope micro or global)")
        if problems:
            raise UserError("weighting.tokens cannot be combined with: " + "; ".join(problems))

    # ------------------------------------------------------------------ rollout side: what the strategies read
    def _add_token_inputs(self, out: dict) -> dict:
        if not self._token_strategies:
            return out
        # Group layout survives TRL's shuffling of the generation batch: carry each row's group id along.
        n = out["completion_ids"].size(0)
        out["group_ids"] = torch.arange(n, device=out["completion_ids"].device) // self.num_generations
        # STEER reads pi_old entropies.  When TRL computed old log-probs (the policy moves between rollout and
        # update), compute the old entropies in the same no-grad pass; otherwise pi_old == pi_theta and the
        # current (detached) entropies are used in _compute_loss.
        if "old_entropies" in self._token_needs and out.get("old_per_token_logps") is not None:
            out["old_entropies"] = services.no_grad_entropies(self, out)
        return out

    # ------------------------------------------------------------------ update side
    def _token_weighted_loss(self, model, inputs):
        if "full_logprobs" in self._token_needs:
            inputs = services.group_ordered(inputs, self.num_generations)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies_grad, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True)
        entropies = entropies_grad.detach()  # what strategies read; the entropy bonus differentiates entropies_grad
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        batch = TokenBatch(
            advantages=inputs["advantages"], mask=mask, logps=logps, old_logps=old_logps, entropies=entropies,
            old_entropies=inputs.get("old_entropies", entropies), group_size=self.num_generations,
            clip_low=self.epsilon_low, clip_high=self.epsilon_high, temperature=self.temperature,
            generator=self._token_generator,
            entropies_grad=entropies_grad if "entropies_grad" in self._token_needs else None)
        if "full_logprobs" in self._token_needs:
            hidden, head = services.last_hidden_and_head(self, model, input_ids, attention_mask, logits_to_keep)
            batch = batch.replace(hidden=hidden, lm_head_weight=head)
        failure = None
        try:
            result = self._apply_token_strategies(batch)
        except (UserError, RunStopped):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing strategy stops the run with a checkpoint
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = StrategyFailed(f"token strategy failed in its hook: {type(exc).__name__}: {msg}")
        try:
            raise_if_failed_anywhere(self.accelerator, failure)  # every process leaves here together
        except StrategyFailed as exc:
            self.guard.request_stop(str(exc))
            return (logps * mask).sum() * 0.0  # this step is skipped; a checkpoint is written and the run stops

        mode = "train" if self.model.training else "eval"
        weights = result.weights
        if self.top_entropy_quantile < 1.0:  # TRL's own 80/20 mask composes with the strategies' weights
            entropy_mask = self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
            weights = entropy_mask.float() if weights is None else weights * entropy_mask
        else:
            entropy_mask = None
        bonus_mask = mask if entropy_mask is None else mask * entropy_mask
        coef = self._entropy_coef_now() if self._entropy_bonus_enabled else 0.0
        loss_type = TRL_LOSS_TYPES[self.loss_type]
        # TRL multiplies the loss by vLLM's importance-sampling ratio when the correction is on; VESPO folds any ratio
        # present into its weights
        is_ratio = inputs.get("importance_sampling_ratio") if self.loss_type == "vespo" or (
            self.use_vllm and self.vllm_importance_sampling_correction) else None
        loss, metrics = policy_loss(
            logps, old_logps, result.advantages, mask,
            token_weights=weights,
            ref_logps=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            clip_low=None if result.clip_disabled or self.loss_type == "cispo" else self.epsilon_low,
            clip_high=None if result.clip_disabled else self.epsilon_high,
            kl_coef=self.beta, kl_estimator="k3", kl_bias_correction=bool(self.args.use_bias_correction_kl),
            aggregation=loss_type["aggregation"], surrogate=loss_type["surrogate"], max_len=self.max_completion_length,
            normalize=self._normalize,
            # TRL's one-ratio-per-sequence form when a per-token IS ratio multiplies it (GSPO-token otherwise; the two
            # differ in gradient only when a per-token factor varies within a sequence)
            importance_level="sequence_shared" if self.importance_sampling_level == "sequence" and is_ratio is not None
            else self.importance_sampling_level,
            extra_token_loss=result.extra_token_loss, delta=self.args.delta,
            cispo_clip_max=self.epsilon_high if self.loss_type == "cispo" else None,
            sapo_temperature_pos=self.args.sapo_temperature_pos, sapo_temperature_neg=self.args.sapo_temperature_neg,
            vespo_k_pos=self.args.vespo_k_pos, vespo_lambda_pos=self.args.vespo_lambda_pos,
            vespo_k_neg=self.args.vespo_k_neg, vespo_lambda_neg=self.args.vespo_lambda_neg,
            off_policy_mask_threshold=self.off_policy_mask_threshold,
            sampling_logps=inputs.get("sampling_per_token_logps"), importance_sampling_ratio=is_ratio,
            entropies=entropies_grad if self._entropy_bonus_enabled else None, entropy_coef=coef,
            entropy_mask=bonus_mask,
        )
        loss = trl_scaled_loss(
            loss, self.loss_type, local_tokens=(mask * 1.0).sum(), num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1.0,
            steps_per_generation=self.args.steps_per_generation, training=mode == "train",
            entropy_bonus=entropy_bonus(entropies_grad, bonus_mask, coef) if coef else None)
        if self._entropy_bonus_enabled:
            self._entropy_controller_step(mode, entropies, bonus_mask)
        self._log_token_weighting(mode, metrics, result, entropies, mask)
        return loss

    def _entropy_coef_now(self) -> float:
        """TRL's coefficient and gating from the end of the previous optimizer step (adaptive entropy)."""
        if self.use_adaptive_entropy:
            return self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
        return self.entropy_coef

    def _entropy_controller_step(self, mode, entropies, bonus_mask) -> None:
        """TRL 1.16's adaptive entropy controller (:class:`~posttrain.losses.AdaptiveEntropyCoef`) on TRL's own
        attributes, so TRL's checkpointing of ``entropy_coef`` / ``last_world_entropy`` keeps working."""
        if self.use_adaptive_entropy and mode == "train":
            ctrl = self._entropy_ctrl
            ctrl.observe(entropies, bonus_mask)
            if self.accelerator.sync_gradients:
                ctrl.coef, ctrl.last_world_entropy = self.entropy_coef, self._last_world_entropy
                ctrl.end_window(partial(self.accelerator.reduce, reduction="sum"))
                self.entropy_coef, self._last_world_entropy = ctrl.coef, ctrl.last_world_entropy
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)

    def _apply_token_strategies(self, batch: TokenBatch):
        if self._scope != "global" or self.accelerator.num_processes == 1:
            return apply_token_strategies(self._token_strategies, batch)
        # scope=global: every rank computes the strategies over all ranks' rows and keeps its own rows, so batch
        # statistics are identical on every rank.
        b, t = batch.mask.size(0), batch.mask.size(1)
        res = apply_token_strategies(self._token_strategies, services.gathered_token_batch(self, batch))
        rows = slice(self.accelerator.process_index * b, (self.accelerator.process_index + 1) * b)
        res.weights = None if res.weights is None else res.weights[rows, :t]
        adv = res.advantages
        res.advantages = adv[rows] if adv.dim() == 1 else adv[rows, :t]
        return res

    def _log_token_weighting(self, mode, metrics, result, entropies, mask):
        m = self._metrics[mode]
        m["entropy"].append(services.global_mean(self, entropies, mask))
        for key in ("clip_frac_low", "clip_frac_high", "clip_frac"):
            m[f"clip_ratio/{key.removeprefix('clip_frac_') if key != 'clip_frac' else 'region'}_mean"].append(
                float(self.accelerator.gather(metrics[key].reshape(1)).mean()))
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

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        state["token_generator"] = self._token_generator.get_state()
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        self._token_generator.set_state(state["token_generator"])
