"""The GRPO trainer's update side when token strategies are configured (glue, no formulas).

Per micro-batch: the policy forward gives log-probs and entropies (TRL's ``_get_per_token_logps_and_entropies``),
a :class:`~posttrain.weighting.tokens.TokenBatch` is built (over all processes' rows with ``weighting.scope:
global``), every token strategy's hook runs (:func:`~posttrain.weighting.tokens.apply_token_strategies`: shaped
advantages first, weights multiply, loss terms add) and :func:`~posttrain.losses.policy_loss` forms the loss, scaled
as TRL 1.16 scales its own (:func:`~posttrain.losses.policy.trl_scaled_loss`).
"""
from __future__ import annotations

import torch

from posttrain.errors import RunStopped, StrategyFailed, UserError
from posttrain.losses import policy_loss
from posttrain.losses.policy import trl_scaled_loss
from posttrain.trainers import grpo_services as services
from posttrain.weighting.tokens import (TokenBatch, apply_token_strategies, build_token_strategies, required_inputs,
                                        token_kinds, token_weight_stats)

# TRL loss_type -> our aggregation (TRL's normalisers for gradient accumulation: trl_scaled_loss)
AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dr_grpo": "dr_grpo", "dapo": "token_mean"}


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
        self._scope = weighting.scope if weighting is not None else "micro"
        self._normalize = weighting.normalize if weighting is not None else "count"

    def _check_token_weighting_supported(self) -> None:
        # Clip-Cov draws random tokens: a dedicated generator, seeded identically on every rank so that
        # scope=global selections agree across processes.
        self._token_generator = torch.Generator().manual_seed(int(self.args.seed))
        if not self._token_strategies:
            return
        problems = []
        if self.loss_type not in AGGREGATION:
            problems.append(f"train.loss_type '{self.loss_type}' (supported: {', '.join(AGGREGATION)})")
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
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True)
        entropies = entropies.detach()
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        batch = TokenBatch(
            advantages=inputs["advantages"], mask=mask, logps=logps, old_logps=old_logps, entropies=entropies,
            old_entropies=inputs.get("old_entropies", entropies), group_size=self.num_generations,
            clip_low=self.epsilon_low, clip_high=self.epsilon_high, temperature=self.temperature,
            generator=self._token_generator)
        if "full_logprobs" in self._token_needs:
            hidden, head = services.last_hidden_and_head(self, model, input_ids, attention_mask, logits_to_keep)
            batch = batch.replace(hidden=hidden, lm_head_weight=head)
        try:
            result = self._apply_token_strategies(batch)
        except (UserError, RunStopped):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing strategy stops the run with a checkpoint
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.guard.request_stop(str(StrategyFailed(f"token strategy failed in its hook: {type(exc).__name__}: "
                                                       f"{msg}")))
            return (logps * mask).sum() * 0.0  # this step is skipped; a checkpoint is written and the run stops

        mode = "train" if self.model.training else "eval"
        loss, metrics = policy_loss(
            logps, old_logps, result.advantages, mask,
            token_weights=result.weights,
            ref_logps=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            clip_low=None if result.clip_disabled else self.epsilon_low,
            clip_high=None if result.clip_disabled else self.epsilon_high,
            kl_coef=self.beta, kl_estimator="k3", kl_bias_correction=bool(self.args.use_bias_correction_kl),
            aggregation=AGGREGATION[self.loss_type], max_len=self.max_completion_length,
            normalize=self._normalize, importance_level=self.importance_sampling_level,
            extra_token_loss=result.extra_token_loss, delta=self.args.delta,
        )
        loss = trl_scaled_loss(
            loss, self.loss_type, local_tokens=(mask * 1.0).sum(), num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1.0,
            steps_per_generation=self.args.steps_per_generation, training=mode == "train")
        self._log_token_weighting(mode, metrics, result, entropies, mask)
        return loss

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
